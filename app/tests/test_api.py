"""The API client against a real HTTP server on 127.0.0.1: one request per call, and its verdicts."""

import socket
from datetime import UTC, datetime

import pytest
from fetcher.api import ApiClient, ApiError, RateLimited, TransientError, new_session
from fetcher.quota import QuotaCounter
from fetcher.settings import ApiSettings
from sample_config import TOKEN


@pytest.fixture
def client(stub_api):
    stub_api.requests.clear()
    return ApiClient(ApiSettings(stub_api.base_url, TOKEN, timeout=0.3, max_reset_wait=3600), new_session())


def test_a_200_is_decoded(client, stub_api):
    assert client.get_item("ok") == {"item": "ok", "value": 42}
    assert stub_api.requests == [("/items/ok", f"Bearer {TOKEN}")]


def test_the_item_is_quoted_into_one_path_segment(client, stub_api):
    assert client.get_item("a b/c") == {"item": "a%20b%2Fc"}
    assert [path for path, _ in stub_api.requests] == ["/items/a%20b%2Fc"]


@pytest.mark.parametrize(
    ("item", "error", "retry_after"),
    [
        ("missing", ApiError, None),
        ("moved", ApiError, None),
        ("text", ApiError, None),
        ("down", TransientError, None),
        ("limited", RateLimited, 7.0),
    ],
)
def test_each_answer_gets_its_verdict_after_exactly_one_request(client, stub_api, item, error, retry_after):
    with pytest.raises(error) as caught:
        client.get_item(item)

    assert len(stub_api.requests) == 1, "no retry and no redirect followed inside one call"
    assert TOKEN not in str(caught.value)
    if issubclass(error, TransientError):
        assert caught.value.retry_after == retry_after


def test_a_retry_after_date_is_read_against_the_clock(stub_api):
    client = ApiClient(
        ApiSettings(stub_api.base_url, TOKEN, timeout=1, max_reset_wait=3600),
        new_session(),
        now=lambda: datetime(2026, 10, 21, 7, 27, 30, tzinfo=UTC),
    )

    with pytest.raises(TransientError) as caught:
        client.get_item("limited-date")

    assert caught.value.retry_after == 30.0


def test_a_timeout_is_transient(client, stub_api):
    with pytest.raises(TransientError, match="ReadTimeout"):
        client.get_item("slow")
    assert len(stub_api.requests) == 1


def test_a_refused_connection_is_transient():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    client = ApiClient(ApiSettings(f"http://127.0.0.1:{port}", TOKEN, timeout=1, max_reset_wait=3600), new_session())

    with pytest.raises(TransientError, match="ConnectionError") as caught:
        client.get_item("ok")
    assert TOKEN not in str(caught.value)


RESET_NOW = datetime(2026, 10, 21, 7, 27, 30, tzinfo=UTC)  # 30 s before the stub's X-RateLimit-Reset


@pytest.mark.parametrize("item", ["limited-reset", "forbidden-limit"])
def test_the_apis_rate_limit_waits_for_the_reset_it_reports(stub_api, item):
    client = ApiClient(
        ApiSettings(stub_api.base_url, TOKEN, timeout=1, max_reset_wait=3600), new_session(), now=lambda: RESET_NOW
    )
    with pytest.raises(RateLimited) as caught:
        client.get_item(item)
    assert caught.value.retry_after == 30.0


def test_a_403_that_is_not_a_rate_limit_fails_for_good(client):
    with pytest.raises(ApiError):
        client.get_item("forbidden")


def test_a_429_marks_the_allowance_spent(stub_api, tmp_path):
    quota = QuotaCounter(tmp_path / "q.sqlite3", allowance=100, window=3600)
    client = ApiClient(ApiSettings(stub_api.base_url, TOKEN, 1, 3600), new_session(), quota=quota)

    with pytest.raises(RateLimited):
        client.get_item("limited")

    assert quota.status().remaining == 0, "the API's count wins: the governor stops consuming"
