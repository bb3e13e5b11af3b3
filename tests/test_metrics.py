"""GET /metrics: exact counts after a mix of requests, scrape-time gauges, the metrics port."""

from __future__ import annotations

import logging
import socket
import sqlite3
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from mgwebhook.config import DatabaseSettings, Settings
from mgwebhook.server.app import create_app
from tests.conftest import OTHER_KEY, SIGNING_KEY
from tests.helpers import (
    FIXTURE_MESSAGE_ID,
    WEBHOOK_PATH,
    fixture,
    fresh_token,
    insert_document,
    post_json,
    signed,
    with_message_id,
)

UNREACHABLE_URL = "postgresql+asyncpg://postgres@127.0.0.1:9/test"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Map (sample name, labels) to value for every sample of a scrape."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def scrape(client: TestClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(await response.text())


@pytest.fixture
async def metrics_client(aiohttp_client, engine, settings) -> TestClient:
    """Client of an app without the reconciler, so unmatched events stay unmatched."""
    app = create_app(settings, [SIGNING_KEY], engine=engine, create_tables=False, reconcile=False)
    return await aiohttp_client(app)


async def test_metrics_count_a_mix_of_requests(metrics_client, engine):
    client = metrics_client
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    token = fresh_token()

    applied = signed(fixture("delivered"), token=token)
    assert (await post_json(client, applied))[0] == 200
    unmatched = signed(with_message_id(fixture("delivered"), "<other@mg.example.com>"))
    assert (await post_json(client, unmatched))[0] == 200
    ignored = signed(fixture("delivered", event="opened"))
    assert (await post_json(client, ignored))[0] == 200
    forged = signed(fixture("delivered"), key=OTHER_KEY)
    assert (await post_json(client, forged))[0] == 401
    replayed = signed(fixture("complained"), token=token)
    assert (await post_json(client, replayed))[0] == 401
    text_body = await client.post(
        WEBHOOK_PATH, data=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert text_body.status == 415
    unsigned = await client.post(WEBHOOK_PATH, json={"event-data": fixture("delivered")})
    assert unsigned.status == 400

    samples = await scrape(client)
    requests = "mgwebhook_webhook_requests_total"
    assert value(samples, requests, outcome="applied", status="200") == 1
    assert value(samples, requests, outcome="unmatched", status="200") == 1
    assert value(samples, requests, outcome="ignored", status="200") == 1
    assert value(samples, requests, outcome="bad-signature", status="401") == 1
    assert value(samples, requests, outcome="replayed-token", status="401") == 1
    assert value(samples, requests, outcome="unsupported-media-type", status="415") == 1
    assert value(samples, requests, outcome="malformed", status="400") == 1
    request_series = {key for key in samples if key[0] == requests}
    assert len(request_series) == 7

    events = "mgwebhook_webhook_events_total"
    assert value(samples, events, event="delivered") == 2
    assert value(samples, events, event="opened") == 1
    assert {key for key in samples if key[0] == events} == {
        (events, frozenset({("event", "delivered")})),
        (events, frozenset({("event", "opened")})),
    }

    assert value(samples, "mgwebhook_signature_failures_total") == 1
    assert value(samples, "mgwebhook_replays_rejected_total") == 1
    assert value(samples, "mgwebhook_unmatched_events") == 1
    assert value(samples, "mgwebhook_webhook_duration_seconds_count") == 7
    # Four posts passed verification and went through the writer one at a time;
    # the 401 for the replayed token comes from the database too.
    assert value(samples, "mgwebhook_ingest_batch_size_count") == 4
    assert value(samples, "mgwebhook_ingest_batch_size_sum") == 4
    assert value(samples, "mgwebhook_ingest_batch_size_bucket", le="1.0") == 4
    assert value(samples, "mgwebhook_ingest_queue_depth") == 0
    assert value(samples, "mgwebhook_ingest_in_flight") == 0


async def test_metrics_start_at_zero(metrics_client):
    samples = await scrape(metrics_client)
    assert value(samples, "mgwebhook_signature_failures_total") == 0
    assert value(samples, "mgwebhook_replays_rejected_total") == 0
    assert value(samples, "mgwebhook_unmatched_events") == 0
    assert value(samples, "mgwebhook_webhook_duration_seconds_count") == 0
    assert value(samples, "mgwebhook_ingest_batch_size_count") == 0
    assert not any(name == "mgwebhook_webhook_requests_total" for name, _ in samples)


async def test_undocumented_event_type_counts_as_other(metrics_client):
    status, _ = await post_json(metrics_client, signed(fixture("delivered", event="x-made-up")))
    assert status == 200
    samples = await scrape(metrics_client)
    assert value(samples, "mgwebhook_webhook_events_total", event="other") == 1
    assert value(samples, "mgwebhook_webhook_requests_total", outcome="ignored", status="200") == 1


async def test_retry_counts_request_not_event(metrics_client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    body = signed(fixture("delivered"))
    assert (await post_json(metrics_client, body))[0] == 200
    assert (await post_json(metrics_client, body))[0] == 200
    samples = await scrape(metrics_client)
    assert value(samples, "mgwebhook_webhook_requests_total", outcome="retry", status="200") == 1
    assert value(samples, "mgwebhook_webhook_events_total", event="delivered") == 1


async def test_each_app_has_its_own_registry(aiohttp_client, engine, settings, metrics_client):
    other_app = create_app(settings, [SIGNING_KEY], engine=engine, create_tables=False)
    other = await aiohttp_client(other_app)
    assert (await post_json(metrics_client, signed(fixture("delivered"), key=OTHER_KEY)))[0] == 401
    assert value(await scrape(metrics_client), "mgwebhook_signature_failures_total") == 1
    assert value(await scrape(other), "mgwebhook_signature_failures_total") == 0


async def test_unreachable_database_leaves_unmatched_gauge_out(aiohttp_client, caplog):
    settings = Settings(database=DatabaseSettings(url=UNREACHABLE_URL))
    app = create_app(settings, [SIGNING_KEY], create_tables=False, reconcile=False)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.WARNING, logger="mgwebhook.server.metrics"):
        first = await scrape(client)
        second = await scrape(client)
    assert "mgwebhook_unmatched_events" not in names(first)
    assert "mgwebhook_unmatched_events" not in names(second)
    assert value(first, "mgwebhook_ingest_queue_depth") == 0
    # One warning for the streak of failed scrapes, not one per scrape.
    warnings = [r for r in caplog.records if r.name == "mgwebhook.server.metrics"]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("cannot count unmatched events for /metrics: ")


def free_ports(count: int) -> list[int]:
    """Return distinct free TCP ports on 127.0.0.1; all are held until every one is chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def test_metrics_port_serves_metrics_alone(engine, settings):
    main_port, metrics_port = free_ports(2)
    server = replace(settings.server, port=main_port, metrics_port=metrics_port)
    app = create_app(
        replace(settings, server=server),
        [SIGNING_KEY],
        engine=engine,
        create_tables=False,
        reconcile=False,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    main_url = f"http://127.0.0.1:{main_port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    try:
        await web.TCPSite(runner, "127.0.0.1", main_port).start()
        async with aiohttp.ClientSession() as session:
            async with session.post(
                main_url + WEBHOOK_PATH, json=signed(fixture("delivered"))
            ) as r:
                assert r.status == 200
            async with session.get(main_url + "/metrics") as r:
                assert r.status == 404
            async with session.get(main_url + "/healthz") as r:
                assert r.status == 200
            async with session.get(metrics_url + "/healthz") as r:
                assert r.status == 404
            async with session.get(metrics_url + "/metrics") as r:
                assert r.status == 200
                samples = parse(await r.text())
    finally:
        await runner.cleanup()

    requests = "mgwebhook_webhook_requests_total"
    assert value(samples, requests, outcome="unmatched", status="200") == 1
    assert value(samples, "mgwebhook_unmatched_events") == 1
    # The metrics server stops with the app.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(metrics_url + "/metrics")


async def test_metrics_port_in_use_fails_startup(engine, settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        server = replace(settings.server, metrics_port=port)
        app = create_app(
            replace(settings, server=server),
            [SIGNING_KEY],
            engine=engine,
            create_tables=False,
            reconcile=False,
        )
        runner = web.AppRunner(app)
        with pytest.raises(OSError) as error:
            await runner.setup()
        await runner.cleanup()
    assert str(error.value).startswith(f"cannot listen for /metrics on 127.0.0.1:{port}: ")
    assert str(error.value).endswith(
        "; set server.metrics_port to a free port, or to 0 to serve it on the main port"
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_scrape_ignores_sqlite_write_lock(metrics_client, engine, database_url):
    assert (await post_json(metrics_client, signed(fixture("delivered"))))[0] == 200
    holder = sqlite3.connect(make_url(database_url).database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE webhook_events SET outcome = 'applied'")
        samples = await scrape(metrics_client)
    finally:
        holder.rollback()
        holder.close()
    # The scrape read the last committed count without waiting for the writer.
    assert value(samples, "mgwebhook_unmatched_events") == 1
