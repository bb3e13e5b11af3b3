"""Crash safety: SIGKILL under load loses no event that got a 200 and applies none twice.

A real `mgwebhook serve` process receives a few hundred signed events at once
and is killed with SIGKILL partway through. After a restart, the client sends
every event that got no 200 again with the same body, as Mailgun does. In the
end every event is in the database exactly once and each row has the status
that the event rules give.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from mgwebhook.db.schema import email_events, webhook_events, webhook_tokens
from mgwebhook.samples import event_data, json_webhook
from tests.conftest import SIGNING_KEY
from tests.helpers import insert_document, status_of
from tests.reliability_support import ServiceProcess, prepare_database, service_env, wait_until

pytestmark = pytest.mark.slow

TRACKED_DOCUMENTS = 20
EVENTS_PER_DOCUMENT = 12
UNMATCHED_EVENTS = 40
CONCURRENT_REQUESTS = 32
# The process is killed once this share of the events has got a 200.
KILL_AFTER_SHARE = 1 / 3
MAX_RETRY_ROUNDS = 20

# The status order and what each kind of event moves a row to, written out here
# independently of mgwebhook.statuses. Temporary failures and opens change nothing.
RANK = {"SENT": 0, "DELIVERED": 1, "FAILED": 2, "COMPLAINED": 3}
TARGET_STATUS = {
    "delivered": "DELIVERED",
    "failed-permanent": "FAILED",
    "failed-temporary": None,
    "complained": "COMPLAINED",
    "opened": None,
}
AUDITED_KINDS = {"delivered", "failed-permanent", "failed-temporary", "complained"}


@dataclass(frozen=True)
class PlannedEvent:
    kind: str
    document_id: str | None
    event_id: str
    token: str
    body: bytes


def plan_events(seed: int) -> list[PlannedEvent]:
    """Return the events of the run in a shuffled order, each with a unique token and id."""
    chooser = random.Random(seed)
    kinds = list(TARGET_STATUS)
    events = []
    for number in range(TRACKED_DOCUMENTS):
        document_id = f"CRASH-{number}"
        for _ in range(EVENTS_PER_DOCUMENT):
            kind = chooser.choice(kinds)
            events.append(_planned(kind, document_id, message_id_of(number), len(events)))
    for number in range(UNMATCHED_EVENTS):
        message_id = f"unmatched-{number}@mg.example.com"
        events.append(_planned("delivered", None, message_id, len(events)))
    chooser.shuffle(events)
    return events


def message_id_of(number: int) -> str:
    return f"crash-{number}@mg.example.com"


def _planned(kind: str, document_id: str | None, message_id: str, index: int) -> PlannedEvent:
    event, _, severity = kind.partition("-")
    event_id = f"crash-event-{index}"
    data = event_data(event, message_id, severity=severity or None, event_id=event_id)
    body = json_webhook(SIGNING_KEY, data)
    token = body["signature"]["token"]
    return PlannedEvent(kind, document_id, event_id, token, json.dumps(body).encode())


def expected_status(events: list[PlannedEvent], document_id: str) -> str:
    status = "SENT"
    for event in events:
        target = TARGET_STATUS[event.kind]
        if event.document_id == document_id and target and RANK[target] > RANK[status]:
            status = target
    return status


async def send_all(
    session: aiohttp.ClientSession,
    url: str,
    events: list[PlannedEvent],
    statuses: dict[str, int | None],
) -> None:
    """Post each event once, CONCURRENT_REQUESTS at a time, and record its status (None if none)."""
    semaphore = asyncio.Semaphore(CONCURRENT_REQUESTS)

    async def post(event: PlannedEvent) -> None:
        async with semaphore:
            try:
                async with session.post(
                    url, data=event.body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    statuses[event.token] = response.status
            except (TimeoutError, aiohttp.ClientError):
                statuses[event.token] = None

    await asyncio.gather(*(post(event) for event in events))


@pytest.mark.parametrize("seed", [7])
async def test_sigkill_under_load_loses_nothing(database_url: str, tmp_path: Path, seed: int):
    env = service_env(database_url)
    engine = await prepare_database(database_url, env)
    service = ServiceProcess(tmp_path / "serve.log", env)
    try:
        for number in range(TRACKED_DOCUMENTS):
            await insert_document(engine, f"CRASH-{number}", f"<{message_id_of(number)}>")
        events = plan_events(seed)
        statuses: dict[str, int | None] = {}
        timeout = aiohttp.ClientTimeout(total=60)

        await service.start_and_wait()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            sending = asyncio.create_task(send_all(session, service.webhook_url, events, statuses))
            kill_after = int(len(events) * KILL_AFTER_SHARE)
            await wait_until(
                lambda: sum(status == 200 for status in statuses.values()) >= kill_after,
                f"{kill_after} events are answered 200",
            )
            service.send_signal(signal.SIGKILL)
            await sending
        assert await service.wait_exit() == -signal.SIGKILL
        answered_before_kill = {token for token, status in statuses.items() if status == 200}
        assert len(answered_before_kill) < len(events), "the kill came after the last answer"

        await service.start_and_wait()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(MAX_RETRY_ROUNDS):
                pending = [event for event in events if statuses.get(event.token) != 200]
                if not pending:
                    break
                await send_all(session, service.webhook_url, pending, statuses)
        unanswered = [event.token for event in events if statuses.get(event.token) != 200]
        assert unanswered == [], f"{len(unanswered)} events never got 200"

        await check_database(engine, events)
        assert "Traceback" not in service.output()
    finally:
        service.stop()
        await engine.dispose()


async def check_database(engine, events: list[PlannedEvent]) -> None:
    async with engine.connect() as connection:
        audit = Counter(
            tuple(row)
            for row in await connection.execute(
                select(email_events.c.subject_id, email_events.c.mailgun_event_id)
            )
        )
        stored = Counter(await connection.scalars(select(webhook_events.c.token)))
        tokens = Counter(await connection.scalars(select(webhook_tokens.c.token)))

    audited = Counter(
        (event.document_id, event.event_id)
        for event in events
        if event.document_id is not None and event.kind in AUDITED_KINDS
    )
    assert audit == audited, "audit trail differs from the events answered 200"
    assert max(audit.values()) == 1

    kept = Counter(event.token for event in events if event.kind != "opened")
    assert stored == kept, "stored webhook events differ from the events answered 200"
    assert tokens == Counter(event.token for event in events)

    for number in range(TRACKED_DOCUMENTS):
        document_id = f"CRASH-{number}"
        assert await status_of(engine, document_id) == expected_status(events, document_id), (
            document_id
        )
