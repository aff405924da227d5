"""The HTTP API client behind `call_api`: one request per call, and a verdict on every failure.

The verdict decides what happens to the message. A `TransientError` (no connection, a timeout, HTTP 5xx
or 429) is worth retrying later, and carries the server's `Retry-After` when it gave one; an `ApiError`
(any other 4xx, a redirect, a body that is not JSON) will not get better, so the task fails at once and
its message is dead-lettered.

`ApiClient.get_item` is the one place a request is made; the task calling it takes the call from the host's
allowance first (`fetcher.runtime.api_task`), and a 429 here marks that allowance spent. Exactly one request
per call: the session's adapter does not retry and redirects are not followed, so retries happen only as new Celery messages, with backoff.
The token is sent only in the `Authorization` header and never appears in an error message.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from fetcher.backoff import parse_rate_limit_reset, parse_retry_after
from fetcher.quota import QuotaCounter
from fetcher.settings import ApiSettings


class TransientError(Exception):
    """A failure that may not happen again: retry later, after `retry_after` seconds if the API said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The API refused the call for its own rate limit (HTTP 429, or a 403 saying no calls remain).

    `retry_after` is the wait until the reset the API reported (`Retry-After`, else `X-RateLimit-Reset`).
    """


class ApiError(Exception):
    """A failure that will happen again on retry: the task should fail for good."""


def new_session() -> requests.Session:
    """A session whose adapter makes a single attempt per request (no urllib3-level retries)."""
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class ApiClient:
    """Reads items from the API described by the `[api]` section."""

    def __init__(
        self,
        settings: ApiSettings,
        session: requests.Session,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        quota: QuotaCounter | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._now = now
        self._quota = quota

    def get_item(self, item: str | int) -> Any:
        """`GET {base_url}/items/{item}` and its decoded JSON body."""
        url = f"{self._settings.base_url}/items/{quote(str(item), safe='')}"
        try:
            response = self._session.get(
                url,
                headers={"Authorization": f"Bearer {self._settings.token}", "Accept": "application/json"},
                timeout=self._settings.timeout,
                allow_redirects=False,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        with response:
            status = response.status_code
            headers = response.headers
            if status == 429 or (status == 403 and headers.get("X-RateLimit-Remaining", "").strip() == "0"):
                if self._quota is not None:
                    # The API's count wins over ours: take no more calls in this window.
                    self._quota.spend_all()
                wait = parse_retry_after(headers.get("Retry-After"), self._now())
                if wait is None:
                    wait = parse_rate_limit_reset(headers.get("X-RateLimit-Reset"), self._now())
                raise RateLimited(f"GET {url}: HTTP {status} (the API's rate limit)", retry_after=wait)
            if status >= 500:
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self._now())
                raise TransientError(f"GET {url}: HTTP {status}", retry_after=retry_after)
            if not 200 <= status < 300:
                raise ApiError(f"GET {url}: HTTP {status}")
            try:
                return response.json()
            except requests.JSONDecodeError:
                raise ApiError(f"GET {url}: the response is not JSON") from None
