"""`mgwebhook --version` and the shell-completion options in --help."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from mgwebhook.cli.app import app

runner = CliRunner()


def test_version_prints_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"mgwebhook {version('mgwebhook')}\n"


def test_help_lists_version_and_completion():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--version", "--install-completion", "--show-completion"):
        assert option in result.output


def test_serve_help_lists_new_options():
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--metrics-port", "--log-format", "--log-level"):
        assert option in result.output
