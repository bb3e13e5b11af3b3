"""mgwebhook's HTTP path with a writer that stores nothing: the ceiling for the database work.

It runs the real application (reading, verification, parsing, the queue, the
log line, metrics and the response) but reports every queued post as applied
without touching the database. Its rate shows how much of the gap to the bare
handler is the HTTP path and how much is storage.

Usage: python bench/ceiling_server.py PORT (MAILGUN_WEBHOOK_SIGNING_KEY and
MGWEBHOOK_DATABASE_URL set as for `mgwebhook serve`).
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from mgwebhook.cli.app import main as mgwebhook_main
from mgwebhook.ingest import IngestResult, Outcome, VerifiedWebhook
from mgwebhook.payloads import extract_event
from mgwebhook.server import app as app_module


class StoringNothing:
    """A batch runner that reports every post as applied; it takes the real runners' arguments."""

    def __init__(self, *_arguments: Any) -> None:
        pass

    async def __call__(self, webhooks: list[VerifiedWebhook], _now: datetime) -> list[IngestResult]:
        return [
            IngestResult(Outcome.APPLIED, "not stored", extract_event(webhook.payload))
            for webhook in webhooks
        ]

    async def close(self) -> None:
        pass


def main() -> None:
    # Both runners are replaced, whichever database the URL names. setattr,
    # because a type checker rejects assigning a class to these names.
    setattr(app_module, "thread_batch_runner", StoringNothing)  # noqa: B010
    setattr(app_module, "AsyncBatchRunner", StoringNothing)  # noqa: B010
    sys.argv = ["mgwebhook", "serve", "--port", sys.argv[1]]
    mgwebhook_main()


if __name__ == "__main__":
    main()
