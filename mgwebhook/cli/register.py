"""`mgwebhook register`: add our webhook URL to the Mailgun webhook ids this service handles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mgwebhook.cli import render
from mgwebhook.cli.common import ConfigOption, fail, run, settings_from
from mgwebhook.config import EnvironmentSettings
from mgwebhook.errors import MgwebhookError
from mgwebhook.mailgun import (
    MAX_URLS_PER_WEBHOOK,
    Action,
    MailgunClient,
    WebhookChange,
    check_webhook_url,
    plan_register,
    unapplied_changes,
)

EnvOption = Annotated[
    str,
    typer.Option(
        "--env",
        "-e",
        help="Name of the environment to use, as in environments.NAME of the config file.",
        show_default=False,
    ),
]

DryRunOption = Annotated[
    bool,
    typer.Option("--dry-run", help="Print the planned changes without sending them to Mailgun."),
]

CheckOption = Annotated[
    bool,
    typer.Option(
        "--check",
        help="Change nothing, and exit with code 1 when any webhook is not in sync.",
    ),
]


def register(
    env: EnvOption,
    dry_run: DryRunOption = False,
    check: CheckOption = False,
    config: ConfigOption = None,
) -> None:
    """Add webhook_url to the delivered, permanent_fail, temporary_fail and complained webhooks.

    URLs that others registered on these webhooks are kept.
    """
    environment = load_environment(config, env)
    try:
        url_warning = check_webhook_url(environment.webhook_url, _table_name(environment))
    except MgwebhookError as error:
        fail(str(error))
    if url_warning:
        render.warning(url_warning)

    exit_code = run(_register(environment, write=not (dry_run or check), check=check))
    if exit_code:
        raise typer.Exit(exit_code)


def load_environment(config: Path | None, name: str) -> EnvironmentSettings:
    """Load the settings and return environment `name`, failing with exit 1 if unknown."""
    settings = settings_from(config)
    try:
        return settings.environment(name)
    except MgwebhookError as error:
        fail(str(error))


def heading_for(environment: EnvironmentSettings) -> str:
    """Return the lines printed above a webhook table of `environment`."""
    return (
        f"Mailgun webhooks of {environment.domain} (environment {environment.name}, "
        f"region {environment.region})\nOur URL: {environment.webhook_url}"
    )


def change_rows(changes: list[WebhookChange]) -> list[tuple[str, list[str], list[str], str]]:
    """Return the rows of `render.webhook_changes` for `changes`."""
    return [
        (change.webhook_id, list(change.before), list(change.after), change.action.value)
        for change in changes
    ]


async def apply_and_verify(
    client: MailgunClient, environment: EnvironmentSettings, changes: list[WebhookChange]
) -> None:
    """Send every planned change, then read the webhooks again to confirm them.

    Raises MgwebhookError naming the first webhook id that Mailgun does not list
    as planned.
    """
    for change in changes:
        await client.apply_change(change)
    if not any(change.changes_anything for change in changes):
        return
    mismatched = unapplied_changes(await client.list_webhooks(), changes)
    if mismatched:
        change = mismatched[0]
        planned = ", ".join(change.after) or "no URL"
        raise MgwebhookError(
            f"Mailgun accepted the changes but does not list {planned} for webhook "
            f"{change.webhook_id!r}; inspect it with `mgwebhook webhooks list --env "
            f"{environment.name}` and run the command again"
        )


async def _register(environment: EnvironmentSettings, *, write: bool, check: bool) -> int:
    """Plan, print and, when `write` is set, apply the registration. Return the exit code."""
    async with MailgunClient.for_environment(environment) as client:
        changes = plan_register(await client.list_webhooks(), environment.webhook_url)
        render.webhook_changes(heading_for(environment), change_rows(changes))
        if write:
            await apply_and_verify(client, environment, changes)

    _print_summary(environment, changes, write=write, check=check)
    conflicts = [change for change in changes if change.action is Action.CONFLICT]
    for change in conflicts:
        render.error(
            f"webhook {change.webhook_id!r} on {environment.domain} already has the maximum "
            f"of {MAX_URLS_PER_WEBHOOK} URLs and none of them is ours: "
            f"{', '.join(change.before)}. It was left unchanged; remove one of these URLs in "
            "the Mailgun dashboard, then run register again"
        )
    pending = any(change.changes_anything for change in changes)
    return 1 if conflicts or (check and pending) else 0


def _print_summary(
    environment: EnvironmentSettings, changes: list[WebhookChange], *, write: bool, check: bool
) -> None:
    url = environment.webhook_url
    total = len(changes)
    pending = sum(change.changes_anything for change in changes)
    unchanged = sum(change.action is Action.NONE for change in changes)

    if check and pending:
        render.error(
            f"{pending} of {total} webhooks do not post to {url} yet; run "
            f"`mgwebhook register --env {environment.name}` to add it"
        )
    elif check:
        render.info(f"In sync: {unchanged} of {total} webhooks post to {url}.")
    elif not write and pending:
        render.info(f"Dry run: {pending} of {total} webhooks would change; nothing was changed.")
    elif not write:
        render.info(
            f"Dry run: nothing would change; {unchanged} of {total} webhooks already post to {url}."
        )
    elif pending:
        created = sum(change.action is Action.CREATE for change in changes)
        updated = sum(change.action is Action.UPDATE for change in changes)
        render.info(
            f"Registered {url} on {environment.domain}: {created} created, {updated} updated, "
            f"{unchanged} already set."
        )
    else:
        render.info(f"Nothing to change: {unchanged} of {total} webhooks already post to {url}.")


def _table_name(environment: EnvironmentSettings) -> str:
    return f"[environments.{environment.name}]"
