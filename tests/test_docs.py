"""The configuration reference and config.example.toml describe the same keys and defaults."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from mgwebhook.config import Settings, SubjectMapping, load_settings

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "config.example.toml"
REFERENCE = ROOT / "docs" / "configuration.md"


def documented_defaults() -> dict[tuple[str, str], str]:
    """(section, key) -> default as written in the reference tables."""
    found = {}
    section = None
    for line in REFERENCE.read_text().splitlines():
        heading = re.fullmatch(r"## \[([A-Za-z_.]+)\]", line)
        if heading:
            section = heading.group(1)
            continue
        row = re.match(r"\| `([a-z_]+)` \| `([^`]*)` \|", line)
        if row and section and section != "environments.NAME":
            found[(section, row.group(1))] = row.group(2)
    return found


def example_values() -> dict[tuple[str, str], str]:
    document = tomllib.loads(EXAMPLE.read_text())
    values = {}

    def walk(prefix: str, table: dict) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(f"{prefix}.{key}" if prefix else key, value)
            elif not prefix.startswith("environments"):
                values[(prefix, key)] = _toml(value)

    walk("", document)
    return values


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def code_defaults() -> dict[tuple[str, str], str]:
    settings = Settings()
    values = {}
    for section in ("server", "database", "webhook", "ingest", "logging", "reconcile"):
        for item in dataclasses.fields(getattr(settings, section)):
            values[(section, item.name)] = _toml(getattr(getattr(settings, section), item.name))
    values[("subjects", "managed")] = _toml(settings.subjects.managed)
    for kind in ("document", "tenant"):
        mapping: SubjectMapping = getattr(settings.subjects, kind)
        for item in dataclasses.fields(mapping):
            values[(f"subjects.{kind}", item.name)] = _toml(getattr(mapping, item.name))
    return values


def test_example_lists_every_key_with_its_default():
    assert example_values() == code_defaults()


def test_reference_matches_example():
    assert documented_defaults() == example_values()


def test_example_loads_to_the_defaults():
    settings = load_settings(EXAMPLE, environ={})
    assert dataclasses.replace(settings, environments={}) == Settings()
