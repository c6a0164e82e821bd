"""Scoring client: how the Function App asks the model endpoint (docs/contracts.md "Scoring endpoint") for risks.

One `score` call scores any number of batteries: it splits them into requests of `chunk_size` items
(the endpoint refuses oversize requests), sends the endpoint key or an Azure AD token, and retries what
is worth retrying — 408, 429, 5xx, connection errors and timeouts — with bounded exponential backoff and
full jitter, honouring `Retry-After`. Scoring is a pure function of the request, so repeating a POST is
safe. When it gives up it raises one exception that says why: `ScoringUnavailable` (still failing after
the last attempt: worth retrying later, e.g. by the Event Hub trigger's retry) or `ScoringRejected`
(the endpoint refused the request: retrying cannot help). The key never appears in logs or messages:
the endpoint's own words are quoted as a short excerpt with the key, the token and any bearer
credential redacted and control characters removed (an endpoint that echoes the request's headers,
or a proxy's error page, would otherwise put the key in the log).
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import requests

from shared.adapters import observability
from shared.config.settings import Settings

logger = logging.getLogger(__name__)

AZURE_ML_SCOPE = "https://ml.azure.com/.default"
# A token is refreshed this long before it expires, so a request never leaves with a stale one.
TOKEN_REFRESH_MARGIN_S = 300
_JSON_ENCODER = msgspec.json.Encoder()
_JSON_BODY = {"Content-Type": "application/json"}
# The endpoint's error text, as quoted in logs and exceptions: at most this many characters, of the
# first _SCANNED_CHARS, which are searched for secrets.
ERROR_EXCERPT_CHARS = 200
_SCANNED_CHARS = 10_000
REDACTED = "[redacted]"
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[\w\-.~+/]+=*")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


class ScoringError(RuntimeError):
    """Scoring failed; `status` is the last HTTP status (None for a connection error or timeout)."""

    def __init__(self, message: str, *, status: int | None, reason: str, attempts: int) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.attempts = attempts


class ScoringUnavailable(ScoringError):
    """The endpoint kept failing transiently (408/429/5xx, connection error, timeout) to the last attempt."""

    outcome = "unavailable"  # battery.endpoint.latency's attribute (shared.adapters.observability)


class ScoringRejected(ScoringError):
    """The endpoint refused the request (4xx other than 408/429) or answered outside the contract."""

    outcome = "rejected"


class TokenCredential(Protocol):
    """What azure-identity credentials (DefaultAzureCredential, ManagedIdentityCredential, ...) provide."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. Waits are bounded: no single wait exceeds `max_wait_s`."""

    max_attempts: int = 5
    backoff_base_s: float = 0.5
    max_wait_s: float = 20.0

    def wait_s(self, attempt: int, retry_after_s: float | None, draw: float) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        Full jitter (a uniform draw up to the exponential ceiling) spreads out the retries of many
        function instances that failed at the same moment. A server's `Retry-After` is a floor: waiting
        less only earns another 429.
        """
        ceiling = min(self.max_wait_s, self.backoff_base_s * 2 ** (attempt - 1))
        backoff = draw * ceiling
        if retry_after_s is not None:
            backoff = max(backoff, retry_after_s)
        return min(backoff, self.max_wait_s)


class ScoringClient:
    """Scores battery histories against a scoring endpoint (azmlinfsrv locally, Azure ML in the cloud).

    `key` (Bearer key of an ACI service or a key-auth online endpoint) and `credential` (an azure-identity
    credential for an `aad_token` endpoint) are alternatives; with neither, no Authorization header is
    sent (the local endpoint). `sleep` and `jitter` are injectable so tests run retries without waiting.
    """

    def __init__(
        self,
        scoring_uri: str,
        *,
        key: str | None = None,
        credential: TokenCredential | None = None,
        chunk_size: int = 250,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if key and credential is not None:
            raise ValueError("give the endpoint key or an Azure AD credential, not both")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.scoring_uri = scoring_uri
        self.chunk_size = chunk_size
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.retry = retry or RetryPolicy()
        self._key = key
        self._credential = credential
        self._token: Any = None
        self._session = session or requests.Session()
        self._sleep = sleep
        self._jitter = jitter

    @classmethod
    def from_settings(cls, settings: Settings, credential: TokenCredential | None = None, **options: Any):
        """The client the app settings describe: SCORING_URI, and SCORING_KEY unless a credential is given."""
        key = None if credential is not None else settings.scoring_key
        return cls(settings.scoring_uri, key=key, credential=credential, **options)

    def __repr__(self) -> str:  # never show the key
        auth = "key" if self._key else "azure-ad" if self._credential else "none"
        return f"ScoringClient({self.scoring_uri!r}, auth={auth}, chunk_size={self.chunk_size})"

    def score(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Score request items (`battery_window.histories_for_request`); one prediction per item, in order.

        Each prediction is the endpoint's, plus the `model_version` of the response it came in (a
        deployment may swap models between two chunks).
        """
        predictions: list[dict[str, Any]] = []
        for start in range(0, len(items), self.chunk_size):
            chunk = list(items[start : start + self.chunk_size])
            with observability.endpoint_request():
                body = self._post({"data": chunk})
            returned = body.get("predictions") if isinstance(body, dict) else None
            if not isinstance(returned, list) or len(returned) != len(chunk):
                count = len(returned) if isinstance(returned, list) else "no"
                raise ScoringRejected(
                    f"{self.scoring_uri} answered {count} predictions for {len(chunk)} batteries",
                    status=200, reason="response outside the contract", attempts=1,
                )  # fmt: skip
            version = body.get("model_version")
            predictions += [{**prediction, "model_version": version} for prediction in returned]
        return predictions

    def _post(self, payload: dict[str, Any]) -> Any:
        # Encoded once, by msgspec: a sixth of json.dumps's time on a request of 500 batteries' histories.
        body = _JSON_ENCODER.encode(payload)
        last_status: int | None = None
        last_reason = ""
        for attempt in range(1, self.retry.max_attempts + 1):
            retry_after: float | None = None
            try:
                response = self._session.post(
                    self.scoring_uri, data=body, headers={**_JSON_BODY, **self._headers()}, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as error:
                last_status, last_reason = None, _describe_connection_error(error)
            else:
                if response.ok:
                    return self._json(response, attempt)
                last_status, last_reason = response.status_code, excerpt(_error_text(response), self._secrets())
                if not is_retryable(last_status):
                    raise ScoringRejected(
                        f"{self.scoring_uri} refused the request: HTTP {last_status}: {last_reason}",
                        status=last_status, reason=last_reason, attempts=attempt,
                    )  # fmt: skip
                retry_after = _retry_after_s(response.headers.get("Retry-After"))
            if attempt == self.retry.max_attempts:
                break
            wait = self.retry.wait_s(attempt, retry_after, self._jitter())
            logger.warning(
                "scoring attempt %d/%d failed (%s); retrying in %.2fs",
                attempt, self.retry.max_attempts, _outcome(last_status, last_reason), wait,
            )  # fmt: skip
            self._sleep(wait)
        raise ScoringUnavailable(
            f"{self.scoring_uri} still failing after {self.retry.max_attempts} attempts: "
            f"{_outcome(last_status, last_reason)}",
            status=last_status, reason=last_reason, attempts=self.retry.max_attempts,
        )  # fmt: skip

    def _json(self, response: requests.Response, attempt: int) -> Any:
        try:
            return msgspec.json.decode(response.content)
        except ValueError:  # msgspec.DecodeError is one
            raise ScoringRejected(
                f"{self.scoring_uri} answered HTTP {response.status_code} with a body that is not JSON",
                status=response.status_code, reason="response is not JSON", attempts=attempt,
            ) from None  # fmt: skip

    def _secrets(self) -> list[str]:
        return [secret for secret in (self._key, getattr(self._token, "token", None)) if secret]

    def _headers(self) -> dict[str, str]:
        if self._key:
            return {"Authorization": f"Bearer {self._key}"}
        if self._credential is not None:
            if self._token is None or self._token.expires_on - TOKEN_REFRESH_MARGIN_S < time.time():
                self._token = self._credential.get_token(AZURE_ML_SCOPE)
            return {"Authorization": f"Bearer {self._token.token}"}
        return {}


def is_retryable(status: int) -> bool:
    """408 (request timeout), 429 (throttled) and every 5xx are transient; other 4xx are not."""
    return status in (408, 429) or 500 <= status <= 599


def _retry_after_s(value: str | None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date (RFC 9110); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(response: requests.Response) -> str:
    """The endpoint's own words: our score.py answers {"error": ...}, azmlinfsrv itself {"message": ...}."""
    try:
        body = response.json()
    except ValueError:
        return response.text or response.reason or ""
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)
    return str(body)


def excerpt(text: str, secrets: Iterable[str] = ()) -> str:
    """A bounded, loggable excerpt of text an endpoint sent: secrets and bearer credentials redacted,
    control characters (a forged log line) replaced, at most ERROR_EXCERPT_CHARS characters."""
    text = text[:_SCANNED_CHARS]
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _BEARER.sub(lambda match: f"{match.group(1)} {REDACTED}", text)
    text = " ".join(_UNPRINTABLE.sub(" ", text).split())
    return text if len(text) <= ERROR_EXCERPT_CHARS else text[: ERROR_EXCERPT_CHARS - 1] + "…"


def _describe_connection_error(error: requests.RequestException) -> str:
    kind = "timed out" if isinstance(error, requests.Timeout) else "connection failed"
    return f"{kind} ({type(error).__name__})"


def _outcome(status: int | None, reason: str) -> str:
    return f"HTTP {status}: {reason}" if status is not None else reason
