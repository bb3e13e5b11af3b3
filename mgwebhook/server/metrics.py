"""Prometheus metrics of one application, kept in a registry of its own.

Each application gets its own `CollectorRegistry` instead of the process-wide
default, so several applications in one process (as in the tests) count apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.db.probe import read_within
from mgwebhook.db.schema import webhook_events
from mgwebhook.errors import DatabaseUnavailable, SignatureMismatch, TokenReplayed
from mgwebhook.ingest import Outcome
from mgwebhook.server.writer import BatchWriter

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
# Max seconds for the unmatched count. A slower count leaves its gauge out of the scrape.
UNMATCHED_COUNT_TIMEOUT_SECONDS = 2.0

# Event types in Mailgun's event documentation, plus `bounced` and `dropped`
# from legacy form webhooks. Any other value is counted as "other", so a
# payload cannot add label values without limit.
MAILGUN_EVENT_TYPES = frozenset(
    {
        "accepted",
        "rejected",
        "delivered",
        "failed",
        "opened",
        "clicked",
        "unsubscribed",
        "complained",
        "stored",
        "list_member_uploaded",
        "list_member_upload_error",
        "list_uploaded",
        "bounced",
        "dropped",
    }
)
OTHER_EVENT_TYPE = "other"

LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class _UnmatchedEvents(Collector):
    """Gauge of stored events with outcome "unmatched", set by `WebhookMetrics.refresh`.

    While the last count failed, the gauge is left out of the scrape rather
    than repeating an old value.
    """

    name = "mgwebhook_unmatched_events"
    documentation = (
        "Stored events whose message id matched no documents or tenants row yet, "
        "counted at scrape time."
    )

    def __init__(self) -> None:
        self.value: int | None = None

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        if self.value is None:
            return []
        return [GaugeMetricFamily(self.name, self.documentation, value=self.value)]


class WebhookMetrics:
    """Counters, histograms and gauges of one application and the registry holding them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mgwebhook_webhook_requests",
            "Webhook requests by outcome and HTTP status.",
            ["outcome", "status"],
            registry=self.registry,
        )
        self.events = Counter(
            "mgwebhook_webhook_events",
            "Authentic webhook events by Mailgun event type; undocumented types count as other.",
            ["event"],
            registry=self.registry,
        )
        self.signature_failures = Counter(
            "mgwebhook_signature_failures",
            "Webhook requests rejected because no signing key produced their signature.",
            registry=self.registry,
        )
        self.replays_rejected = Counter(
            "mgwebhook_replays_rejected",
            "Webhook requests rejected because a different event already used their token.",
            registry=self.registry,
        )

        self.latency = Histogram(
            "mgwebhook_webhook_duration_seconds",
            "Time from the start of the webhook handler to its response, in seconds.",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mgwebhook_ingest_batch_size",
            "Posts applied in one ingest transaction.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )

        self.queue_depth = Gauge(
            "mgwebhook_ingest_queue_depth",
            "Verified posts waiting in the ingest queue for a writer, at scrape time.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "mgwebhook_ingest_in_flight",
            "Posts taken by a writer whose batch has not committed yet, at scrape time.",
            registry=self.registry,
        )

        self.unmatched = _UnmatchedEvents()
        self.registry.register(self.unmatched)
        # Scrapes in a row whose unmatched count failed; logged once per streak.
        self._count_failures = 0

    def observe_webhook(
        self, outcome: str, status: int, event: str | None, latency_seconds: float
    ) -> None:
        """Count one webhook request; `event` is the Mailgun event type, None when unknown."""
        self.requests.labels(outcome=str(outcome), status=str(status)).inc()
        # A retry of a stored event carries no event, so each token counts once.
        if event is not None:
            label = event if event in MAILGUN_EVENT_TYPES else OTHER_EVENT_TYPE
            self.events.labels(event=label).inc()
        if outcome == SignatureMismatch.reason:
            self.signature_failures.inc()
        elif outcome == TokenReplayed.reason:
            self.replays_rejected.inc()
        self.latency.observe(latency_seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    async def refresh(self, engine: AsyncEngine | None, writer: BatchWriter | None) -> None:
        """Update the gauges computed at scrape time: queue, posts in flight, unmatched events."""
        if writer is not None:
            self.queue_depth.set(writer.waiting)
            self.in_flight.set(writer.in_flight)
        if engine is None:
            self.unmatched.value = None
            return
        try:
            count = await read_within(
                engine, count_unmatched_events, UNMATCHED_COUNT_TIMEOUT_SECONDS
            )
        except TimeoutError:
            self._count_failed(f"timed out after {UNMATCHED_COUNT_TIMEOUT_SECONDS:g} s")
            return
        except DatabaseUnavailable as error:
            self._count_failed(str(error))
            return
        if self._count_failures:
            logger.info(
                "counted unmatched events for /metrics again after %d failed scrape(s)",
                self._count_failures,
            )
            self._count_failures = 0
        self.unmatched.value = count

    def render(self, accept: str) -> tuple[bytes, str]:
        """Return the exposition body and its content type for the request's Accept header.

        The Prometheus text format is the default. OpenMetrics is returned when
        the scraper requests it.
        """
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def _count_failed(self, reason: str) -> None:
        self.unmatched.value = None
        self._count_failures += 1
        if self._count_failures == 1:
            logger.warning(
                "cannot count unmatched events for /metrics: %s; "
                "mgwebhook_unmatched_events is left out until the database answers",
                reason,
            )


def count_unmatched_events(connection: Connection) -> int:
    """Count stored events with outcome "unmatched".

    The count can use ix_webhook_events_outcome_id, whose first column
    is the outcome.
    """
    statement = (
        select(func.count())
        .select_from(webhook_events)
        .where(webhook_events.c.outcome == Outcome.UNMATCHED.value)
    )
    return int(connection.scalar(statement) or 0)
