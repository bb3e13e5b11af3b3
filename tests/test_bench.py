"""Reference receivers of the benchmark do the work its page lists; its report flags bad runs."""

from __future__ import annotations

import argparse

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import reference_receivers as reference
from bench.run import MemoryTrace, WrkResult, database_name, parse_wrk, report, with_database
from mgwebhook.samples import event_data, signature_block
from tests.conftest import SIGNING_KEY
from tests.helpers import audit_rows, insert_document, status_of, token_count

KEY = SIGNING_KEY
MESSAGE_ID = "bench-1@mg.example.com"


def body(event: str, message_id: str = MESSAGE_ID, severity: str | None = None) -> dict:
    data = event_data(event, message_id, severity=severity)
    return {"signature": signature_block(KEY), "event-data": data}


def read(bodies: list[dict]) -> list[reference.Event]:
    events = [reference.read_event(item, KEY) for item in bodies]
    assert None not in events
    return [event for event in events if event is not None]


async def apply(engine: AsyncEngine, events: list[reference.Event]) -> None:
    """Apply the events in one transaction, as the batched receiver of this database does."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        connection = reference.sqlite_connect(url)
        try:
            reference.sqlite_apply_all(connection, events)
        finally:
            connection.close()
        return
    postgres = await asyncpg.connect(reference.postgres_dsn(url))
    try:
        async with postgres.transaction():
            for event in events:
                await reference.postgres_apply(postgres, event)
    finally:
        await postgres.close()


async def test_reference_status_moves_up_only(engine):
    await insert_document(engine, "INV-1", f"<{MESSAGE_ID}>")
    events = read([body("delivered"), body("failed", severity="permanent"), body("delivered")])

    await apply(engine, events)

    assert await status_of(engine, "INV-1") == "FAILED"
    assert await audit_rows(engine) == [
        ("document", "INV-1", "EMAIL_DELIVERED", "SENT", "DELIVERED", True),
        ("document", "INV-1", "EMAIL_FAILED", "DELIVERED", "FAILED", True),
        ("document", "INV-1", "EMAIL_DELIVERED", "FAILED", "FAILED", False),
    ]
    assert await token_count(engine) == 3


async def test_reference_temporary_failure_keeps_status(engine):
    await insert_document(engine, "INV-1", f"<{MESSAGE_ID}>")

    await apply(engine, read([body("failed", severity="temporary")]))

    assert await status_of(engine, "INV-1") == "SENT"
    assert await audit_rows(engine) == [
        ("document", "INV-1", "EMAIL_TEMP_FAILED", "SENT", "SENT", False)
    ]


async def test_reference_claims_each_token_once(engine):
    await insert_document(engine, "INV-1", f"<{MESSAGE_ID}>")
    first = body("delivered")

    await apply(engine, read([first, first]))

    assert await token_count(engine) == 1
    assert len(await audit_rows(engine)) == 1


async def test_reference_unknown_message_id(engine):
    await insert_document(engine, "INV-1", f"<{MESSAGE_ID}>")

    await apply(engine, read([body("delivered", message_id="other@mg.example.com")]))

    assert await status_of(engine, "INV-1") == "SENT"
    assert await audit_rows(engine) == []
    assert await token_count(engine) == 1


def test_reference_rejects_wrong_signature():
    forged = body("delivered")
    forged["signature"]["signature"] = "0" * 64

    assert reference.read_event(forged, KEY) is None


def wrk_result(requests: int, non_2xx: int = 0) -> WrkResult:
    return WrkResult(
        requests_per_second=requests / 10,
        non_2xx=non_2xx,
        requests=requests,
        p50_ms=5.0,
        p99_ms=9.0,
        seconds=10,
    )


def run_report(server: WrkResult, references: dict[str, WrkResult], bodies: int = 1000) -> int:
    args = argparse.Namespace(
        database="sqlite", rows=10, stored_events=0, connections=32, duration=10, workers=1
    )
    return report(args, bodies, server, wrk_result(5000), None, MemoryTrace(), references)


def test_report_accepts_clean_run(capsys):
    assert run_report(wrk_result(900), {"sqlite-batched": wrk_result(1000)}) == 0
    output = capsys.readouterr()
    assert output.out.splitlines() == [
        "",
        "database=sqlite rows=10 stored_events=0 connections=32 duration=10s workers=1",
        "mgwebhook: 90/s (2xx), 0 non-2xx, p50 5.0 ms, p99 9.0 ms, ratio to bare handler 0.18",
        "server RSS: peak 0 MB, mean first half 0 MB, mean second half 0 MB",
        "bare handler: 500/s (2xx), 0 non-2xx, p50 5.0 ms, p99 9.0 ms",
        "reference sqlite-batched: 100/s (2xx), 0 non-2xx, p50 5.0 ms, p99 9.0 ms, "
        "ratio to bare handler 0.20",
        "mgwebhook's rate over the batched reference's: 0.90",
    ]
    assert output.err == ""


@pytest.mark.parametrize(
    ("server", "references", "message"),
    [
        (
            wrk_result(900, non_2xx=3),
            {},
            "mgwebhook returned an error status for 3 requests; its rate does not count them "
            "and is not comparable\n",
        ),
        (
            wrk_result(900),
            {"sqlite-batched": wrk_result(1001)},
            "wrk sent 1001 requests to reference sqlite-batched but only 1000 bodies were "
            "written, so tokens were reused and its rate is too high; raise BODIES_PER_SECOND "
            "in bench/run.py\n",
        ),
    ],
    ids=["error-status", "reused-tokens"],
)
def test_report_fails_bad_run(capsys, server, references, message):
    assert run_report(server, references) == 1
    assert capsys.readouterr().err == message


WRK_OUTPUT = """\
Running 3s test @ http://127.0.0.1:8080/v1/mailgun/webhook
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.62ms    3.16ms  40.33ms   85.52%
    Req/Sec     1.63k   172.74     1.95k    71.67%
  Latency Distribution
     50%    9.31ms
     75%   10.67ms
     90%   12.47ms
     99%   22.11ms
  9741 requests in 3.00s, 1.42MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   3244.41
Transfer/sec:    485.16KB
"""


def test_parse_wrk_reads_rates_and_latency():
    assert parse_wrk(WRK_OUTPUT, 3) == WrkResult(
        requests_per_second=3244.41,
        non_2xx=12,
        requests=9741,
        p50_ms=9.31,
        p99_ms=22.11,
        seconds=3.0,
    )


def test_parse_wrk_rejects_output_without_rate():
    with pytest.raises(ValueError, match="wrk output has no rate"):
        parse_wrk(WRK_OUTPUT.replace("Requests/sec:   3244.41\n", ""), 3)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
            "postgresql+asyncpg://postgres@127.0.0.1:5432/mgwebhook_bench_7",
        ),
        (
            "postgresql+asyncpg://postgres@/test?host=/var/run/postgresql",
            "postgresql+asyncpg://postgres@/mgwebhook_bench_7?host=%2Fvar%2Frun%2Fpostgresql",
        ),
        (
            "postgresql+asyncpg://bench:s%40cret@db:5432/test?ssl=require",
            "postgresql+asyncpg://bench:s%40cret@db:5432/mgwebhook_bench_7?ssl=require",
        ),
    ],
)
def test_with_database_keeps_query_and_password(url, expected):
    assert with_database(url, "mgwebhook_bench_7") == expected
    assert database_name(expected) == "mgwebhook_bench_7"
