"""The server timeouts: defaults, overrides and invalid values.

The process tests in test_reliability_shutdown.py and test_reliability_clients.py
show that `mgwebhook serve` applies them.
"""

from __future__ import annotations

import pytest

from mgwebhook.config import load_settings
from mgwebhook.errors import ConfigError


def test_timeout_defaults():
    server = load_settings(None, environ={}).server
    assert server.shutdown_timeout_seconds == 30
    assert server.keepalive_timeout_seconds == 75
    assert server.body_timeout_seconds == 60


def test_timeouts_from_environment():
    environ = {
        "MGWEBHOOK_SERVER_SHUTDOWN_TIMEOUT_SECONDS": "0",
        "MGWEBHOOK_SERVER_KEEPALIVE_TIMEOUT_SECONDS": "5",
        "MGWEBHOOK_SERVER_BODY_TIMEOUT_SECONDS": "7",
    }
    server = load_settings(None, environ=environ).server
    assert server.shutdown_timeout_seconds == 0
    assert server.keepalive_timeout_seconds == 5
    assert server.body_timeout_seconds == 7


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "MGWEBHOOK_SERVER_SHUTDOWN_TIMEOUT_SECONDS",
            "-1",
            "server shutdown_timeout_seconds -1 is negative; use 0 or more seconds",
        ),
        (
            "MGWEBHOOK_SERVER_KEEPALIVE_TIMEOUT_SECONDS",
            "0",
            "server keepalive_timeout_seconds 0 is not positive; use 1 or more seconds",
        ),
        (
            "MGWEBHOOK_SERVER_BODY_TIMEOUT_SECONDS",
            "-5",
            "server body_timeout_seconds -5 is not positive; use 1 or more seconds",
        ),
    ],
)
def test_invalid_timeout_is_rejected(variable, value, message):
    with pytest.raises(ConfigError) as error:
        load_settings(None, environ={variable: value})
    assert str(error.value) == message
