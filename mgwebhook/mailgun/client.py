"""Async client for the Mailgun domain webhooks API (v3).

The API authenticates with HTTP basic auth: user ``api`` and the private API key as
the password. Requests that fail with 429, a 5xx status, a timeout or a network
error are retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from mgwebhook.config import EnvironmentSettings
from mgwebhook.errors import ConfigError, MailgunApiError
from mgwebhook.mailgun.sync import MAX_URLS_PER_WEBHOOK, Action, WebhookChange, contains_url

logger = logging.getLogger(__name__)

REGION_BASE_URLS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

# JSON keys that contain the text of a Mailgun error body, tried in this order.
BODY_MESSAGE_KEYS = ("message", "Reason", "Description", "error")

# Maximum length of a response body quoted in an error message.
MAX_QUOTED_BODY = 300

# Transport errors after which the same request may succeed. Others, such as an
# unsupported URL scheme, fail at once.
RETRYABLE_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

SleepFunction = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry limits for responses 429 and 5xx and for timeouts and network errors."""

    # Total number of attempts per request, the first one included.
    max_attempts: int = 4
    # Retry n (counting from 1) waits base_delay * 2 ** (n - 1) seconds, at most max_delay.
    base_delay: float = 1.0
    max_delay: float = 30.0
    # A 429 whose retry-seconds or Retry-After exceeds this many seconds fails at once.
    max_retry_after: float = 60.0

    def backoff(self, retry_number: int) -> float:
        """Return the wait in seconds before retry `retry_number` (counting from 1)."""
        return float(min(self.max_delay, self.base_delay * 2 ** (retry_number - 1)))


# Read at call time by MailgunClient.for_environment, so tests may replace it.
DEFAULT_RETRY = RetryPolicy()


def base_url_for(environment: EnvironmentSettings) -> str:
    """Return the API base URL: api_base_url if set, else the URL of the region."""
    if environment.api_base_url is None:
        return REGION_BASE_URLS[environment.region]
    parts = urlsplit(environment.api_base_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(
            f"api_base_url {environment.api_base_url!r} in [environments.{environment.name}] "
            f"is not an http(s) URL; remove it to use the {environment.region} region's API "
            f"({REGION_BASE_URLS[environment.region]})"
        )
    if parts.path.rstrip("/").endswith("/v3"):
        raise ConfigError(
            f"api_base_url {environment.api_base_url!r} in [environments.{environment.name}] "
            "ends with /v3, which mgwebhook adds itself; remove the /v3"
        )
    return environment.api_base_url.rstrip("/")


def read_api_key(environment: EnvironmentSettings, environ: Mapping[str, str] | None = None) -> str:
    """Return the private API key from the variable named by `api_key_env`.

    Raises ConfigError naming the variable when it is unset or empty.
    """
    environ = os.environ if environ is None else environ
    key = environ.get(environment.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"{environment.api_key_env} is not set; export the private API key of the Mailgun "
            f"account that owns {environment.domain} in it (not the webhook signing key), or "
            f"set api_key_env in [environments.{environment.name}] to the variable that holds it"
        )
    return key


class MailgunClient:
    """Client for the webhooks of one Mailgun domain.

    `http` must carry the basic auth and timeouts, as `for_environment` sets them.
    Every method raises MailgunApiError when Mailgun rejects the request or cannot
    be reached after the retries of `retry`.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        environment: EnvironmentSettings,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: SleepFunction = asyncio.sleep,
    ) -> None:
        self._http = http
        self._environment = environment
        self._retry = retry
        self._sleep = sleep
        self.base_url = base_url_for(environment)
        self._collection_path = f"/v3/domains/{quote(environment.domain, safe='')}/webhooks"

    @classmethod
    @contextlib.asynccontextmanager
    async def for_environment(
        cls,
        environment: EnvironmentSettings,
        *,
        api_key: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: SleepFunction | None = None,
        request_timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> AsyncIterator[MailgunClient]:
        """Open a client for `environment` and close its connections on exit.

        Without `api_key`, the key is read from the variable named by `api_key_env`.
        """
        key = api_key if api_key is not None else read_api_key(environment)
        async with httpx.AsyncClient(
            auth=httpx.BasicAuth("api", key),
            timeout=request_timeout,
            headers={"User-Agent": "mgwebhook"},
        ) as http:
            yield cls(
                http,
                environment,
                retry=retry if retry is not None else DEFAULT_RETRY,
                sleep=sleep if sleep is not None else asyncio.sleep,
            )

    async def list_webhooks(self) -> dict[str, list[str]]:
        """Return the URLs of every webhook id configured on the domain.

        Older webhooks list a single ``url`` instead of ``urls``, and both shapes
        are returned as a list.
        """
        response = await self._request("GET", self._collection_path)
        document = _json_body(response)
        if not isinstance(document, dict) or "webhooks" not in document:
            raise _unexpected_body(response, "it has no 'webhooks' key")
        # null and an empty array are read as no webhooks.
        webhooks = document["webhooks"] or {}
        if not isinstance(webhooks, dict):
            raise _unexpected_body(response, "'webhooks' is not an object")
        return {
            str(webhook_id): _entry_urls(response, str(webhook_id), entry)
            for webhook_id, entry in webhooks.items()
        }

    async def create_webhook(self, webhook_id: str, urls: Sequence[str]) -> None:
        """Create `webhook_id` with `urls` (POST, multipart form).

        Mailgun responds with 400 when the id already has URLs. If the id then has
        exactly `urls`, an earlier attempt of this request was stored before its
        response was lost, and the call succeeds.
        """
        _check_url_count(urls)
        try:
            fields = [("id", webhook_id), *(("url", url) for url in urls)]
            await self._request("POST", self._collection_path, fields=fields)
        except MailgunApiError as error:
            if error.status != 400:
                raise
            existing = (await self.list_webhooks()).get(webhook_id)
            if not existing:
                raise
            if len(existing) == len(urls) and all(contains_url(existing, url) for url in urls):
                logger.info("Mailgun webhook %s already had the requested URLs", webhook_id)
                return
            raise MailgunApiError(
                f"{error} Webhook {webhook_id!r} was created by someone else meanwhile and "
                f"now has {', '.join(existing)}; run the command again to merge with them.",
                method=error.method,
                url=error.url,
                status=error.status,
                body_message=error.body_message,
            ) from error

    async def update_webhook(self, webhook_id: str, urls: Sequence[str]) -> None:
        """Replace the whole URL list of `webhook_id` with `urls` (PUT, multipart form)."""
        _check_url_count(urls)
        fields = [("url", url) for url in urls]
        await self._request("PUT", self._webhook_path(webhook_id), fields=fields)

    async def delete_webhook(self, webhook_id: str) -> None:
        """Delete `webhook_id` and all its URLs.

        A 404 counts as success when the id is no longer listed, which happens when
        an earlier attempt of this request was applied before its response was lost.
        """
        try:
            await self._request("DELETE", self._webhook_path(webhook_id))
        except MailgunApiError as error:
            if error.status != 404 or webhook_id in await self.list_webhooks():
                raise
            logger.info("Mailgun webhook %s was already deleted", webhook_id)

    async def apply_change(self, change: WebhookChange) -> None:
        """Send the request that `change` plans. Actions none and conflict send nothing."""
        if change.action is Action.CREATE:
            await self.create_webhook(change.webhook_id, change.after)
        elif change.action is Action.UPDATE:
            await self.update_webhook(change.webhook_id, change.after)
        elif change.action is Action.DELETE:
            await self.delete_webhook(change.webhook_id)

    def _webhook_path(self, webhook_id: str) -> str:
        return f"{self._collection_path}/{quote(webhook_id, safe='')}"

    async def _request(
        self, method: str, path: str, *, fields: Sequence[tuple[str, str]] = ()
    ) -> httpx.Response:
        """Send one API request, retrying 429, 5xx, timeouts and network errors.

        `fields` are sent as multipart/form-data, the content type that
        Mailgun's API reference gives for creating and updating webhooks.
        """
        # A part with no file name is a plain form field.
        files = [(name, (None, value.encode())) for name, value in fields] or None
        url = f"{self.base_url}{path}"
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, url, files=files)
            except RETRYABLE_TRANSPORT_ERRORS as error:
                if attempt >= self._retry.max_attempts:
                    raise self._transport_error(method, url, error, attempt) from error
                await self._wait_before_retry(
                    method, url, _describe_transport_error(error), attempt, None
                )
                continue
            except httpx.TransportError as error:
                raise self._transport_error(method, url, error, attempt) from error

            status = response.status_code
            if status == 429 or status >= 500:
                wait = _requested_wait(response) if status == 429 else None
                too_long = wait is not None and wait > self._retry.max_retry_after
                if attempt >= self._retry.max_attempts or too_long:
                    raise self._status_error(method, url, response, attempt)
                await self._wait_before_retry(method, url, f"HTTP {status}", attempt, wait)
                continue
            if response.is_error:
                raise self._status_error(method, url, response, attempt)
            return response

    async def _wait_before_retry(
        self, method: str, url: str, reason: str, attempt: int, requested: float | None
    ) -> None:
        delay = requested if requested is not None else self._retry.backoff(attempt)
        logger.warning(
            "Mailgun %s %s failed with %s; retry %d of %d in %.1f s",
            method,
            url,
            reason,
            attempt,
            self._retry.max_attempts - 1,
            delay,
        )
        await self._sleep(delay)

    def _status_error(
        self, method: str, url: str, response: httpx.Response, attempts: int
    ) -> MailgunApiError:
        status = response.status_code
        body_message = _body_message(response)
        failure = f"{method} {url} failed with HTTP {status}"
        if body_message:
            failure += f" ({body_message})"
        message = f"{failure}. {self._advice(status, response, attempts, url)}".rstrip()
        return MailgunApiError(
            message, method=method, url=url, status=status, body_message=body_message
        )

    def _advice(self, status: int, response: httpx.Response, attempts: int, url: str) -> str:
        """Return what the user can do about an error status, or an empty string."""
        environment = self._environment
        region = environment.region.upper()
        if status == 401:
            return (
                f"Mailgun rejected the API key in {environment.api_key_env}. Check that it is "
                "the private API key (not the webhook signing key) of the account that owns "
                f"{environment.domain} in the {region} region."
            )
        if status == 403:
            return (
                f"The API key in {environment.api_key_env} lacks permission to manage the "
                f"webhooks of {environment.domain}; use a key of the account that owns the domain."
            )
        if status == 404 and url == f"{self.base_url}{self._collection_path}":
            return self._domain_not_found_advice()
        if status == 404:
            return (
                "The webhook is no longer there; run the command again to read its current state."
            )
        if status == 429:
            wait = _requested_wait(response)
            if wait is not None and wait > self._retry.max_retry_after:
                return f"Mailgun is rate-limiting this API key; try again in {wait:g} seconds."
            return f"Mailgun is rate-limiting this API key ({attempts} attempts); try again later."
        if status >= 500:
            return f"Mailgun failed on {attempts} attempts; try again later."
        return ""

    def _domain_not_found_advice(self) -> str:
        environment = self._environment
        where = f"[environments.{environment.name}]"
        if environment.api_base_url is not None:
            return (
                f"Domain {environment.domain!r} is not known at api_base_url "
                f"{environment.api_base_url}; check the domain name and that api_base_url "
                f"in {where} is the API of the region that holds the domain."
            )
        other = "eu" if environment.region == "us" else "us"
        return (
            f"Domain {environment.domain!r} was not found in the {environment.region.upper()} "
            f"region ({self.base_url}). A domain exists in one region only, so if it was "
            f'created in the {other.upper()} region, set region = "{other}" in {where}; '
            "otherwise check the domain name."
        )

    def _transport_error(
        self, method: str, url: str, error: httpx.TransportError, attempts: int
    ) -> MailgunApiError:
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        if isinstance(error, httpx.TimeoutException):
            failure = f"timed out on {tries} ({type(error).__name__})"
        else:
            failure = f"failed on {tries} with {_describe_transport_error(error)}"
        return MailgunApiError(
            f"{method} {url} {failure}. Check the network connection to {self.base_url} "
            "and try again.",
            method=method,
            url=url,
        )


def _check_url_count(urls: Sequence[str]) -> None:
    if isinstance(urls, str):
        raise TypeError("urls must be a sequence of URLs, not a single string")
    if not 1 <= len(urls) <= MAX_URLS_PER_WEBHOOK:
        raise ValueError(
            f"a Mailgun webhook takes 1 to {MAX_URLS_PER_WEBHOOK} URLs, got {len(urls)}: {urls!r}"
        )


def _describe_transport_error(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    detail = str(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def _requested_wait(response: httpx.Response) -> float | None:
    """Return the wait in seconds that a 429 response requests, or None if it names none.

    Mailgun sends ``retry-seconds`` in the JSON body. The standard Retry-After
    header is read when the body has none.
    """
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict):
        value = document.get("retry-seconds")
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    header = response.headers.get("Retry-After", "").strip()
    if header.isdigit():
        return float(header)
    return None


def _body_message(response: httpx.Response) -> str | None:
    """Return the error text of a response body, whichever shape Mailgun used."""
    text = response.text.strip()
    if not text:
        return None
    try:
        document = response.json()
    except ValueError:
        return _shorten(text)
    if isinstance(document, dict):
        for key in BODY_MESSAGE_KEYS:
            value = document.get(key)
            if isinstance(value, str) and value.strip():
                return _shorten(value.strip())
    return _shorten(text)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= MAX_QUOTED_BODY:
        return text
    return text[: MAX_QUOTED_BODY - 3] + "..."


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise _unexpected_body(response, "it is not JSON") from None


def _unexpected_body(response: httpx.Response, problem: str) -> MailgunApiError:
    request = response.request
    return MailgunApiError(
        f"{request.method} {request.url} returned HTTP {response.status_code} with a body that "
        f"mgwebhook cannot read because {problem}: {_shorten(response.text)!r}. "
        "Check that api_base_url, if set, points at the Mailgun API.",
        method=request.method,
        url=str(request.url),
        status=response.status_code,
    )


def _entry_urls(response: httpx.Response, webhook_id: str, entry: Any) -> list[str]:
    """Return the URLs of one listed webhook, from ``urls`` or the older ``url``."""
    if isinstance(entry, dict):
        urls = entry.get("urls")
        if isinstance(urls, list) and urls and all(isinstance(url, str) for url in urls):
            return list(urls)
        url = entry.get("url")
        if isinstance(url, str) and url:
            return [url]
        if urls == [] or (urls is None and url is None):
            return []
    raise _unexpected_body(response, f"webhook {webhook_id!r} has no 'urls' list or 'url' string")
