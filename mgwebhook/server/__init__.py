"""The aiohttp server. This module stays free of imports so that the CLI starts quickly."""

WEBHOOK_PATH = "/v1/mailgun/webhook"
