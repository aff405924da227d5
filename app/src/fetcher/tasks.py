"""The tasks. Their names are fixed strings because a message carries the name to another host's worker:
renaming or moving a function must not change what the other hosts send.
"""

import logging
from functools import cache

from fetcher import api, runtime
from fetcher.app import app, settings
from fetcher.backoff import retry_delay
from fetcher.config_reader import ConfigError
from fetcher.quota import counter_for
from fetcher.routing import queue_for

logger = logging.getLogger("fetcher.tasks")

# fan_out's default: the pairs (1, 1) to (18, 18).
DEFAULT_NUMBERS = tuple(range(1, 19))


@app.task(name="fetcher.tasks.add")
def add(x, y):
    """The smallest task there is, to check that a worker answers."""
    return x + y


class MyTest(app.Task):
    """The write-up's class-based task: log the two arguments and add them as integers."""

    name = "fetcher.tasks.MyTest"

    def run(self, x, y):
        logger.info("Received %s and %s", x, y)
        return int(x) + int(y)


my_test = app.register_task(MyTest())


# ignore_result: beat, which sends this, never reads a result; with rpc:// each one would pile up in beat's
# reply queue.
@app.task(name="fetcher.tasks.fan_out", ignore_result=True)
def fan_out(routing_key, numbers=None):
    """Send MyTest(n, n) for each number to the queue bound with `routing_key`; beat runs this periodically.

    Every message goes over one connection and producer taken from the app's pool, rather than a
    connection per message. Nobody waits for these MyTest results (the sender is a worker process, whose
    rpc:// reply queue nobody declares), so they are sent with ignore_result. Returns how many were sent.
    """
    queue = queue_for(settings.routing, routing_key)
    pairs = [(number, number) for number in (DEFAULT_NUMBERS if numbers is None else numbers)]
    with app.producer_or_acquire() as producer:
        for pair in pairs:
            my_test.apply_async(pair, queue=queue, producer=producer, ignore_result=True)
    logger.info("Ran periodic task: sent %d MyTest to %s", len(pairs), routing_key)
    return len(pairs)


# runtime.api_task: each run takes one call from this host's allowance first; with the allowance spent, a message
# from a quota queue goes back to it unrun (another host takes it), from any other queue it is retried after
# the reset. The same decorator an operator's own app uses.
@runtime.api_task(app, name="fetcher.tasks.call_api", bind=True)
def call_api(self, item):
    """Fetch one item from the API: exactly one HTTP request per message, retried with backoff if transient.

    A call the API itself refuses for its rate limit is retried after the reset the API reports (at most
    `api.max_reset_wait`); any other transient failure (no connection, timeout, HTTP 5xx) after a backoff.
    After `worker.max_retries` retries, or on any other error, the task fails and its message is dead-lettered.
    """
    try:
        return api_client().get_item(item)
    except api.RateLimited as exc:
        ceiling = settings.worker.retry_backoff_max if exc.retry_after is None else settings.api.max_reset_wait
        delay = retry_delay(self.request.retries, ceiling, exc.retry_after)
        raise self.retry(exc=exc, countdown=max(1, delay)) from exc
    except api.TransientError as exc:
        delay = retry_delay(self.request.retries, settings.worker.retry_backoff_max, exc.retry_after)
        raise self.retry(exc=exc, countdown=delay) from exc


@cache
def api_client() -> api.ApiClient:
    """This process's API client, created on first use so each worker process has its own session.

    On a host with `[quota]` a 429 from the API marks the host's allowance spent (the API's count wins).
    """
    if settings.api is None:
        raise ConfigError(f"{settings.source}: [api] is missing, and call_api needs its base_url, token, timeout")
    quota = counter_for(settings.quota) if settings.quota is not None else None
    return api.ApiClient(settings.api, api.new_session(), quota=quota)
