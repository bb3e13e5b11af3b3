"""The `mgwebhook` command: one Typer app that gathers every command module."""

from __future__ import annotations

import typer

from mgwebhook.cli import (
    db,
    events,
    history,
    register,
    send_test,
    serve,
    track,
    version,
    webhooks,
)

app = typer.Typer(
    name="mgwebhook",
    help="Receive Mailgun delivery webhooks and keep email_status accurate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# --version; Typer adds --install-completion and --show-completion itself.
app.callback()(version.global_options)
app.command("serve")(serve.serve)
app.command("track")(track.track)
app.add_typer(db.app, name="db")
app.command("register")(register.register)
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(events.app, name="events")
app.command("history")(history.history)
app.command("send-test")(send_test.send_test)


def main() -> None:
    app()
