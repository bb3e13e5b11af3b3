"""Settings from file, environment and flags, and the signing keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgwebhook.config import load_settings, load_signing_keys
from mgwebhook.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    settings = load_settings(None, environ={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.server.max_body_bytes == 16 * 1024 * 1024
    assert settings.database.url == "sqlite+aiosqlite:///mgwebhook.db"
    assert settings.webhook.max_age_seconds == 43200
    assert settings.webhook.max_future_skew_seconds == 300


def test_example_file_loads_with_documented_defaults():
    settings = load_settings(EXAMPLE, environ={})
    defaults = load_settings(None, environ={})
    assert settings.server == defaults.server
    assert settings.webhook == defaults.webhook
    assert settings.database == defaults.database
    assert sorted(settings.environments) == ["production", "staging"]


def test_file_then_environment_then_flags(tmp_path):
    path = write(
        tmp_path, '[server]\nport = 9000\nhost = "0.0.0.0"\n[database]\nurl = "sqlite:///a.db"\n'
    )
    environ = {"MGWEBHOOK_SERVER_PORT": "9100", "MGWEBHOOK_DATABASE_URL": "postgresql://u@h/db"}
    settings = load_settings(
        path, environ=environ, overrides={"server.port": 9200, "server.host": None}
    )
    assert settings.server.port == 9200
    assert settings.server.host == "0.0.0.0"
    assert settings.database.url == "postgresql://u@h/db"


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, "[webhook]\nmax_age_seconds = 60\n")
    settings = load_settings(None, environ={"MGWEBHOOK_CONFIG": str(path)})
    assert settings.webhook.max_age_seconds == 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 1\n", "unknown key 'prot' in [server]"),
        ("[sever]\n", "unknown section [sever]"),
        ("[server]\nport = 'x'\n", "must be a whole number, not 'x'"),
        ("[server]\nport = 70000\n", "port 70000 is out of range"),
        ("[server\n", "is not valid TOML"),
        ('[database]\nurl = "mysql://x"\n', "scheme 'mysql' is not supported"),
        ('[environments.prod]\ndomain = "d"\n', "is missing 'webhook_url'"),
        (
            '[environments.prod]\ndomain = "d"\nwebhook_url = "https://x"\nregion = "asia"\n',
            "region 'asia' is invalid",
        ),
    ],
)
def test_invalid_file_names_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(write(tmp_path, text), environ={})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_invalid_environment_variable():
    with pytest.raises(ConfigError, match="MGWEBHOOK_SERVER_PORT must be a whole number"):
        load_settings(None, environ={"MGWEBHOOK_SERVER_PORT": "eighty"})


def test_unknown_environment_lists_known(tmp_path):
    settings = load_settings(EXAMPLE, environ={})
    with pytest.raises(ConfigError) as error:
        settings.environment("prod")
    assert str(error.value) == (
        "environment 'prod' is not in the configuration (known: production, staging); "
        "add an [environments.prod] table to the config file"
    )


def test_signing_keys_split_on_commas():
    settings = load_settings(None, environ={})
    keys = load_signing_keys(settings, {"MAILGUN_WEBHOOK_SIGNING_KEY": " new-key , old-key,, "})
    assert keys == [b"new-key", b"old-key"]


@pytest.mark.parametrize("value", [None, "", " , "])
def test_missing_signing_key_explains_where_to_find_it(value):
    settings = load_settings(None, environ={})
    environ = {} if value is None else {"MAILGUN_WEBHOOK_SIGNING_KEY": value}
    with pytest.raises(ConfigError) as error:
        load_signing_keys(settings, environ)
    message = str(error.value)
    assert message.startswith("MAILGUN_WEBHOOK_SIGNING_KEY is not set")
    assert "HTTP webhook signing key" in message
    assert "not the private API key" in message
