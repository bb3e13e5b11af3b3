"""Tests of `mgwebhook register` and `mgwebhook webhooks` against a fake Mailgun API.

The fake is a stateful respx mock, so a test can run several commands and see the
effect of earlier ones. Output is compared line by line with trailing spaces
removed, because rich pads every table cell to its column width.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import respx
from typer.testing import CliRunner, Result

from mgwebhook.cli.app import app
from mgwebhook.mailgun import client as client_module
from mgwebhook.mailgun.client import RetryPolicy
from tests.helpers import multipart_fields

API_KEY = "key-0123456789abcdef0123456789abcdef"
DOMAIN = "mg.example.com"
STAGING_DOMAIN = "mg-staging.example.com"
OURS = "https://hooks.example.com/v1/mailgun/webhook"
STAGING_URL = "https://staging.example.com/v1/mailgun/webhook"
FOREIGN = "https://crm.example.net/mailgun"
US_API = "https://api.mailgun.net"
EU_API = "https://api.eu.mailgun.net"
HANDLED = ("delivered", "permanent_fail", "temporary_fail", "complained")

CONFIG = f"""
[environments.production]
domain = "{DOMAIN}"
webhook_url = "{OURS}"

[environments.staging]
domain = "{STAGING_DOMAIN}"
webhook_url = "{STAGING_URL}"
region = "eu"
api_key_env = "MAILGUN_STAGING_API_KEY"

[environments.insecure]
domain = "{DOMAIN}"
webhook_url = "http://hooks.example.com/v1/mailgun/webhook"

[environments.local]
domain = "{DOMAIN}"
webhook_url = "http://127.0.0.1:8080/v1/mailgun/webhook"
"""

PRODUCTION_HEADING = [
    f"Mailgun webhooks of {DOMAIN} (environment production, region us)",
    f"Our URL: {OURS}",
]


class FakeMailgun:
    """Stateful stand-in for the webhooks API of one domain.

    It stores the URLs of each id and applies Mailgun's rules that the commands rely
    on: POST fails with 400 for an id that has URLs, PUT and DELETE fail with 404
    for an unknown id, and an id takes at most 3 URLs. Ids in `legacy` are listed
    in the older single-``url`` shape. `fail_next` queues error responses or
    exceptions that the next requests of a method get instead of being handled.
    """

    def __init__(
        self,
        router: respx.MockRouter,
        webhooks: dict[str, list[str]] | None = None,
        *,
        base_url: str = US_API,
        domain: str = DOMAIN,
        legacy: frozenset[str] = frozenset(),
    ) -> None:
        self.webhooks = {webhook_id: list(urls) for webhook_id, urls in (webhooks or {}).items()}
        self.legacy = set(legacy)
        # Each handled write as (method, webhook id, form fields in order).
        self.writes: list[tuple[str, str, list[tuple[str, str]]]] = []
        self.failures: dict[str, list[httpx.Response | Exception]] = {}
        collection = f"{base_url}/v3/domains/{domain}/webhooks"
        item = re.compile(re.escape(collection) + r"/(?P<webhook_id>[^/]+)$")
        self.list_route = router.get(collection).mock(side_effect=self._list)
        self.create_route = router.post(collection).mock(side_effect=self._create)
        router.put(url__regex=item).mock(side_effect=self._update)
        router.delete(url__regex=item).mock(side_effect=self._delete)

    def fail_next(self, method: str, *outcomes: httpx.Response | Exception) -> None:
        self.failures.setdefault(method, []).extend(outcomes)

    def _injected_failure(self, request: httpx.Request) -> httpx.Response | None:
        queue = self.failures.get(request.method)
        if not queue:
            return None
        outcome = queue.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _list(self, request: httpx.Request) -> httpx.Response:
        if failure := self._injected_failure(request):
            return failure
        listed = {
            webhook_id: {"url": urls[0]} if webhook_id in self.legacy else {"urls": urls}
            for webhook_id, urls in self.webhooks.items()
        }
        return httpx.Response(200, json={"webhooks": listed})

    def _create(self, request: httpx.Request) -> httpx.Response:
        if failure := self._injected_failure(request):
            return failure
        fields = multipart_fields(request)
        self.writes.append(("POST", dict(fields)["id"], fields))
        webhook_id = dict(fields)["id"]
        urls = [value for key, value in fields if key == "url"]
        if self.webhooks.get(webhook_id):
            return httpx.Response(400, json={"message": f"Webhook {webhook_id} already exists"})
        if not 1 <= len(urls) <= 3:
            return httpx.Response(400, json={"message": "A webhook takes 1 to 3 urls"})
        self.webhooks[webhook_id] = urls
        return httpx.Response(200, json={"message": "Webhook has been created"})

    def _update(self, request: httpx.Request, webhook_id: str) -> httpx.Response:
        if failure := self._injected_failure(request):
            return failure
        webhook_id = unquote(webhook_id)
        fields = multipart_fields(request)
        self.writes.append(("PUT", webhook_id, fields))
        urls = [value for key, value in fields if key == "url"]
        if webhook_id not in self.webhooks:
            return httpx.Response(404, json={"message": "Webhook not found"})
        if not 1 <= len(urls) <= 3:
            return httpx.Response(400, json={"message": "A webhook takes 1 to 3 urls"})
        self.webhooks[webhook_id] = urls
        self.legacy.discard(webhook_id)
        return httpx.Response(200, json={"message": "Webhook has been updated"})

    def _delete(self, request: httpx.Request, webhook_id: str) -> httpx.Response:
        if failure := self._injected_failure(request):
            return failure
        webhook_id = unquote(webhook_id)
        self.writes.append(("DELETE", webhook_id, []))
        if self.webhooks.pop(webhook_id, None) is None:
            return httpx.Response(404, json={"message": "Webhook not found"})
        return httpx.Response(200, json={"message": "Webhook has been deleted"})


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the retry count but wait 0 s between attempts."""
    monkeypatch.setattr(client_module, "DEFAULT_RETRY", RetryPolicy(base_delay=0.0, max_delay=0.0))


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """A respx router on which every unmocked request raises."""
    with respx.mock(assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mgwebhook.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def invoke(config_file: Path, *args: str, env: dict[str, str | None] | None = None) -> Result:
    """Run the mgwebhook CLI with a wide terminal and the production API key set."""
    environment: dict[str, str | None] = {
        "COLUMNS": "200",
        "MAILGUN_API_KEY": API_KEY,
        "MGWEBHOOK_CONFIG": None,
    }
    environment.update(env or {})
    return CliRunner().invoke(app, [*args, "--config", str(config_file)], env=environment)


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def register(
    config_file: Path,
    *options: str,
    env_name: str = "production",
    env: dict[str, str | None] | None = None,
) -> Result:
    return invoke(config_file, "register", "--env", env_name, *options, env=env)


def test_register_fresh_domain_creates_all(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router)

    result = register(config_file)

    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        *PRODUCTION_HEADING,
        "Webhook id       Before   After                                          Action",
        "─" * 79,
        f"delivered        -        {OURS}   create",
        f"permanent_fail   -        {OURS}   create",
        f"temporary_fail   -        {OURS}   create",
        f"complained       -        {OURS}   create",
        f"Registered {OURS} on {DOMAIN}: 4 created, 0 updated, 0 already set.",
    ]
    assert result.stderr == ""
    assert fake.writes == [
        ("POST", webhook_id, [("id", webhook_id), ("url", OURS)]) for webhook_id in HANDLED
    ]
    for call in fake.create_route.calls:
        assert call.request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert fake.webhooks == {webhook_id: [OURS] for webhook_id in HANDLED}


def test_register_in_sync_writes_nothing(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router, {webhook_id: [OURS] for webhook_id in HANDLED})

    result = register(config_file)

    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        *PRODUCTION_HEADING,
        "Webhook id       Before                                         After                                          Action",  # noqa: E501
        "─" * 117,
        f"delivered        {OURS}   {OURS}   none",
        f"permanent_fail   {OURS}   {OURS}   none",
        f"temporary_fail   {OURS}   {OURS}   none",
        f"complained       {OURS}   {OURS}   none",
        f"Nothing to change: 4 of 4 webhooks already post to {OURS}.",
    ]
    assert fake.writes == []
    assert fake.list_route.call_count == 1


def test_register_keeps_foreign_webhook(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router, {"delivered": [FOREIGN], "opened": [FOREIGN]})

    first = register(config_file)

    assert first.exit_code == 0, first.output
    assert lines(first.stdout) == [
        *PRODUCTION_HEADING,
        "Webhook id       Before                            After                                          Action",  # noqa: E501
        "─" * 104,
        f"delivered        {FOREIGN}   {FOREIGN}                update",
        f"                                                   {OURS}",
        f"permanent_fail   -                                 {OURS}   create",
        f"temporary_fail   -                                 {OURS}   create",
        f"complained       -                                 {OURS}   create",
        f"Registered {OURS} on {DOMAIN}: 3 created, 1 updated, 0 already set.",
    ]
    assert fake.writes[0] == ("PUT", "delivered", [("url", FOREIGN), ("url", OURS)])
    assert fake.webhooks == {
        "delivered": [FOREIGN, OURS],
        "permanent_fail": [OURS],
        "temporary_fail": [OURS],
        "complained": [OURS],
        "opened": [FOREIGN],
    }

    writes_after_first = len(fake.writes)
    second = register(config_file)

    assert second.exit_code == 0, second.output
    assert lines(second.stdout)[-1] == f"Nothing to change: 4 of 4 webhooks already post to {OURS}."
    assert len(fake.writes) == writes_after_first

    check = register(config_file, "--check")

    assert check.exit_code == 0, check.output
    assert lines(check.stdout)[-1] == f"In sync: 4 of 4 webhooks post to {OURS}."
    assert check.stderr == ""
    assert len(fake.writes) == writes_after_first


def test_register_full_webhook_conflict(router: respx.MockRouter, config_file: Path) -> None:
    others = [
        "https://a.example.net/hook",
        "https://b.example.net/hook",
        "https://c.example.net/hook",
    ]
    fake = FakeMailgun(router, {"complained": list(others)})

    result = register(config_file)

    assert result.exit_code == 1
    assert lines(result.stdout)[-4:] == [
        f"complained       {others[0]}   {others[0]}                     conflict",
        f"                 {others[1]}   {others[1]}",
        f"                 {others[2]}   {others[2]}",
        f"Registered {OURS} on {DOMAIN}: 3 created, 0 updated, 0 already set.",
    ]
    assert lines(result.stderr) == [
        f"Error: webhook 'complained' on {DOMAIN} already has the maximum of 3 URLs and none of "
        f"them is ours: {', '.join(others)}. It was left unchanged; remove one of these URLs in "
        "the Mailgun dashboard, then run register again"
    ]
    assert fake.webhooks["complained"] == others
    assert [write[1] for write in fake.writes] == ["delivered", "permanent_fail", "temporary_fail"]


def test_register_legacy_url_shape(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(
        router,
        {webhook_id: [OURS] for webhook_id in HANDLED} | {"permanent_fail": [FOREIGN]},
        legacy=frozenset({"permanent_fail", "delivered"}),
    )

    result = register(config_file)

    assert result.exit_code == 0, result.output
    assert fake.writes == [("PUT", "permanent_fail", [("url", FOREIGN), ("url", OURS)])]
    assert fake.webhooks["permanent_fail"] == [FOREIGN, OURS]
    assert f"delivered        {OURS}" in result.stdout


def test_register_eu_region(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router, base_url=EU_API, domain=STAGING_DOMAIN)

    result = register(
        config_file, env_name="staging", env={"MAILGUN_STAGING_API_KEY": "key-staging-0000"}
    )

    assert result.exit_code == 0, result.output
    assert lines(result.stdout)[:2] == [
        f"Mailgun webhooks of {STAGING_DOMAIN} (environment staging, region eu)",
        f"Our URL: {STAGING_URL}",
    ]
    assert fake.webhooks == {webhook_id: [STAGING_URL] for webhook_id in HANDLED}
    for call in router.calls:
        assert call.request.url.host == "api.eu.mailgun.net"


def test_register_dry_run_changes_nothing(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router, {"delivered": [FOREIGN]})

    result = register(config_file, "--dry-run")

    assert result.exit_code == 0, result.output
    assert lines(result.stdout)[-1] == "Dry run: 4 of 4 webhooks would change; nothing was changed."
    assert f"delivered        {FOREIGN}   {FOREIGN}                update" in lines(result.stdout)
    assert fake.writes == []
    assert fake.webhooks == {"delivered": [FOREIGN]}


def test_register_dry_run_in_sync(router: respx.MockRouter, config_file: Path) -> None:
    FakeMailgun(router, {webhook_id: [OURS] for webhook_id in HANDLED})

    result = register(config_file, "--dry-run")

    assert result.exit_code == 0, result.output
    assert lines(result.stdout)[-1] == (
        f"Dry run: nothing would change; 4 of 4 webhooks already post to {OURS}."
    )


def test_register_check_pending_exits_1(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router, {webhook_id: [OURS] for webhook_id in HANDLED[:3]})

    result = register(config_file, "--check")

    assert result.exit_code == 1
    assert lines(result.stdout)[-1] == (
        f"complained       -                                              {OURS}   create"
    )
    assert lines(result.stderr) == [
        f"Error: 1 of 4 webhooks do not post to {OURS} yet; run "
        "`mgwebhook register --env production` to add it"
    ]
    assert fake.writes == []


def test_register_check_in_sync_exits_0(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router, {webhook_id: [FOREIGN, OURS] for webhook_id in HANDLED})

    result = register(config_file, "--check")

    assert result.exit_code == 0, result.output
    assert lines(result.stdout)[-1] == f"In sync: 4 of 4 webhooks post to {OURS}."
    assert fake.writes == []


def test_register_missing_api_key(router: respx.MockRouter, config_file: Path) -> None:
    result = register(config_file, env={"MAILGUN_API_KEY": None})

    assert result.exit_code == 1
    assert result.stdout == ""
    assert lines(result.stderr) == [
        f"Error: MAILGUN_API_KEY is not set; export the private API key of the Mailgun account "
        f"that owns {DOMAIN} in it (not the webhook signing key), or set api_key_env in "
        "[environments.production] to the variable that holds it"
    ]
    assert len(router.calls) == 0


def test_register_key_rejected(router: respx.MockRouter, config_file: Path) -> None:
    router.get(f"{US_API}/v3/domains/{DOMAIN}/webhooks").respond(401, text="Forbidden")

    result = register(config_file)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert lines(result.stderr) == [
        f"Error: GET {US_API}/v3/domains/{DOMAIN}/webhooks failed with HTTP 401 (Forbidden). "
        "Mailgun rejected the API key in MAILGUN_API_KEY. Check that it is the private API key "
        f"(not the webhook signing key) of the account that owns {DOMAIN} in the US region."
    ]
    assert API_KEY not in result.output
    assert len(router.calls) == 1


def test_register_domain_not_found(router: respx.MockRouter, config_file: Path) -> None:
    router.get(f"{US_API}/v3/domains/{DOMAIN}/webhooks").respond(
        404, json={"message": "Domain not found"}
    )

    result = register(config_file)

    assert result.exit_code == 1
    assert lines(result.stderr) == [
        f"Error: GET {US_API}/v3/domains/{DOMAIN}/webhooks failed with HTTP 404 (Domain not "
        f"found). Domain '{DOMAIN}' was not found in the US region ({US_API}). A domain exists "
        'in one region only, so if it was created in the EU region, set region = "eu" in '
        "[environments.production]; otherwise check the domain name."
    ]


def test_register_rate_limited_then_succeeds(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router, {webhook_id: [OURS] for webhook_id in HANDLED})
    fake.fail_next(
        "GET", httpx.Response(429, json={"message": "Too many requests", "retry-seconds": 0})
    )

    result = register(config_file)

    assert result.exit_code == 0, result.output
    assert fake.list_route.call_count == 2
    assert lines(result.stdout)[-1] == f"Nothing to change: 4 of 4 webhooks already post to {OURS}."


def test_register_server_error_then_succeeds(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router)
    fake.fail_next("POST", httpx.Response(500, json={"message": "Internal Server Error"}))

    result = register(config_file)

    assert result.exit_code == 0, result.output
    assert fake.create_route.call_count == 5
    assert fake.webhooks == {webhook_id: [OURS] for webhook_id in HANDLED}


def test_register_timeout_then_succeeds(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router)
    fake.fail_next("GET", httpx.ReadTimeout("read timed out"))

    result = register(config_file)

    assert result.exit_code == 0, result.output
    assert fake.list_route.call_count == 3
    assert fake.webhooks == {webhook_id: [OURS] for webhook_id in HANDLED}


def test_register_timeout_exhausts_retries(router: respx.MockRouter, config_file: Path) -> None:
    route = router.get(f"{US_API}/v3/domains/{DOMAIN}/webhooks").mock(
        side_effect=httpx.ConnectTimeout("connect timed out")
    )

    result = register(config_file)

    assert result.exit_code == 1
    assert route.call_count == 4
    assert lines(result.stderr) == [
        f"Error: GET {US_API}/v3/domains/{DOMAIN}/webhooks timed out on 4 attempts "
        f"(ConnectTimeout). Check the network connection to {US_API} and try again."
    ]


def test_register_unknown_environment(router: respx.MockRouter, config_file: Path) -> None:
    result = register(config_file, env_name="prod")

    assert result.exit_code == 1
    assert lines(result.stderr) == [
        "Error: environment 'prod' is not in the configuration (known: insecure, local, "
        "production, staging); add an [environments.prod] table to the config file"
    ]
    assert len(router.calls) == 0


def test_register_rejects_public_http(router: respx.MockRouter, config_file: Path) -> None:
    result = register(config_file, env_name="insecure")

    assert result.exit_code == 1
    assert lines(result.stderr) == [
        "Error: webhook_url 'http://hooks.example.com/v1/mailgun/webhook' in "
        "[environments.insecure] is not https; Mailgun would send the event data unencrypted, "
        "so use an https:// URL (plain http is accepted only for localhost and 127.0.0.1)"
    ]
    assert len(router.calls) == 0


def test_register_local_http_warns(router: respx.MockRouter, config_file: Path) -> None:
    local_url = "http://127.0.0.1:8080/v1/mailgun/webhook"
    fake = FakeMailgun(router)

    result = register(config_file, env_name="local")

    assert result.exit_code == 0, result.output
    assert lines(result.stderr) == [
        f"Warning: webhook_url '{local_url}' in [environments.local] uses plain http; this is "
        "accepted only for localhost and 127.0.0.1, and Mailgun itself cannot reach such an "
        "address"
    ]
    assert fake.webhooks == {webhook_id: [local_url] for webhook_id in HANDLED}


def test_register_reports_unstored_change(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router, {webhook_id: [OURS] for webhook_id in HANDLED[1:]})
    # Mailgun responds with 200 to the POST, but the listing afterwards still lacks the id.
    fake.fail_next("POST", httpx.Response(200, json={"message": "Webhook has been created"}))

    result = register(config_file)

    assert result.exit_code == 1
    assert lines(result.stderr) == [
        f"Error: Mailgun accepted the changes but does not list {OURS} for webhook 'delivered'; "
        "inspect it with `mgwebhook webhooks list --env production` and run the command again"
    ]


def test_webhooks_list_marks_ours(router: respx.MockRouter, config_file: Path) -> None:
    FakeMailgun(
        router,
        {"delivered": [FOREIGN, OURS], "opened": [FOREIGN], "complained": [OURS]},
        legacy=frozenset({"complained"}),
    )

    result = invoke(config_file, "webhooks", "list", "--env", "production")

    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        *PRODUCTION_HEADING,
        "Webhook id   URL                                            Ours",
        "─" * 64,
        f"complained   {OURS}   yes",
        f"delivered    {FOREIGN}",
        f"delivered    {OURS}   yes",
        f"opened       {FOREIGN}",
        "Our URL is missing from 2 of 4 handled webhooks (permanent_fail, temporary_fail); "
        "run `mgwebhook register --env production` to add it.",
    ]


def test_webhooks_list_empty_domain(router: respx.MockRouter, config_file: Path) -> None:
    FakeMailgun(router)

    result = invoke(config_file, "webhooks", "list", "--env", "production")

    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        *PRODUCTION_HEADING,
        "No webhooks are configured on this domain.",
        "Our URL is missing from 4 of 4 handled webhooks (delivered, permanent_fail, "
        "temporary_fail, complained); run `mgwebhook register --env production` to add it.",
    ]


def test_webhooks_remove_keeps_others(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(
        router,
        {
            "delivered": [FOREIGN, OURS],
            "permanent_fail": [OURS],
            "temporary_fail": [FOREIGN],
            "opened": [OURS],
        },
    )

    result = invoke(config_file, "webhooks", "remove", "--env", "production")

    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        *PRODUCTION_HEADING,
        "Webhook id       Before                                         After                             Action",  # noqa: E501
        "─" * 104,
        f"delivered        {FOREIGN}                {FOREIGN}   update",
        f"                 {OURS}",
        f"permanent_fail   {OURS}   -                                 delete",
        f"temporary_fail   {FOREIGN}                {FOREIGN}   none",
        "complained       -                                              -                                 none",  # noqa: E501
        f"Removed {OURS} from {DOMAIN}: 1 updated with the other URLs kept, 1 deleted because "
        "ours was their only URL.",
    ]
    assert fake.writes == [
        ("PUT", "delivered", [("url", FOREIGN)]),
        ("DELETE", "permanent_fail", []),
    ]
    assert fake.webhooks == {
        "delivered": [FOREIGN],
        "temporary_fail": [FOREIGN],
        "opened": [OURS],
    }


def test_webhooks_remove_dry_run(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router, {"delivered": [FOREIGN, OURS], "complained": [OURS]})

    result = invoke(config_file, "webhooks", "remove", "--env", "production", "--dry-run")

    assert result.exit_code == 0, result.output
    assert lines(result.stdout)[-1] == "Dry run: 2 of 4 webhooks would change; nothing was changed."
    assert fake.writes == []


def test_webhooks_remove_nothing_to_do(router: respx.MockRouter, config_file: Path) -> None:
    fake = FakeMailgun(router, {"delivered": [FOREIGN]})

    result = invoke(config_file, "webhooks", "remove", "--env", "production")

    assert result.exit_code == 0, result.output
    assert lines(result.stdout)[-1] == f"Nothing to remove: none of the 4 webhooks posts to {OURS}."
    assert fake.writes == []
