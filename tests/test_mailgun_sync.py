"""Tests of the pure webhook planning in mgwebhook.mailgun.sync."""

from __future__ import annotations

import pytest

from mgwebhook.errors import ConfigError
from mgwebhook.mailgun.sync import (
    HANDLED_WEBHOOK_IDS,
    Action,
    WebhookChange,
    check_webhook_url,
    plan_register,
    plan_remove,
    same_url,
    unapplied_changes,
)

OURS = "https://hooks.example.com/v1/mailgun/webhook"
FOREIGN = "https://crm.example.net/mailgun"
OTHERS = ("https://a.example.net/hook", "https://b.example.net/hook", "https://c.example.net/hook")


def by_id(changes: list[WebhookChange]) -> dict[str, WebhookChange]:
    return {change.webhook_id: change for change in changes}


def test_handled_ids_are_the_four_event_types() -> None:
    assert HANDLED_WEBHOOK_IDS == ("delivered", "permanent_fail", "temporary_fail", "complained")


def test_register_plan_fresh_domain_creates_all() -> None:
    changes = plan_register({}, OURS)

    assert [change.webhook_id for change in changes] == list(HANDLED_WEBHOOK_IDS)
    for change in changes:
        assert change.action is Action.CREATE
        assert change.before == ()
        assert change.after == (OURS,)
        assert change.changes_anything


def test_register_plan_in_sync_changes_nothing() -> None:
    current = {webhook_id: [OURS] for webhook_id in HANDLED_WEBHOOK_IDS}

    for change in plan_register(current, OURS):
        assert change.action is Action.NONE
        assert change.after == (OURS,)
        assert not change.changes_anything


def test_register_plan_keeps_foreign_url() -> None:
    changes = by_id(plan_register({"delivered": [FOREIGN]}, OURS))

    assert changes["delivered"].action is Action.UPDATE
    assert changes["delivered"].before == (FOREIGN,)
    assert changes["delivered"].after == (FOREIGN, OURS)
    assert changes["complained"].action is Action.CREATE


def test_register_plan_ours_among_others() -> None:
    changes = by_id(plan_register({"delivered": [FOREIGN, OURS, OTHERS[0]]}, OURS))

    assert changes["delivered"].action is Action.NONE
    assert changes["delivered"].after == (FOREIGN, OURS, OTHERS[0])


def test_register_plan_full_id_is_conflict() -> None:
    changes = by_id(plan_register({"permanent_fail": list(OTHERS)}, OURS))

    assert changes["permanent_fail"].action is Action.CONFLICT
    assert changes["permanent_fail"].after == OTHERS
    assert not changes["permanent_fail"].changes_anything
    assert changes["delivered"].action is Action.CREATE


def test_register_plan_two_others_gets_third() -> None:
    changes = by_id(plan_register({"temporary_fail": list(OTHERS[:2])}, OURS))

    assert changes["temporary_fail"].action is Action.UPDATE
    assert changes["temporary_fail"].after == (*OTHERS[:2], OURS)


def test_register_plan_ignores_unhandled_ids() -> None:
    changes = plan_register({"opened": [FOREIGN], "clicked": [OURS]}, OURS)

    assert {change.webhook_id for change in changes} == set(HANDLED_WEBHOOK_IDS)


def test_register_plan_empty_url_list_creates() -> None:
    changes = by_id(plan_register({"delivered": []}, OURS))

    assert changes["delivered"].action is Action.CREATE


def test_register_plan_matches_host_case_insensitively() -> None:
    listed = "HTTPS://Hooks.Example.com/v1/mailgun/webhook"

    changes = by_id(plan_register({"delivered": [listed]}, OURS))

    assert changes["delivered"].action is Action.NONE


def test_same_url_compares_path_exactly() -> None:
    assert same_url(OURS, "https://HOOKS.example.com/v1/mailgun/webhook")
    assert not same_url(OURS, "https://hooks.example.com/v1/Mailgun/webhook")
    assert not same_url(OURS, OURS + "/")
    assert not same_url(OURS, "http://hooks.example.com/v1/mailgun/webhook")


def test_remove_plan_keeps_other_urls() -> None:
    changes = by_id(plan_remove({"delivered": [FOREIGN, OURS]}, OURS))

    assert changes["delivered"].action is Action.UPDATE
    assert changes["delivered"].before == (FOREIGN, OURS)
    assert changes["delivered"].after == (FOREIGN,)


def test_remove_plan_deletes_when_ours_only() -> None:
    changes = by_id(plan_remove({"complained": [OURS]}, OURS))

    assert changes["complained"].action is Action.DELETE
    assert changes["complained"].after == ()
    assert changes["complained"].changes_anything


def test_remove_plan_leaves_foreign_only_ids() -> None:
    changes = by_id(plan_remove({"delivered": [FOREIGN]}, OURS))

    assert changes["delivered"].action is Action.NONE
    assert changes["delivered"].after == (FOREIGN,)
    assert changes["permanent_fail"].action is Action.NONE
    assert changes["permanent_fail"].before == ()


def test_unapplied_changes_ignores_order() -> None:
    changes = plan_register({"delivered": [FOREIGN]}, OURS)
    current = {webhook_id: [OURS] for webhook_id in HANDLED_WEBHOOK_IDS}
    current["delivered"] = [OURS, FOREIGN]

    assert unapplied_changes(current, changes) == []


def test_unapplied_changes_reports_missing_url() -> None:
    changes = plan_register({"delivered": [FOREIGN]}, OURS)
    current = {webhook_id: [OURS] for webhook_id in HANDLED_WEBHOOK_IDS}
    current["delivered"] = [FOREIGN]

    mismatched = unapplied_changes(current, changes)

    assert [change.webhook_id for change in mismatched] == ["delivered"]


def test_unapplied_changes_after_delete() -> None:
    changes = plan_remove({"delivered": [OURS]}, OURS)

    assert unapplied_changes({}, changes) == []
    assert len(unapplied_changes({"delivered": [OURS]}, changes)) == 1


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/v1/mailgun/webhook",
        "https://hooks.example.com:8443/hook?source=mailgun",
    ],
)
def test_webhook_url_https_accepted(url: str) -> None:
    assert check_webhook_url(url, "[environments.production]") is None


@pytest.mark.parametrize(
    "url", ["http://localhost:8080/v1/mailgun/webhook", "http://127.0.0.1/v1/mailgun/webhook"]
)
def test_webhook_url_local_http_warns(url: str) -> None:
    warning = check_webhook_url(url, "[environments.dev]")

    assert warning is not None
    assert url in warning
    assert "plain http" in warning


def test_webhook_url_public_http_rejected() -> None:
    url = "http://hooks.example.com/v1/mailgun/webhook"

    with pytest.raises(ConfigError) as raised:
        check_webhook_url(url, "[environments.production]")

    message = str(raised.value)
    assert repr(url) in message
    assert "[environments.production]" in message
    assert "is not https" in message


@pytest.mark.parametrize(
    "url", ["hooks.example.com/webhook", "ftp://hooks.example.com/", "https://"]
)
def test_webhook_url_invalid_rejected(url: str) -> None:
    with pytest.raises(ConfigError, match="is not a valid URL"):
        check_webhook_url(url, "[environments.production]")
