"""Tests of MailgunClient against respx mocks of the Mailgun webhooks API."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from mgwebhook.config import EnvironmentSettings
from mgwebhook.errors import ConfigError, MailgunApiError
from mgwebhook.mailgun.client import MailgunClient, RetryPolicy, base_url_for, read_api_key
from mgwebhook.mailgun.sync import plan_register
from tests.helpers import multipart_fields

API_KEY = "key-0123456789abcdef0123456789abcdef"
DOMAIN = "mg.example.com"
OURS = "https://hooks.example.com/v1/mailgun/webhook"
FOREIGN = "https://crm.example.net/mailgun"
US_API = "https://api.mailgun.net"
EU_API = "https://api.eu.mailgun.net"
COLLECTION = f"/v3/domains/{DOMAIN}/webhooks"

ENVIRONMENT = EnvironmentSettings(name="production", domain=DOMAIN, webhook_url=OURS)


class RecordingSleep:
    """Stand-in for asyncio.sleep that records the requested waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def mailgun() -> Iterator[respx.MockRouter]:
    """A respx router for the US API; requests to any other URL raise."""
    with respx.mock(base_url=US_API, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def mailgun_client(sleep: RecordingSleep) -> AsyncIterator[MailgunClient]:
    async with MailgunClient.for_environment(ENVIRONMENT, api_key=API_KEY, sleep=sleep) as client:
        yield client


async def test_list_webhooks_sends_basic_auth(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    route = mailgun.get(COLLECTION).respond(200, json={"webhooks": {}})

    assert await mailgun_client.list_webhooks() == {}

    request = route.calls.last.request
    expected = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert str(request.url) == f"{US_API}{COLLECTION}"


async def test_list_webhooks_normalises_legacy_url(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    body = {
        "webhooks": {
            "delivered": {"urls": [FOREIGN, OURS]},
            "complained": {"url": FOREIGN},
            "opened": {"urls": []},
        }
    }
    mailgun.get(COLLECTION).respond(200, json=body)

    webhooks = await mailgun_client.list_webhooks()

    assert webhooks == {"delivered": [FOREIGN, OURS], "complained": [FOREIGN], "opened": []}


async def test_list_webhooks_null_means_none(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    mailgun.get(COLLECTION).respond(200, json={"webhooks": None})

    assert await mailgun_client.list_webhooks() == {}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"items": []}, "no 'webhooks' key"),
        ({"webhooks": ["delivered"]}, "'webhooks' is not an object"),
        ({"webhooks": {"delivered": {"urls": [1]}}}, "webhook 'delivered' has no 'urls' list"),
    ],
)
async def test_list_webhooks_unexpected_body(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, body: object, problem: str
) -> None:
    mailgun.get(COLLECTION).respond(200, json=body)

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.list_webhooks()

    assert problem in str(raised.value)
    assert raised.value.status == 200


async def test_list_webhooks_html_body(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    mailgun.get(COLLECTION).respond(200, text="<html>login</html>")

    with pytest.raises(MailgunApiError, match="because it is not JSON"):
        await mailgun_client.list_webhooks()


async def test_create_webhook_posts_multipart_form(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    route = mailgun.post(COLLECTION).respond(200, json={"message": "Webhook has been created"})

    await mailgun_client.create_webhook("delivered", [FOREIGN, OURS])

    request = route.calls.last.request
    assert multipart_fields(request) == [("id", "delivered"), ("url", FOREIGN), ("url", OURS)]


async def test_update_webhook_puts_multipart_form(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    route = mailgun.put(f"{COLLECTION}/permanent_fail").respond(200, json={"message": "updated"})

    await mailgun_client.update_webhook("permanent_fail", [FOREIGN, OURS])

    request = route.calls.last.request
    assert multipart_fields(request) == [("url", FOREIGN), ("url", OURS)]


async def test_delete_webhook_sends_delete(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    route = mailgun.delete(f"{COLLECTION}/complained").respond(200, json={"message": "deleted"})

    await mailgun_client.delete_webhook("complained")

    assert route.call_count == 1


async def test_apply_change_sends_planned_request(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    create = mailgun.post(COLLECTION).respond(200, json={})
    update = mailgun.put(f"{COLLECTION}/delivered").respond(200, json={})
    current = {"delivered": [FOREIGN], "permanent_fail": [OURS]}

    for change in plan_register(current, OURS):
        await mailgun_client.apply_change(change)

    assert update.call_count == 1
    assert multipart_fields(update.calls.last.request) == [("url", FOREIGN), ("url", OURS)]
    created = [dict(multipart_fields(call.request))["id"] for call in create.calls]
    assert created == ["temporary_fail", "complained"]


@pytest.mark.parametrize(
    "urls", [[], ["https://1.example/", "https://2.example/", "https://3.example/", OURS]]
)
async def test_webhook_url_count_checked(mailgun_client: MailgunClient, urls: list[str]) -> None:
    with pytest.raises(ValueError, match="takes 1 to 3 URLs"):
        await mailgun_client.update_webhook("delivered", urls)


async def test_eu_region_uses_eu_api(sleep: RecordingSleep) -> None:
    environment = EnvironmentSettings(
        name="production", domain=DOMAIN, webhook_url=OURS, region="eu"
    )
    with respx.mock(base_url=EU_API) as router:
        route = router.get(COLLECTION).respond(200, json={"webhooks": {}})
        async with MailgunClient.for_environment(
            environment, api_key=API_KEY, sleep=sleep
        ) as client:
            await client.list_webhooks()

    assert str(route.calls.last.request.url) == f"{EU_API}{COLLECTION}"


def test_base_url_override_strips_slash() -> None:
    environment = EnvironmentSettings(
        name="dev",
        domain=DOMAIN,
        webhook_url=OURS,
        region="eu",
        api_base_url="http://127.0.0.1:9000/",
    )

    assert base_url_for(environment) == "http://127.0.0.1:9000"


def test_base_url_override_invalid() -> None:
    environment = EnvironmentSettings(
        name="dev", domain=DOMAIN, webhook_url=OURS, api_base_url="api.mailgun.net"
    )

    with pytest.raises(
        ConfigError, match=r"api_base_url 'api.mailgun.net' in \[environments.dev\]"
    ):
        base_url_for(environment)


def test_base_url_override_with_version() -> None:
    environment = EnvironmentSettings(
        name="dev", domain=DOMAIN, webhook_url=OURS, api_base_url="https://api.mailgun.net/v3/"
    )

    with pytest.raises(ConfigError, match="ends with /v3, which mgwebhook adds itself"):
        base_url_for(environment)


def test_read_api_key_missing_names_variable() -> None:
    environment = EnvironmentSettings(
        name="staging", domain=DOMAIN, webhook_url=OURS, api_key_env="MAILGUN_STAGING_KEY"
    )

    with pytest.raises(ConfigError) as raised:
        read_api_key(environment, environ={"MAILGUN_API_KEY": API_KEY})

    message = str(raised.value)
    assert message.startswith("MAILGUN_STAGING_KEY is not set")
    assert "[environments.staging]" in message


def test_read_api_key_from_named_variable() -> None:
    assert read_api_key(ENVIRONMENT, environ={"MAILGUN_API_KEY": f" {API_KEY}\n"}) == API_KEY


async def test_unauthorized_plain_text(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, sleep: RecordingSleep
) -> None:
    route = mailgun.get(COLLECTION).respond(401, text="Forbidden")

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.list_webhooks()

    error = raised.value
    assert error.status == 401
    assert error.body_message == "Forbidden"
    assert error.method == "GET"
    assert error.url == f"{US_API}{COLLECTION}"
    assert str(error) == (
        f"GET {US_API}{COLLECTION} failed with HTTP 401 (Forbidden). Mailgun rejected the "
        "API key in MAILGUN_API_KEY. Check that it is the private API key (not the webhook "
        f"signing key) of the account that owns {DOMAIN} in the US region."
    )
    assert API_KEY not in str(error)
    assert route.call_count == 1
    assert sleep.waits == []


async def test_domain_not_found_suggests_eu(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    mailgun.get(COLLECTION).respond(404, json={"message": "Domain not found"})

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.list_webhooks()

    assert raised.value.status == 404
    assert raised.value.body_message == "Domain not found"
    assert str(raised.value) == (
        f"GET {US_API}{COLLECTION} failed with HTTP 404 (Domain not found). Domain "
        f"'{DOMAIN}' was not found in the US region ({US_API}). A domain exists in one "
        'region only, so if it was created in the EU region, set region = "eu" in '
        "[environments.production]; otherwise check the domain name."
    )


async def test_domain_not_found_suggests_us(sleep: RecordingSleep) -> None:
    environment = EnvironmentSettings(name="eu", domain=DOMAIN, webhook_url=OURS, region="eu")
    with respx.mock(base_url=EU_API) as router:
        router.get(COLLECTION).respond(404, json={"message": "Domain not found"})
        async with MailgunClient.for_environment(
            environment, api_key=API_KEY, sleep=sleep
        ) as client:
            with pytest.raises(MailgunApiError) as raised:
                await client.list_webhooks()

    message = str(raised.value)
    assert f"was not found in the EU region ({EU_API})" in message
    assert 'set region = "us" in [environments.eu]' in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"message": "url is invalid"}, "url is invalid"),
        ({"Reason": "Bad webhook id"}, "Bad webhook id"),
        ({"Description": "too many urls"}, "too many urls"),
    ],
)
async def test_error_body_shapes(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, body: dict[str, str], expected: str
) -> None:
    route = mailgun.put(f"{COLLECTION}/delivered").respond(400, json=body)

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.update_webhook("delivered", [OURS])

    assert raised.value.body_message == expected
    assert raised.value.status == 400
    assert str(raised.value) == (
        f"PUT {US_API}{COLLECTION}/delivered failed with HTTP 400 ({expected})."
    )
    assert route.call_count == 1


async def test_rate_limit_then_success(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, sleep: RecordingSleep
) -> None:
    route = mailgun.get(COLLECTION)
    route.side_effect = [
        httpx.Response(429, json={"message": "Too many requests", "retry-seconds": 7}),
        httpx.Response(200, json={"webhooks": {"delivered": {"urls": [OURS]}}}),
    ]

    assert await mailgun_client.list_webhooks() == {"delivered": [OURS]}
    assert route.call_count == 2
    assert sleep.waits == [7.0]


async def test_rate_limit_retry_after_header(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, sleep: RecordingSleep
) -> None:
    route = mailgun.get(COLLECTION)
    route.side_effect = [
        httpx.Response(429, headers={"Retry-After": "3"}, text="slow down"),
        httpx.Response(200, json={"webhooks": {}}),
    ]

    await mailgun_client.list_webhooks()

    assert sleep.waits == [3.0]


async def test_rate_limit_long_wait_fails_at_once(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, sleep: RecordingSleep
) -> None:
    route = mailgun.get(COLLECTION).respond(
        429, json={"message": "Too many requests", "retry-seconds": 600}
    )

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.list_webhooks()

    assert raised.value.status == 429
    assert "try again in 600 seconds" in str(raised.value)
    assert route.call_count == 1
    assert sleep.waits == []


async def test_server_error_then_success(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, sleep: RecordingSleep
) -> None:
    route = mailgun.post(COLLECTION)
    route.side_effect = [
        httpx.Response(500, json={"message": "Internal error"}),
        httpx.Response(200, json={"message": "Webhook has been created"}),
    ]

    await mailgun_client.create_webhook("delivered", [OURS])

    assert route.call_count == 2
    assert sleep.waits == [1.0]
    for call in route.calls:
        assert multipart_fields(call.request) == [("id", "delivered"), ("url", OURS)]


async def test_server_error_exhausts_retries(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, sleep: RecordingSleep
) -> None:
    route = mailgun.get(COLLECTION).respond(503, text="Service Unavailable")

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.list_webhooks()

    assert route.call_count == 4
    assert sleep.waits == [1.0, 2.0, 4.0]
    assert raised.value.status == 503
    assert str(raised.value) == (
        f"GET {US_API}{COLLECTION} failed with HTTP 503 (Service Unavailable). "
        "Mailgun failed on 4 attempts; try again later."
    )


async def test_backoff_capped_by_max_delay(mailgun: respx.MockRouter) -> None:
    sleep = RecordingSleep()
    retry = RetryPolicy(max_attempts=6, base_delay=2.0, max_delay=10.0)
    mailgun.get(COLLECTION).respond(502)
    async with MailgunClient.for_environment(
        ENVIRONMENT, api_key=API_KEY, retry=retry, sleep=sleep
    ) as client:
        with pytest.raises(MailgunApiError):
            await client.list_webhooks()

    assert sleep.waits == [2.0, 4.0, 8.0, 10.0, 10.0]


async def test_timeout_then_success(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, sleep: RecordingSleep
) -> None:
    route = mailgun.get(COLLECTION)
    route.side_effect = [
        httpx.ReadTimeout("read timed out"),
        httpx.Response(200, json={"webhooks": {"delivered": {"urls": [OURS]}}}),
    ]

    assert await mailgun_client.list_webhooks() == {"delivered": [OURS]}
    assert route.call_count == 2
    assert sleep.waits == [1.0]


async def test_timeout_exhausts_retries(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, sleep: RecordingSleep
) -> None:
    route = mailgun.get(COLLECTION).mock(side_effect=httpx.ConnectTimeout("connect timed out"))

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.list_webhooks()

    assert route.call_count == 4
    assert sleep.waits == [1.0, 2.0, 4.0]
    assert raised.value.status is None
    assert str(raised.value) == (
        f"GET {US_API}{COLLECTION} timed out on 4 attempts (ConnectTimeout). "
        f"Check the network connection to {US_API} and try again."
    )


async def test_client_error_not_retried(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, sleep: RecordingSleep
) -> None:
    route = mailgun.get(COLLECTION).respond(403, json={"message": "Forbidden"})

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.list_webhooks()

    assert route.call_count == 1
    assert sleep.waits == []
    assert "lacks permission to manage the webhooks of mg.example.com" in str(raised.value)


async def test_create_after_lost_response_succeeds(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient, sleep: RecordingSleep
) -> None:
    # Mailgun stores the first POST, but its response times out. The retry then gets
    # 400 because the id exists, and the listing shows the requested URL.
    post = mailgun.post(COLLECTION)
    post.side_effect = [
        httpx.ReadTimeout("read timed out"),
        httpx.Response(400, json={"message": "Webhook already exists"}),
    ]
    mailgun.get(COLLECTION).respond(200, json={"webhooks": {"delivered": {"urls": [OURS]}}})

    await mailgun_client.create_webhook("delivered", [OURS])

    assert post.call_count == 2
    assert sleep.waits == [1.0]


async def test_create_race_names_existing_urls(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    mailgun.post(COLLECTION).respond(400, json={"message": "Webhook already exists"})
    mailgun.get(COLLECTION).respond(200, json={"webhooks": {"delivered": {"urls": [FOREIGN]}}})

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.create_webhook("delivered", [OURS])

    assert raised.value.status == 400
    assert raised.value.body_message == "Webhook already exists"
    assert str(raised.value).endswith(
        f"Webhook 'delivered' was created by someone else meanwhile and now has {FOREIGN}; "
        "run the command again to merge with them."
    )


async def test_create_rejected_id_absent(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    mailgun.post(COLLECTION).respond(400, json={"message": "url is invalid"})
    mailgun.get(COLLECTION).respond(200, json={"webhooks": {}})

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.create_webhook("delivered", [OURS])

    assert str(raised.value) == f"POST {US_API}{COLLECTION} failed with HTTP 400 (url is invalid)."


async def test_delete_already_gone_succeeds(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    mailgun.delete(f"{COLLECTION}/complained").respond(404, json={"message": "Webhook not found"})
    mailgun.get(COLLECTION).respond(200, json={"webhooks": {"delivered": {"urls": [FOREIGN]}}})

    await mailgun_client.delete_webhook("complained")


async def test_delete_not_found_but_listed(
    mailgun: respx.MockRouter, mailgun_client: MailgunClient
) -> None:
    mailgun.delete(f"{COLLECTION}/complained").respond(404, json={"message": "Not found"})
    mailgun.get(COLLECTION).respond(200, json={"webhooks": {"complained": {"urls": [OURS]}}})

    with pytest.raises(MailgunApiError) as raised:
        await mailgun_client.delete_webhook("complained")

    assert raised.value.status == 404
    assert "run the command again" in str(raised.value)


async def test_for_environment_reads_key(
    mailgun: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILGUN_API_KEY", API_KEY)
    route = mailgun.get(COLLECTION).respond(200, json={"webhooks": {}})

    async with MailgunClient.for_environment(ENVIRONMENT) as client:
        await client.list_webhooks()

    expected = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    assert route.calls.last.request.headers["Authorization"] == f"Basic {expected}"


async def test_for_environment_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILGUN_API_KEY", raising=False)

    with pytest.raises(ConfigError, match="^MAILGUN_API_KEY is not set"):
        async with MailgunClient.for_environment(ENVIRONMENT):
            pass
