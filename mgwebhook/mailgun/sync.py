"""Plan the changes that register or remove our URL on the Mailgun webhook ids.

Everything here is pure. The functions take the URLs that Mailgun currently lists and
return what each id should become, without calling the API.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from mgwebhook.errors import ConfigError

# The Mailgun webhook ids whose events this service records. There is no "failed" id,
# because Mailgun reports a failure through permanent_fail or temporary_fail.
HANDLED_WEBHOOK_IDS: tuple[str, ...] = (
    "delivered",
    "permanent_fail",
    "temporary_fail",
    "complained",
)

# Mailgun accepts at most this many URLs per webhook id.
MAX_URLS_PER_WEBHOOK = 3

# Hosts for which a plain-http webhook_url is accepted, for local tests against a mock API.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1"})


class Action(enum.StrEnum):
    """Change planned for one webhook id."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    NONE = "none"
    # The id already has the maximum number of URLs and none of them is ours.
    CONFLICT = "conflict"


@dataclass(frozen=True)
class WebhookChange:
    """Planned change of one webhook id: its URLs before and after, and the action."""

    webhook_id: str
    action: Action
    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def changes_anything(self) -> bool:
        """True for create, update and delete, which write to Mailgun."""
        return self.action in (Action.CREATE, Action.UPDATE, Action.DELETE)


def same_url(first: str, second: str) -> bool:
    """Compare two webhook URLs, ignoring the case of the scheme and the host.

    The path and the query are compared exactly, because a web server may treat
    them as case-sensitive.
    """
    return _url_key(first) == _url_key(second)


def contains_url(urls: Iterable[str], url: str) -> bool:
    return any(same_url(candidate, url) for candidate in urls)


def plan_register(
    current: Mapping[str, Sequence[str]],
    url: str,
    webhook_ids: Sequence[str] = HANDLED_WEBHOOK_IDS,
) -> list[WebhookChange]:
    """Plan adding `url` to each id in `webhook_ids`, keeping every other URL.

    `current` maps each configured id to its URLs, as `MailgunClient.list_webhooks`
    returns it. An absent id is created with `url` alone. A present id without
    `url` is updated to its URLs plus `url` at the end. An id that already has
    MAX_URLS_PER_WEBHOOK other URLs is a conflict and keeps its URLs.
    """
    changes = []
    for webhook_id in webhook_ids:
        before = tuple(current.get(webhook_id, ()))
        if not before:
            changes.append(WebhookChange(webhook_id, Action.CREATE, before, (url,)))
        elif contains_url(before, url):
            changes.append(WebhookChange(webhook_id, Action.NONE, before, before))
        elif len(before) >= MAX_URLS_PER_WEBHOOK:
            changes.append(WebhookChange(webhook_id, Action.CONFLICT, before, before))
        else:
            changes.append(WebhookChange(webhook_id, Action.UPDATE, before, (*before, url)))
    return changes


def plan_remove(
    current: Mapping[str, Sequence[str]],
    url: str,
    webhook_ids: Sequence[str] = HANDLED_WEBHOOK_IDS,
) -> list[WebhookChange]:
    """Plan removing `url` from each id in `webhook_ids`, keeping every other URL.

    An id that keeps other URLs is updated to them. An id whose only URL is `url`
    is deleted. An id without `url` is left alone.
    """
    changes = []
    for webhook_id in webhook_ids:
        before = tuple(current.get(webhook_id, ()))
        after = tuple(other for other in before if not same_url(other, url))
        if after == before:
            action = Action.NONE
        elif after:
            action = Action.UPDATE
        else:
            action = Action.DELETE
        changes.append(WebhookChange(webhook_id, action, before, after))
    return changes


def unapplied_changes(
    current: Mapping[str, Sequence[str]], changes: Iterable[WebhookChange]
) -> list[WebhookChange]:
    """Return the changes whose id does not list exactly the planned URLs in `current`.

    The order of the URLs is ignored. Used after applying `changes` to confirm that
    Mailgun stored them.
    """
    mismatched = []
    for change in changes:
        listed = current.get(change.webhook_id, ())
        same_count = len(listed) == len(change.after)
        if not same_count or not all(contains_url(listed, url) for url in change.after):
            mismatched.append(change)
    return mismatched


def check_webhook_url(url: str, where: str) -> str | None:
    """Raise ConfigError unless `url` is a URL that Mailgun can post to.

    An https URL with a host passes. A plain-http URL passes only for a host in
    LOCAL_HOSTS, and the function then returns a warning for the caller to show.
    `where` names the setting in messages, for example "[environments.production]".
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(
            f"webhook_url {url!r} in {where} is not a valid URL; "
            "use the public https:// address of this service's webhook endpoint"
        )
    if scheme == "https":
        return None
    if parts.hostname.lower() in LOCAL_HOSTS:
        return (
            f"webhook_url {url!r} in {where} uses plain http; this is accepted only for "
            "localhost and 127.0.0.1, and Mailgun itself cannot reach such an address"
        )
    raise ConfigError(
        f"webhook_url {url!r} in {where} is not https; Mailgun would send the event data "
        "unencrypted, so use an https:// URL (plain http is accepted only for localhost "
        "and 127.0.0.1)"
    )


def _url_key(url: str) -> tuple[str, str, str, str, str]:
    parts = urlsplit(url.strip())
    return (parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query, parts.fragment)
