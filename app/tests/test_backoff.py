"""Retry delays: exponential with jitter, or the API's Retry-After, always whole seconds and capped."""

from datetime import UTC, datetime

import pytest
from fetcher.backoff import parse_retry_after, retry_delay


def no_jitter(low, high):
    return low


def full_jitter(low, high):
    return high


@pytest.mark.parametrize(("retries", "low", "high"), [(0, 1, 1), (1, 1, 2), (3, 4, 8), (5, 16, 32), (9, 30, 60)])
def test_exponential_with_half_the_delay_jittered(retries, low, high):
    assert retry_delay(retries, maximum=60, jitter=no_jitter) == low
    assert retry_delay(retries, maximum=60, jitter=full_jitter) == high
    assert low <= retry_delay(retries, maximum=60) <= high


@pytest.mark.parametrize(("retry_after", "expected"), [(7.0, 7), (2.2, 3), (0.0, 0), (-5.0, 0), (3600.0, 60)])
def test_retry_after_wins_rounded_up_and_capped(retry_after, expected):
    assert retry_delay(4, maximum=60, retry_after=retry_after, jitter=full_jitter) == expected


NOW = datetime(2026, 10, 21, 7, 27, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2026 07:00:00 GMT", 0.0),
        ("soon", None),
        ("-3", None),
        (None, None),
    ],
)
def test_parse_retry_after(header, expected):
    assert parse_retry_after(header, NOW) == expected
