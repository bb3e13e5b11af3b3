"""The baseline for the benchmark: an aiohttp handler that only parses JSON and checks the HMAC.

It does none of mgwebhook's storage work, so the ratio of mgwebhook's rate to
this one's measures the cost of that work on the same machine in the same run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys

from aiohttp import web

KEY = os.environ["MAILGUN_WEBHOOK_SIGNING_KEY"].encode()


async def receive(request: web.Request) -> web.Response:
    body = await request.json()
    block = body["signature"]
    expected = hmac.new(
        KEY, (block["timestamp"] + block["token"]).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, block["signature"]):
        return web.json_response({"ok": False}, status=401)
    return web.json_response({"ok": True})


def main() -> None:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/mailgun/webhook", receive)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
