"""The `mgwebhook` command: one Typer app that gathers every command module."""

from __future__ import annotations

import typer

from mgwebhook.cli import db, register, serve, track, webhooks

app = typer.Typer(
    name="mgwebhook",
    help="Receive Mailgun delivery webhooks and keep email_status accurate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.command("track")(track.track)
app.add_typer(db.app, name="db")
app.command("register")(register.register)
app.add_typer(webhooks.app, name="webhooks")


def main() -> None:
    app()
