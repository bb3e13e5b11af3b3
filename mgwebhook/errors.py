"""Exceptions raised by mgwebhook.

Every exception derives from ``MgwebhookError``::

    MgwebhookError
    ├── ConfigError               the configuration file, a variable or a flag is invalid
    ├── WebhookRejected           a webhook request is refused; carries its HTTP status
    │   ├── PayloadTooLarge       413: the body is over the size limit
    │   ├── UnsupportedMediaType  415: the content type is not JSON, urlencoded or multipart
    │   ├── MalformedPayload      400: the body cannot be parsed or has no signature fields
    │   ├── BodyTimeout           408: the body did not arrive within the read timeout
    │   └── NotAuthentic          401: the request cannot be trusted
    │       ├── SignatureMismatch no configured key produced the signature
    │       ├── StaleTimestamp    the timestamp is not an integer, too old or too far ahead
    │       └── TokenReplayed     the token was already used by a different event
    ├── UnusableEvent             an authentic post holds no usable event (answered 406)
    ├── DatabaseUnavailable       the database failed or cannot be reached (answered 503)
    ├── ServiceOverloaded         the ingest queue is full (answered 503)
    └── MailgunApiError           a call to the Mailgun API failed
"""

from __future__ import annotations


class MgwebhookError(Exception):
    """Base class of every error raised by mgwebhook."""


class ConfigError(MgwebhookError):
    """Raised when the configuration file, an environment variable or a flag is invalid."""


class WebhookRejected(MgwebhookError):
    """Raised when a webhook request is refused before anything is stored."""

    status = 400
    reason = "rejected"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PayloadTooLarge(WebhookRejected):
    """Raised when the request body is larger than the configured limit."""

    status = 413
    reason = "too-large"


class UnsupportedMediaType(WebhookRejected):
    """Raised when the content type is not JSON, urlencoded or multipart."""

    status = 415
    reason = "unsupported-media-type"


class MalformedPayload(WebhookRejected):
    """Raised when the body cannot be parsed or carries no signature fields."""

    status = 400
    reason = "malformed"


class BodyTimeout(WebhookRejected):
    """Raised when the request body is not read in full within the configured timeout."""

    status = 408
    reason = "body-timeout"


class NotAuthentic(WebhookRejected):
    """Raised when a request cannot be trusted as coming from Mailgun."""

    status = 401
    reason = "not-authentic"


class SignatureMismatch(NotAuthentic):
    """Raised when no configured signing key matches `signature` or `parent-signature`."""

    reason = "bad-signature"


class StaleTimestamp(NotAuthentic):
    """Raised when the signed timestamp is not an integer, too old or too far in the future."""

    reason = "bad-timestamp"


class TokenReplayed(NotAuthentic):
    """Raised when a token already used by a different event arrives again."""

    reason = "replayed-token"


class UnusableEvent(MgwebhookError):
    """Raised when an authentic post contains no event that can be processed.

    Examples are a route forward, `event-data` that is not an object, or a tracked
    event without a message id.
    """


class DatabaseUnavailable(MgwebhookError):
    """Raised when the database fails or cannot be reached; the caller may retry later."""


class ServiceOverloaded(MgwebhookError):
    """Raised when the ingest queue is full; the caller may retry later."""


class MailgunApiError(MgwebhookError):
    """Raised when a call to the Mailgun API fails.

    Carries the HTTP method, the URL, the status (None for a transport error) and the
    message from the response body. It never carries the API key.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str,
        url: str,
        status: int | None = None,
        body_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.status = status
        self.body_message = body_message
