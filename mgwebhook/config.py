"""Settings from a TOML file, overridden by MGWEBHOOK_* variables, overridden by flags.

Every scalar key ``[section] key`` can be overridden by the variable
``MGWEBHOOK_SECTION_KEY`` (for example ``MGWEBHOOK_DATABASE_URL``). Secrets never
live in the file: it names the environment variables that hold them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mgwebhook.errors import ConfigError

ENV_PREFIX = "MGWEBHOOK_"
CONFIG_PATH_ENV = "MGWEBHOOK_CONFIG"
REGIONS = ("us", "eu")
ID_TYPES = ("text", "integer", "uuid")
LOG_FORMATS = ("text", "json")
# Values of logging.log_recipients, which sets whether the per-webhook line shows the recipient.
LOG_RECIPIENT_MODES = ("omit", "hash", "plain")
SIGNING_KEY_HELP = (
    "Copy the key from the Mailgun dashboard: Webhooks, 'HTTP webhook signing key'. "
    "It is not the private API key."
)


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # Bodies larger than this get 413 without being read in full.
    max_body_bytes: int = 16 * 1024 * 1024
    # TCP port for GET /metrics alone, on the same host. 0 serves /metrics on `port`.
    metrics_port: int = 0
    # On SIGTERM or SIGINT, seconds to wait for requests in progress before they
    # are cancelled. Posts already queued are committed after that wait.
    shutdown_timeout_seconds: int = 30
    # Seconds a connection may stay open without sending a complete request line
    # and headers, counted from connect or from the previous response (aiohttp's
    # keepalive_timeout). Idle keep-alive connections are closed after it too.
    keepalive_timeout_seconds: int = 75
    # Seconds allowed for reading a request body. A slower body gets 408.
    body_timeout_seconds: int = 60


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite+aiosqlite:///mgwebhook.db"


@dataclass(frozen=True)
class WebhookSettings:
    signing_key_env: str = "MAILGUN_WEBHOOK_SIGNING_KEY"
    # Mailgun retries a failed delivery for about 8 hours with the original
    # signature block, so the accepted age must cover the whole retry window.
    max_age_seconds: int = 12 * 60 * 60
    max_future_skew_seconds: int = 5 * 60


@dataclass(frozen=True)
class IngestSettings:
    # Verified posts waiting for a writer. When the queue is full, requests get 503.
    queue_size: int = 1000
    # Posts applied in one transaction at most.
    max_batch_size: int = 200
    # Concurrent writer transactions on PostgreSQL. SQLite has one writer at a
    # time, whatever the value. With the database on the same host, 2 gave
    # about 12 % more events/s than 4, because batches grew larger. A database
    # farther away may need more writers to hide its round trips.
    writers: int = 2


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    # "text" or "json" (one object per line).
    format: str = "text"
    # Recipient on the per-webhook line: "omit", "hash" (the first 12 hex digits of
    # the SHA-256 of the lower-cased address) or "plain".
    log_recipients: str = "omit"


@dataclass(frozen=True)
class ReconcileSettings:
    """Retrying of unmatched events while `mgwebhook serve` runs."""

    # Unmatched events received within this many seconds are retried. Older ones
    # wait for `mgwebhook events replay`.
    window_seconds: int = 60 * 60
    # Seconds between two passes; 0 turns reconciliation off.
    interval_seconds: int = 30


@dataclass(frozen=True)
class SubjectMapping:
    """Location of one kind of subject row: its table and its columns by role."""

    table: str
    id_column: str = "id"
    # Type of the id column: "text", "integer" or "uuid".
    id_type: str = "text"
    message_id_column: str = "email_message_id"
    status_column: str = "email_status"
    # Empty when the table has no such column.
    status_updated_at_column: str = "email_status_updated_at"


@dataclass(frozen=True)
class SubjectSettings:
    # True: mgwebhook creates the tables below. False: they belong to the
    # invoicing API, and mgwebhook never creates or alters them.
    managed: bool = True
    document: SubjectMapping = field(default_factory=lambda: SubjectMapping("documents"))
    tenant: SubjectMapping = field(default_factory=lambda: SubjectMapping("tenants"))


@dataclass(frozen=True)
class EnvironmentSettings:
    """One deployment target: its Mailgun domain, region and public webhook URL."""

    name: str
    domain: str
    webhook_url: str
    region: str = "us"
    api_key_env: str = "MAILGUN_API_KEY"
    api_base_url: str | None = None


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    subjects: SubjectSettings = field(default_factory=SubjectSettings)
    environments: dict[str, EnvironmentSettings] = field(default_factory=dict)

    def environment(self, name: str) -> EnvironmentSettings:
        """Return the named environment or raise ConfigError listing the known ones."""
        try:
            return self.environments[name]
        except KeyError:
            known = ", ".join(sorted(self.environments)) or "none configured"
            raise ConfigError(
                f"environment {name!r} is not in the configuration (known: {known}); "
                f"add an [environments.{name}] table to the config file"
            ) from None


_SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "webhook": WebhookSettings,
    "logging": LoggingSettings,
    "ingest": IngestSettings,
    "reconcile": ReconcileSettings,
}


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from the file, the environment and flag overrides.

    `path` defaults to the file named by MGWEBHOOK_CONFIG; with neither, the
    built-in defaults apply. `overrides` maps "section.key" to a flag value; None
    values are skipped so unset flags do not hide the file or the environment.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_PATH_ENV):
        path = Path(environ[CONFIG_PATH_ENV])
    document = _read_toml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"

    unknown = set(document) - set(_SECTIONS) - {"environments", "subjects"}
    if unknown:
        raise ConfigError(
            f"unknown section [{sorted(unknown)[0]}] in {source} "
            f"(known: {', '.join([*_SECTIONS, 'subjects', 'environments'])})"
        )

    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = _section_values(document.get(name, {}), name, cls, source)
        values.update(_environment_values(environ, name, cls))
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            if section == name and value is not None:
                values[key] = _coerce(value, _field_types(cls)[key], f"--{key}")
        sections[name] = cls(**values)

    environments = _parse_environments(document.get("environments", {}), source)
    subjects = _parse_subjects(document.get("subjects", {}), environ, source)
    settings = Settings(**sections, subjects=subjects, environments=environments)
    _validate(settings)
    return settings


def load_signing_keys(settings: Settings, environ: Mapping[str, str] | None = None) -> list[bytes]:
    """Read the webhook signing keys from their environment variable.

    The variable may list several keys separated by commas so that a key can be
    rotated while Mailgun still retries requests signed with the old one.
    """
    environ = os.environ if environ is None else environ
    variable = settings.webhook.signing_key_env
    keys = [key.strip() for key in environ.get(variable, "").split(",")]
    keys = [key for key in keys if key]
    if not keys:
        raise ConfigError(
            f"{variable} is not set, so webhook signatures cannot be verified. "
            f"{SIGNING_KEY_HELP} Several keys may be given separated by commas."
        )
    return [key.encode("utf-8") for key in keys]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass an existing file with --config "
            f"or unset {CONFIG_PATH_ENV}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror}") from None


def _field_types(cls: type) -> dict[str, type]:
    types = {"str": str, "int": int, "str | None": str}
    return {f.name: types[str(f.type)] for f in dataclasses.fields(cls)}


def _section_values(table: Any, name: str, cls: type, source: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] in {source} must be a table")
    types = _field_types(cls)
    values = {}
    for key, value in table.items():
        if key not in types:
            raise ConfigError(
                f"unknown key {key!r} in [{name}] of {source} (known: {', '.join(types)})"
            )
        values[key] = _coerce(value, types[key], f"[{name}] {key} in {source}")
    return values


def _environment_values(environ: Mapping[str, str], name: str, cls: type) -> dict[str, Any]:
    values = {}
    for key, kind in _field_types(cls).items():
        variable = f"{ENV_PREFIX}{name}_{key}".upper()
        if variable in environ:
            values[key] = _coerce(environ[variable], kind, variable)
    return values


def _coerce(value: Any, kind: type, where: str) -> Any:
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a whole number, not {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r}")
    return value


def _parse_environments(table: Any, source: str) -> dict[str, EnvironmentSettings]:
    if not isinstance(table, dict):
        raise ConfigError(f"[environments] in {source} must be a table of tables")
    types = _field_types(EnvironmentSettings)
    environments = {}
    for name, entry in table.items():
        where = f"[environments.{name}] in {source}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        values: dict[str, Any] = {}
        for key, value in entry.items():
            if key not in types or key == "name":
                known = ", ".join(k for k in types if k != "name")
                raise ConfigError(f"unknown key {key!r} in {where} (known: {known})")
            values[key] = _coerce(value, types[key], f"{where} {key}")
        for required in ("domain", "webhook_url"):
            if not values.get(required):
                raise ConfigError(f"{where} is missing {required!r}")
        region = values.get("region", "us")
        if region not in REGIONS:
            raise ConfigError(f"{where} region {region!r} is invalid; use 'us' or 'eu'")
        environments[name] = EnvironmentSettings(name=name, **values)
    return environments


def _parse_subjects(table: Any, environ: Mapping[str, str], source: str) -> SubjectSettings:
    if not isinstance(table, dict):
        raise ConfigError(f"[subjects] in {source} must be a table")
    defaults = SubjectSettings()
    managed: Any = table.get("managed", defaults.managed)
    variable = f"{ENV_PREFIX}SUBJECTS_MANAGED"
    if variable in environ:
        managed = {"true": True, "false": False}.get(
            environ[variable].strip().lower(), environ[variable]
        )
    if not isinstance(managed, bool):
        raise ConfigError(f"[subjects] managed must be true or false, not {managed!r}")

    mappings: dict[str, SubjectMapping] = {}
    known = [f.name for f in dataclasses.fields(SubjectMapping)]
    for kind in ("document", "tenant"):
        entry = table.get(kind, {})
        where = f"[subjects.{kind}] in {source}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        for key, value in entry.items():
            if key not in known:
                raise ConfigError(f"unknown key {key!r} in {where} (known: {', '.join(known)})")
            if not isinstance(value, str) or (not value and key != "status_updated_at_column"):
                raise ConfigError(f"{where} {key} must be a non-empty string, not {value!r}")
        if entry.get("id_type", "text") not in ID_TYPES:
            raise ConfigError(
                f"{where} id_type {entry['id_type']!r} is invalid; use one of {', '.join(ID_TYPES)}"
            )
        mapping = dataclasses.replace(getattr(defaults, kind), **entry)
        roles = [
            mapping.id_column,
            mapping.message_id_column,
            mapping.status_column,
            mapping.status_updated_at_column,
        ]
        used = [column for column in roles if column]
        repeated = next((column for column in used if used.count(column) > 1), None)
        if repeated is not None:
            raise ConfigError(
                f"{where} uses column {repeated!r} for more than one role; map id, message id, "
                "status and status timestamp to distinct columns"
            )
        mappings[kind] = mapping
    extra = set(table) - {"managed", "document", "tenant"}
    if extra:
        raise ConfigError(
            f"unknown key {sorted(extra)[0]!r} in [subjects] of {source} "
            "(known: managed, document, tenant)"
        )
    return SubjectSettings(managed=managed, **mappings)


def _validate(settings: Settings) -> None:
    server, webhook = settings.server, settings.webhook
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"server port {server.port} is out of range; use 0 to 65535")
    if server.max_body_bytes < 1024:
        raise ConfigError(
            f"server max_body_bytes {server.max_body_bytes} is too small; use at least 1024"
        )
    if server.shutdown_timeout_seconds < 0:
        raise ConfigError(
            f"server shutdown_timeout_seconds {server.shutdown_timeout_seconds} is negative; "
            "use 0 or more seconds"
        )
    for name in ("keepalive_timeout_seconds", "body_timeout_seconds"):
        if getattr(server, name) <= 0:
            raise ConfigError(
                f"server {name} {getattr(server, name)} is not positive; use 1 or more seconds"
            )
    if webhook.max_age_seconds <= 0 or webhook.max_future_skew_seconds < 0:
        raise ConfigError(
            "webhook max_age_seconds must be positive and max_future_skew_seconds "
            f"not negative (got {webhook.max_age_seconds} and {webhook.max_future_skew_seconds})"
        )
    if not 0 <= server.metrics_port <= 65535:
        raise ConfigError(
            f"server metrics_port {server.metrics_port} is out of range; use 1 to 65535, "
            "or 0 to serve /metrics on the main port"
        )
    if server.metrics_port != 0 and server.metrics_port == server.port:
        raise ConfigError(
            f"server metrics_port {server.metrics_port} is the same as port; use another "
            "port, or 0 to serve /metrics on the main port"
        )
    _validate_logging(settings.logging)
    reconcile = settings.reconcile
    if reconcile.window_seconds <= 0 or reconcile.interval_seconds < 0:
        raise ConfigError(
            "reconcile window_seconds must be positive and interval_seconds not negative "
            f"(got {reconcile.window_seconds} and {reconcile.interval_seconds}); "
            "set interval_seconds = 0 to turn reconciliation off"
        )
    ingest = settings.ingest
    if min(ingest.queue_size, ingest.max_batch_size, ingest.writers) < 1:
        raise ConfigError(
            "ingest queue_size, max_batch_size and writers must each be at least 1 (got "
            f"{ingest.queue_size}, {ingest.max_batch_size} and {ingest.writers})"
        )
    scheme = urlsplit(settings.database.url).scheme
    if not scheme.startswith(("sqlite", "postgresql", "postgres")):
        raise ConfigError(
            f"database url scheme {scheme!r} is not supported; use "
            "sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB"
        )


def _validate_logging(logging: LoggingSettings) -> None:
    if logging.format not in LOG_FORMATS:
        raise ConfigError(
            f"logging format {logging.format!r} is invalid; use {' or '.join(LOG_FORMATS)}"
        )
    if logging.log_recipients not in LOG_RECIPIENT_MODES:
        raise ConfigError(
            f"logging log_recipients {logging.log_recipients!r} is invalid; use "
            f"{', '.join(LOG_RECIPIENT_MODES)}"
        )
