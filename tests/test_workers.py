"""`mgwebhook serve --workers N`: a supervisor process and N servers on one port."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import aiohttp

from mgwebhook.samples import event_data, json_webhook
from tests.conftest import SIGNING_KEY
from tests.helpers import insert_document, status_of
from tests.reliability_support import (
    HOST,
    ServiceProcess,
    free_port,
    free_port_range,
    prepare_database,
    run_cli,
    service_env,
    wait_until,
)

WORKERS = 2
POSTS = 20


def listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


async def test_workers_apply_posts_and_stop_on_sigterm(database_url, tmp_path):
    env = service_env(database_url)
    engine = await prepare_database(database_url, env)
    service = ServiceProcess(tmp_path / "serve.log", env, arguments=["--workers", str(WORKERS)])
    try:
        for number in range(POSTS):
            await insert_document(engine, f"INV-{number}", f"<workers-{number}@mg.example.com>")
        await service.start_and_wait()
        assert service.process is not None
        supervisor = service.process.pid
        assert len(children(supervisor)) == WORKERS
        assert (
            f"--workers {WORKERS} without --metrics-port: a GET /metrics on port "
            f"{service.port} reaches one worker, which counts only its own requests; pass "
            "--metrics-port PORT so that worker i serves its metrics on PORT + i"
        ) in service.output()

        statuses = []
        async with aiohttp.ClientSession() as session:
            for number in range(POSTS):
                data = event_data("delivered", f"workers-{number}@mg.example.com")
                body = json.dumps(json_webhook(SIGNING_KEY, data))
                headers = {"Content-Type": "application/json"}
                async with session.post(service.webhook_url, data=body, headers=headers) as reply:
                    statuses.append(reply.status)
        assert statuses == [200] * POSTS
        for number in range(POSTS):
            assert await status_of(engine, f"INV-{number}") == "DELIVERED"

        service.send_signal(signal.SIGTERM)
        assert await service.wait_exit() == 0
        assert "mgwebhook stopped" in service.output()
    finally:
        service.stop()
        await engine.dispose()


async def test_killed_worker_stops_the_others(database_url, tmp_path):
    env = service_env(database_url)
    engine = await prepare_database(database_url, env)
    service = ServiceProcess(tmp_path / "serve.log", env, arguments=["--workers", str(WORKERS)])
    try:
        await service.start_and_wait()
        assert service.process is not None
        first, second = children(service.process.pid)
        os.kill(first, signal.SIGKILL)
        assert await service.wait_exit() == signal.SIGKILL
        await wait_until(lambda: not Path(f"/proc/{second}").exists(), "the other worker exits")
        assert f"exited with code -{int(signal.SIGKILL)}; stopping the others" in service.output()
    finally:
        service.stop()
        await engine.dispose()


async def test_each_worker_serves_metrics_on_its_own_port(database_url, tmp_path):
    env = service_env(database_url)
    engine = await prepare_database(database_url, env)
    # The workers serve /metrics on metrics_port and the ports after it, one each.
    metrics_port = free_port_range(WORKERS)
    arguments = ["--workers", str(WORKERS), "--metrics-port", str(metrics_port)]
    service = ServiceProcess(tmp_path / "serve.log", env, arguments=arguments)
    try:
        await service.start_and_wait()
        statuses = []
        for port in (metrics_port, metrics_port + 1):
            # The workers start independently, so each port may open a little later.
            await wait_until(lambda port=port: listening(port), f"port {port} listens")
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{HOST}:{port}/metrics") as reply,
            ):
                text = await reply.text()
                statuses.append((reply.status, "mgwebhook_webhook_requests_total" in text))
        assert statuses == [(200, True), (200, True)]
        service.send_signal(signal.SIGTERM)
        assert await service.wait_exit() == 0
    finally:
        service.stop()
        await engine.dispose()


def test_taken_port_fails_before_workers_start(tmp_path):
    port = free_port()
    env = service_env(f"sqlite+aiosqlite:///{tmp_path / 'mgwebhook.db'}")
    with socket.create_server((HOST, port)):
        result = run_cli(["serve", "--port", str(port), "--workers", str(WORKERS)], env)
    assert result.returncode == 1
    assert "Error: cannot start the server: [Errno 98] Address already in use" in result.stderr
