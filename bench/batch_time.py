"""Time one SQLite batch, without HTTP: mgwebhook's writer against the batched reference receiver.

Usage (from the repository root, with the project installed):

    python bench/batch_time.py

It seeds a temporary SQLite file with 10,000 tracked documents, then applies
unique signed events in batches of several sizes, each batch in one
transaction that commits, and prints milliseconds per batch and microseconds
per event. mgwebhook's batches run through `mgwebhook.ingest.apply_batch` on
the engine of the server's writer thread. The reference's batches run
through `sqlite_apply_all` of `bench/reference_receivers.py`, on a copy of
the same seed. Both databases use WAL mode with synchronous=FULL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

# Run as a script, this file has bench/ first on sys.path.
import reference_receivers
from run import SIGNING_KEY, seed, write_bodies
from sqlalchemy.orm import Session

from mgwebhook.db.engine import create_engine, create_sqlite_thread_engine
from mgwebhook.ingest import VerifiedWebhook, apply_batch
from mgwebhook.payloads import parse_body

ROWS = 10_000
SIZES = (1, 16, 32, 128)
BATCHES_PER_SIZE = 100
WARM_UP_BATCHES = 20


def time_batches(apply: Callable[[list], None], items: list) -> dict[int, float]:
    """Apply the items in batches of each size; return seconds per batch by size."""
    position = 0

    def run(size: int, count: int) -> float:
        nonlocal position
        started = time.perf_counter()
        for _ in range(count):
            apply(items[position : position + size])
            position += size
        return (time.perf_counter() - started) / count

    run(16, WARM_UP_BATCHES)
    return {size: run(size, BATCHES_PER_SIZE) for size in SIZES}


def mgwebhook_batches(url: str, bodies: list[str]) -> dict[int, float]:
    engine = create_sqlite_thread_engine(create_engine(url))
    webhooks = [
        VerifiedWebhook(parse_body("application/json", body.encode()), datetime.now(UTC))
        for body in bodies
    ]

    def apply(batch: list[VerifiedWebhook]) -> None:
        with Session(engine) as session, session.begin():
            apply_batch(session, batch, datetime.now(UTC))

    try:
        return time_batches(apply, webhooks)
    finally:
        engine.dispose()


def reference_batches(url: str, bodies: list[str]) -> dict[int, float]:
    connection = reference_receivers.sqlite_connect(url)
    key = SIGNING_KEY.encode()
    events = [reference_receivers.read_event(json.loads(body), key) for body in bodies]

    def apply(batch: list) -> None:
        reference_receivers.sqlite_apply_all(connection, batch)

    try:
        return time_batches(apply, events)
    finally:
        connection.close()


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="mgwebhook-batch-") as folder:
        workdir = Path(folder)
        seeded = workdir / "seed.db"
        asyncio.run(seed(f"sqlite+aiosqlite:///{seeded}", ROWS, 0))
        shutil.copyfile(seeded, workdir / "reference.db")
        count = WARM_UP_BATCHES * 16 + BATCHES_PER_SIZE * sum(SIZES)
        write_bodies(workdir / "bodies.jsonl", ROWS, count)
        bodies = (workdir / "bodies.jsonl").read_text().splitlines()

        results = {
            "mgwebhook": mgwebhook_batches(f"sqlite+aiosqlite:///{seeded}", bodies),
            "reference": reference_batches(f"sqlite:///{workdir / 'reference.db'}", bodies),
        }
    for name, by_size in results.items():
        for size, seconds in by_size.items():
            print(
                f"{name}: batch of {size}: {seconds * 1000:.2f} ms, "
                f"{seconds / size * 1_000_000:.0f} µs per event"
            )


if __name__ == "__main__":
    main()
