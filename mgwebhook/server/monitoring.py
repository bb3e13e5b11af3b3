"""Endpoints for operators: health probes, and Prometheus metrics on the main port or its own."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import hdrs, web

from mgwebhook.server import health
from mgwebhook.server.keys import ENGINE, METRICS, SETTINGS, WRITER
from mgwebhook.server.metrics import METRICS_PATH, WebhookMetrics

logger = logging.getLogger(__name__)


def add_monitoring(app: web.Application) -> None:
    """Give `app` its metrics and add GET /healthz, GET /readyz and GET /metrics.

    With server.metrics_port set, /metrics is served only on that port, by a
    second server that starts and stops with `app`.
    """
    app[METRICS] = WebhookMetrics()
    health.add_routes(app)
    if app[SETTINGS].server.metrics_port == 0:
        app.router.add_get(METRICS_PATH, _scrape)
    else:
        app.cleanup_ctx.append(_metrics_server)


async def _scrape(request: web.Request) -> web.Response:
    return await metrics_response(request.app, request)


async def metrics_response(app: web.Application, request: web.Request) -> web.Response:
    """Refresh the scrape-time gauges of `app` and return its metrics."""
    metrics = app[METRICS]
    await metrics.refresh(app.get(ENGINE), app.get(WRITER))
    body, content_type = metrics.render(request.headers.get(hdrs.ACCEPT, ""))
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


async def _metrics_server(app: web.Application) -> AsyncIterator[None]:
    """Serve GET /metrics of `app` on server.metrics_port (an aiohttp cleanup context)."""
    host = app[SETTINGS].server.host
    port = app[SETTINGS].server.metrics_port

    async def scrape(request: web.Request) -> web.Response:
        return await metrics_response(app, request)

    metrics_app = web.Application()
    metrics_app.router.add_get(METRICS_PATH, scrape)
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        raise OSError(
            f"cannot listen for {METRICS_PATH} on {host}:{port}: {error.strerror or error}; "
            "set server.metrics_port to a free port, or to 0 to serve it on the main port"
        ) from error
    logger.info("serving Prometheus metrics at http://%s:%d%s", host, port, METRICS_PATH)
    yield
    await runner.cleanup()
