"""`mgwebhook webhooks list|remove`: inspect the Mailgun webhooks of a domain or remove our URL."""

from __future__ import annotations

import typer

from mgwebhook.cli import render
from mgwebhook.cli.common import ConfigOption, run
from mgwebhook.cli.register import (
    DryRunOption,
    EnvOption,
    apply_and_verify,
    change_rows,
    heading_for,
    load_environment,
)
from mgwebhook.config import EnvironmentSettings
from mgwebhook.mailgun import HANDLED_WEBHOOK_IDS, Action, MailgunClient, plan_remove
from mgwebhook.mailgun.sync import contains_url, same_url

app = typer.Typer(
    help="List the Mailgun webhooks of an environment or remove our URL from them.",
    no_args_is_help=True,
)


@app.command("list")
def list_webhooks(env: EnvOption, config: ConfigOption = None) -> None:
    """List every webhook URL on the domain of the environment and mark ours with "yes"."""
    environment = load_environment(config, env)
    run(_list(environment))


@app.command("remove")
def remove(env: EnvOption, dry_run: DryRunOption = False, config: ConfigOption = None) -> None:
    """Remove webhook_url from the four handled webhooks, keeping every other URL.

    A webhook whose only URL is ours is deleted.
    """
    environment = load_environment(config, env)
    run(_remove(environment, write=not dry_run))


async def _list(environment: EnvironmentSettings) -> None:
    async with MailgunClient.for_environment(environment) as client:
        webhooks = await client.list_webhooks()

    url = environment.webhook_url
    rows = [
        (webhook_id, listed, same_url(listed, url))
        for webhook_id in sorted(webhooks)
        for listed in webhooks[webhook_id]
    ]
    if rows:
        render.webhook_urls(heading_for(environment), rows)
    else:
        render.info(f"{heading_for(environment)}\nNo webhooks are configured on this domain.")

    missing = [
        webhook_id
        for webhook_id in HANDLED_WEBHOOK_IDS
        if not contains_url(webhooks.get(webhook_id, ()), url)
    ]
    if not missing:
        render.info(f"Our URL is on all {len(HANDLED_WEBHOOK_IDS)} handled webhooks.")
        return
    render.info(
        f"Our URL is missing from {len(missing)} of {len(HANDLED_WEBHOOK_IDS)} handled "
        f"webhooks ({', '.join(missing)}); run `mgwebhook register --env {environment.name}` "
        "to add it."
    )


async def _remove(environment: EnvironmentSettings, *, write: bool) -> None:
    async with MailgunClient.for_environment(environment) as client:
        changes = plan_remove(await client.list_webhooks(), environment.webhook_url)
        render.webhook_changes(heading_for(environment), change_rows(changes))
        if write:
            await apply_and_verify(client, environment, changes)

    url = environment.webhook_url
    total = len(changes)
    updated = sum(change.action is Action.UPDATE for change in changes)
    deleted = sum(change.action is Action.DELETE for change in changes)
    if not updated and not deleted:
        render.info(f"Nothing to remove: none of the {total} webhooks posts to {url}.")
    elif not write:
        render.info(
            f"Dry run: {updated + deleted} of {total} webhooks would change; nothing was changed."
        )
    else:
        render.info(
            f"Removed {url} from {environment.domain}: {updated} updated with the other URLs "
            f"kept, {deleted} deleted because ours was their only URL."
        )
