"""How long a transient failure waits before its retry.

Exponential backoff with jitter spreads the retries of many tasks that failed together (an API outage)
instead of retrying them in lockstep; half of each delay is fixed so that every retry really waits. When
the API said how long to wait (`Retry-After` on a 429), that is honoured, capped at the same maximum.

Delays are whole seconds: on quorum queues Celery encodes a countdown in the routing key as whole seconds
and refuses a positive countdown below one.
"""

import math
import random
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime


def retry_delay(
    retries: int,
    maximum: int,
    retry_after: float | None = None,
    jitter: Callable[[float, float], float] = random.uniform,
) -> int:
    """Seconds before retry number `retries + 1`: Retry-After if given, else 2**retries with jitter."""
    if retry_after is not None:
        return math.ceil(min(max(retry_after, 0.0), maximum))
    ceiling = min(maximum, 2**retries)
    return math.ceil(ceiling / 2 + jitter(0, ceiling / 2))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from `now` that a `Retry-After` header asks for (delay-seconds or HTTP-date), if valid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - now).total_seconds(), 0.0)


def parse_rate_limit_reset(value: str | None, now: datetime) -> float | None:
    """Seconds from `now` until an `X-RateLimit-Reset` time: epoch seconds, or (if small) seconds to wait."""
    if value is None:
        return None
    try:
        reset = float(value.strip())
    except ValueError:
        return None
    # GitHub and Twitter send the reset as epoch seconds; some APIs send the seconds left instead.
    if reset > 1e9:
        reset -= now.timestamp()
    return max(reset, 0.0)
