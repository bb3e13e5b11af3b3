"""Load benchmark: mgwebhook against a bare aiohttp handler, driven by wrk in one run.

Usage (from the repository root, with the project installed):

    python bench/run.py --database sqlite --rows 10000 --duration 30

It seeds a temporary database with ROWS tracked documents (and optionally
stored events), writes one uniquely signed `delivered` or `failed` event per
request to a file, and drives `mgwebhook serve` and then a bare handler with
wrk. It prints events/s, p50/p99 latency, the ratio of the two rates, and the
server's resident memory. wrk comes from Debian's `wrk` package.

With --references it also drives the hand-written minimal receivers of
`bench/reference_receivers.py` (one transaction per request, and batched),
each on its own copy of the seeded database. `--database both --references`
measures all of them, SQLite first, in one command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from mgwebhook.db.engine import create_engine, create_schema, normalise_database_url
from mgwebhook.db.schema import documents, email_events, webhook_events, webhook_tokens
from mgwebhook.samples import event_data, signature_block

BENCH_DIR = Path(__file__).resolve().parent
SIGNING_KEY = "bench-signing-key"
WEBHOOK_PATH = "/v1/mailgun/webhook"
# Bodies written per second of the run: above the highest rate seen on 2 cores
# for a server that stores events (about 5,600/s), so no token is sent twice to
# one. The bare handler and the run storing nothing are faster and resend
# tokens, which changes nothing for them.
BODIES_PER_SECOND = 8000
# One name per run, so that two runs on one server do not drop each other's database.
BENCH_DATABASE = f"mgwebhook_bench_{os.getpid()}"
REFERENCE_MODES = {
    "sqlite": ["sqlite-per-request", "sqlite-batched"],
    "postgresql": ["postgresql-per-request", "postgresql-batched"],
}


@dataclass
class WrkResult:
    requests_per_second: float
    non_2xx: int
    requests: int
    p50_ms: float
    p99_ms: float
    seconds: float

    @property
    def ok_per_second(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds


@dataclass
class MemoryTrace:
    samples: list[tuple[float, int]] = field(default_factory=list)

    def peak_mb(self) -> float:
        return max((rss for _, rss in self.samples), default=0) / 1024

    def average_mb(self, start: float, end: float) -> float:
        values = [rss for t, rss in self.samples if start <= t < end]
        return (sum(values) / len(values) / 1024) if values else 0.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql", "both"],
        default="sqlite",
        help="database behind mgwebhook serve: a temporary SQLite file, PostgreSQL, or "
        "both, one after the other, each with its own report",
    )
    parser.add_argument(
        "--postgres-url",
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        help="server used with --database postgresql; a database named mgwebhook_bench_PID "
        "(PID of this run) and, with --references, two copies of it are created on it and "
        "dropped afterwards",
    )
    parser.add_argument("--rows", type=int, default=10_000, help="tracked documents to seed")
    parser.add_argument(
        "--stored-events", type=int, default=0, help="stored events and audit rows to seed"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="wrk connections, each one request at a time"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--duration", type=int, default=30, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=1, help="mgwebhook serve --workers")
    parser.add_argument("--skip-bare", action="store_true", help="do not measure the bare handler")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also measure mgwebhook's HTTP path with a writer that stores nothing",
    )
    parser.add_argument(
        "--references",
        action="store_true",
        help="also measure the hand-written minimal receivers, each on a copy of the seed",
    )
    parser.add_argument(
        "--skip-load", action="store_true", help="only seed and time `events list`, no wrk runs"
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not args.skip_load and shutil.which("wrk") is None:
        print("wrk is not installed; install it with: apt-get install wrk", file=sys.stderr)
        return 1
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    if "postgresql" in databases:
        args.postgres_url = normalise_database_url(args.postgres_url)
        problem = postgres_problem(args.postgres_url)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1

    status = 0
    for database in databases:
        status = max(status, run_once(argparse.Namespace(**{**vars(args), "database": database})))
    return status


def run_once(args: argparse.Namespace) -> int:
    """Seed one database, measure the servers on it and print the report; return its status."""
    with tempfile.TemporaryDirectory(prefix="mgwebhook-bench-") as folder:
        workdir = Path(folder)
        copies: dict[str, str] = {}
        try:
            database_url = prepare_database(args, workdir)
            bodies = workdir / "bodies.jsonl"
            count = write_bodies(bodies, args.rows, BODIES_PER_SECOND * args.duration)
            print(
                f"seeded {args.rows} documents, {args.stored_events} stored events; "
                f"wrote {count} signed bodies"
            )

            list_seconds = time_events_list(database_url)
            print(f"`mgwebhook events list` (first page, whole process): {list_seconds:.2f} s")
            if args.skip_load:
                return 0
            if args.references:
                # Copied before mgwebhook's run changes the seeded database.
                for mode in REFERENCE_MODES[args.database]:
                    copies[mode] = copy_database(args, database_url, workdir, mode)
            server, memory = measure_mgwebhook(args, database_url, bodies)
            bare = None if args.skip_bare else measure_bare(args, bodies)
            ceiling = measure_ceiling(args, database_url, bodies) if args.ceiling else None
            references = {
                mode: measure_reference(args, mode, url, bodies) for mode, url in copies.items()
            }
            return report(args, count, server, bare, ceiling, memory, references)
        finally:
            if args.database == "postgresql":
                for url in copies.values():
                    drop_postgres_database(args.postgres_url, database_name(url))
                drop_postgres_database(args.postgres_url)
    return 0


def prepare_database(args: argparse.Namespace, workdir: Path) -> str:
    if args.database == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    else:
        drop_postgres_database(args.postgres_url)
        asyncio.run(execute_autocommit(args.postgres_url, f"CREATE DATABASE {BENCH_DATABASE}"))
        url = with_database(args.postgres_url, BENCH_DATABASE)
    asyncio.run(seed(url, args.rows, args.stored_events))
    return url


def postgres_problem(url: str) -> str | None:
    """Return why the PostgreSQL server at `url` cannot be used, or None when it can."""
    try:
        asyncio.run(execute_autocommit(url, "SELECT 1"))
    except (OSError, SQLAlchemyError) as error:
        address = make_url(url).render_as_string(hide_password=True)
        return (
            f"cannot connect to PostgreSQL at {address}: {error}; start the server or pass "
            "--postgres-url postgresql://USER@HOST:PORT/DATABASE"
        )
    return None


def drop_postgres_database(url: str, name: str = BENCH_DATABASE) -> None:
    statement = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    asyncio.run(execute_autocommit(url, statement))


def database_name(url: str) -> str:
    return str(make_url(url).database)


def with_database(url: str, name: str) -> str:
    """Return `url` naming database `name`, keeping its query (a socket folder, SSL options)."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def copy_database(args: argparse.Namespace, url: str, workdir: Path, mode: str) -> str:
    """Copy the seeded database for one reference receiver and return the copy's URL."""
    name = f"{BENCH_DATABASE}_{mode.split('-', 1)[1].replace('-', '_')}"
    if args.database == "sqlite":
        # The seed's engine is disposed, so the whole database is in this one file.
        copy = workdir / f"{name}.db"
        shutil.copyfile(workdir / "bench.db", copy)
        return f"sqlite+aiosqlite:///{copy}"
    drop_postgres_database(args.postgres_url, name)
    # A template copy keeps the seed's planner statistics.
    statement = f"CREATE DATABASE {name} TEMPLATE {BENCH_DATABASE}"
    asyncio.run(execute_autocommit(args.postgres_url, statement))
    return with_database(url, name)


async def execute_autocommit(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text(statement))
    await engine.dispose()


async def seed(url: str, rows: int, stored_events: int) -> None:
    engine = create_engine(url)
    await create_schema(engine)
    chunk = 10_000
    stamp = datetime.now(UTC)
    async with engine.begin() as connection:
        for start in range(0, rows, chunk):
            await connection.execute(
                documents.insert(),
                [
                    {
                        "id": f"INV-{i}",
                        "email_message_id": f"<bench-{i}@mg.example.com>",
                        "email_status": "SENT",
                    }
                    for i in range(start, min(rows, start + chunk))
                ],
            )
        for start in range(0, stored_events, chunk):
            batch = range(start, min(stored_events, start + chunk))
            await connection.execute(webhook_tokens.insert(), [_token(i, stamp) for i in batch])
            await connection.execute(webhook_events.insert(), [_event(i, stamp) for i in batch])
            await connection.execute(email_events.insert(), [_audit(i, stamp) for i in batch])
        if engine.dialect.name == "postgresql" and stored_events:
            await connection.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('webhook_events', 'id'), "
                    "(SELECT max(id) FROM webhook_events))"
                )
            )
    # A live database has planner statistics; without them the first minute of
    # the run (before autovacuum analyzes) would measure sequential scans. An
    # empty table is left alone: analyzed empty, it would get sequential scans
    # while the run fills it.
    analyzed = ["documents"] + (
        ["webhook_tokens", "webhook_events", "email_events"] if stored_events else []
    )
    # begin() commits: ANALYZE run in a transaction that rolls back keeps no statistics.
    async with engine.begin() as connection:
        for table in analyzed:
            await connection.execute(text(f"ANALYZE {table}"))
    if engine.dialect.name == "postgresql":
        # Write the seeded rows out now, so that the run does not pay for a
        # checkpoint of the seed's WAL.
        async with engine.connect() as connection:
            await connection.execute(text("CHECKPOINT"))
    await engine.dispose()


def _token(i: int, stamp: datetime) -> dict[str, object]:
    return {"token": f"seed-{i}", "fingerprint": "0" * 64, "signed_at": stamp, "received_at": stamp}


def _event(i: int, stamp: datetime) -> dict[str, object]:
    return {
        "id": i + 1,
        "received_at": stamp,
        "token": f"seed-{i}",
        "payload_format": "json",
        "raw_payload": "{}",
        "event": "delivered",
        "mailgun_event_id": f"seed-{i}",
        "message_id": f"old-{i}@mg.example.com",
        "recipient": "alice@example.com",
        "occurred_at": stamp,
        "outcome": "applied",
        "processed_at": stamp,
    }


def _audit(i: int, stamp: datetime) -> dict[str, object]:
    return {
        "subject_type": "document",
        "subject_id": f"OLD-{i}",
        "event_type": "EMAIL_DELIVERED",
        "mailgun_event": "delivered",
        "mailgun_event_id": f"seed-{i}",
        "message_id": f"old-{i}@mg.example.com",
        "occurred_at": stamp,
        "status_changed": True,
        "webhook_event_id": i + 1,
        "created_at": stamp,
    }


def write_bodies(path: Path, rows: int, count: int) -> int:
    """Write one signed JSON body per line, each with its own token and event id."""
    key = SIGNING_KEY.encode()
    stamp = int(time.time())
    random_rows = random.Random(42)
    with path.open("w") as file:
        for _ in range(count):
            row = random_rows.randrange(rows)
            kind = random_rows.random()
            if kind < 0.8:
                data = event_data("delivered", f"bench-{row}@mg.example.com")
            elif kind < 0.95:
                data = event_data("failed", f"bench-{row}@mg.example.com", severity="temporary")
            else:
                data = event_data("failed", f"bench-{row}@mg.example.com", severity="permanent")
            block = signature_block(key, timestamp=stamp, token=secrets.token_hex(25))
            file.write(json.dumps({"signature": block, "event-data": data}) + "\n")
    return count


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on port {port} within {seconds} s")


def run_wrk(args: argparse.Namespace, port: int, bodies: Path) -> WrkResult:
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_THREADS": str(args.threads)}
    command = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "-s",
        str(BENCH_DIR / "bodies.lua"),
        f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output, args.duration)


def parse_wrk(output: str, seconds: int) -> WrkResult:
    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output has no {label}% latency:\n{output}")
        value, unit = float(match.group(1)), match.group(2)
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        return value * scale

    def required(pattern: str, description: str) -> re.Match[str]:
        match = re.search(pattern, output)
        if match is None:
            raise ValueError(f"wrk output has no {description}:\n{output}")
        return match

    elapsed = required(r"(\d+) requests in ([\d.]+)(ms|s|m)", "request count")
    requests = int(elapsed.group(1))
    duration = float(elapsed.group(2)) * {"ms": 0.001, "s": 1, "m": 60}[elapsed.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests_per_second=float(required(r"Requests/sec:\s+([\d.]+)", "rate").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        requests=requests,
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        seconds=duration or seconds,
    )


def sample_memory(pid: int, trace: MemoryTrace, stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.wait(1.0):
        total = 0
        for process in [pid, *child_pids(pid)]:
            try:
                status = Path(f"/proc/{process}/status").read_text()
            except OSError:
                continue
            match = re.search(r"VmRSS:\s+(\d+) kB", status)
            total += int(match.group(1)) if match else 0
        trace.samples.append((time.monotonic() - started, total))


def child_pids(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(child) for child in children]


def server_env(database_url: str) -> dict[str, str]:
    """Return the environment of an mgwebhook server process: key, database, WARNING logs."""
    return {
        **os.environ,
        "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY,
        "MGWEBHOOK_DATABASE_URL": database_url,
        "MGWEBHOOK_LOGGING_LEVEL": "WARNING",
    }


def measure_mgwebhook(args, database_url: str, bodies: Path) -> tuple[WrkResult, MemoryTrace]:
    port = free_port()
    env = server_env(database_url)
    command = [sys.executable, "-m", "mgwebhook", "serve", "--port", str(port)]
    if args.workers > 1:
        command += ["--workers", str(args.workers)]
    server = subprocess.Popen(command, env=env)
    trace, stop = MemoryTrace(), threading.Event()
    try:
        wait_for_port(port, server)
        sampler = threading.Thread(target=sample_memory, args=(server.pid, trace, stop))
        sampler.start()
        if args.database == "postgresql":
            analyzer = threading.Thread(target=stand_in_for_autovacuum, args=(database_url, stop))
            analyzer.start()
        result = run_wrk(args, port, bodies)
    finally:
        stop.set()
        # mgwebhook commits the posts still queued before it exits.
        stop_server(server, "mgwebhook serve", timeout=60)
    return result, trace


# PostgreSQL's defaults for analyzing a table: 50 rows plus 10 % of it changed.
ANALYZE_THRESHOLD = 50
ANALYZE_SCALE_FACTOR = 0.1
STALE_TABLES = f"""
SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.n_mod_since_analyze
    > {ANALYZE_THRESHOLD} + {ANALYZE_SCALE_FACTOR} * greatest(c.reltuples, 0)
"""


def stand_in_for_autovacuum(database_url: str, stop: threading.Event) -> None:
    """Analyze tables when autovacuum would, if the server has autovacuum turned off.

    Without fresh statistics, PostgreSQL keeps plans made when the tables were
    empty, such as the foreign-key check's sequential scan, and the rate falls
    as the tables grow. A production server has autovacuum on.
    """

    async def watch() -> None:
        engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                if (await connection.execute(text("SHOW autovacuum"))).scalar() == "on":
                    return
                name = make_url(database_url).database
                print(
                    f"PostgreSQL has autovacuum off: analyzing the tables of {name} "
                    "when autovacuum would"
                )
                while not stop.is_set():
                    stale = (await connection.execute(text(STALE_TABLES))).scalars().all()
                    for table in stale:
                        await connection.execute(text(f'ANALYZE "{table}"'))
                    await asyncio.sleep(1)
        finally:
            await engine.dispose()

    asyncio.run(watch())


def time_events_list(database_url: str) -> float:
    """Run `mgwebhook events list` as a whole process and return its wall time in seconds."""
    env = {**os.environ, "MGWEBHOOK_DATABASE_URL": database_url, "COLUMNS": "200"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mgwebhook", "events", "list", "--limit", "50"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def measure_bare(args, bodies: Path) -> WrkResult:
    env = {**os.environ, "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY}
    return measure_script(args, "bare_handler.py", env, bodies)


def measure_ceiling(args, database_url: str, bodies: Path) -> WrkResult:
    env = server_env(database_url)
    return measure_script(args, "ceiling_server.py", env, bodies)


def measure_reference(args, mode: str, database_url: str, bodies: Path) -> WrkResult:
    env = server_env(database_url)
    return measure_script(args, "reference_receivers.py", env, bodies, mode, database_url)


def measure_script(
    args,
    script: str,
    env: dict[str, str],
    bodies: Path,
    mode: str | None = None,
    database_url: str | None = None,
) -> WrkResult:
    """Start `python bench/SCRIPT [MODE] PORT`, drive it with wrk and stop it.

    With a PostgreSQL `database_url`, its tables are analyzed during the run
    as `stand_in_for_autovacuum` describes.
    """
    port = free_port()
    command = [sys.executable, str(BENCH_DIR / script), *([mode] if mode else []), str(port)]
    server = subprocess.Popen(command, env=env)
    stop = threading.Event()
    try:
        wait_for_port(port, server)
        if database_url is not None and args.database == "postgresql":
            analyzer = threading.Thread(target=stand_in_for_autovacuum, args=(database_url, stop))
            analyzer.start()
        return run_wrk(args, port, bodies)
    finally:
        stop.set()
        stop_server(server, script)


def stop_server(server: subprocess.Popen, name: str, timeout: int = 30) -> None:
    server.terminate()
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop within {timeout} s of SIGTERM; killed", file=sys.stderr)
        server.kill()
        server.wait()


def report(
    args,
    bodies: int,
    server: WrkResult,
    bare: WrkResult | None,
    ceiling: WrkResult | None,
    memory: MemoryTrace,
    references: dict[str, WrkResult],
) -> int:
    """Print the results; return 1 when a server that stores events returned an error status."""
    print()
    print(
        f"database={args.database} rows={args.rows} stored_events={args.stored_events} "
        f"connections={args.connections} duration={args.duration}s workers={args.workers}"
    )
    storing = {"mgwebhook": server} | {f"reference {mode}": r for mode, r in references.items()}
    base = bare.ok_per_second if bare is not None else None
    print(result_line("mgwebhook", server, base))
    half = args.duration / 2
    print(
        f"server RSS: peak {memory.peak_mb():.0f} MB, mean first half "
        f"{memory.average_mb(0, half):.0f} MB, mean second half "
        f"{memory.average_mb(half, args.duration + 1):.0f} MB"
    )
    if bare is not None:
        print(result_line("bare handler", bare, None))
    if ceiling is not None:
        print(result_line("mgwebhook storing nothing", ceiling, base))
    for mode, result in references.items():
        print(result_line(f"reference {mode}", result, base))
    batched = references.get(f"{args.database}-batched")
    if batched is not None and batched.ok_per_second > 0:
        # The batched reference does the same kind of storage work, so this ratio
        # compares the storage paths, not the storage against no storage at all.
        ratio = server.ok_per_second / batched.ok_per_second
        print(f"mgwebhook's rate over the batched reference's: {ratio:.2f}")

    failed = False
    for name, result in storing.items():
        if result.non_2xx:
            print(
                f"{name} returned an error status for {result.non_2xx} requests; its rate "
                "does not count them and is not comparable",
                file=sys.stderr,
            )
            failed = True
        if result.requests > bodies:
            # A second post with a known token gets 200 and is not stored again.
            print(
                f"wrk sent {result.requests} requests to {name} but only {bodies} bodies "
                "were written, so tokens were reused and its rate is too high; raise "
                "BODIES_PER_SECOND in bench/run.py",
                file=sys.stderr,
            )
            failed = True
    return 1 if failed else 0


def result_line(name: str, result: WrkResult, base: float | None) -> str:
    """Format one server's rate, error count and latency, with its ratio to `base` if given."""
    line = (
        f"{name}: {result.ok_per_second:.0f}/s (2xx), {result.non_2xx} non-2xx, "
        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
    )
    if base is not None:
        line += f", ratio to bare handler {result.ok_per_second / base:.2f}"
    return line


if __name__ == "__main__":
    sys.exit(main())
