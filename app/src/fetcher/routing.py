"""From a routing key to the queue it reaches.

Tasks are sent with `queue=<name>` rather than a bare routing key: Celery then publishes with that queue's
exchange and key and declares the queue first, so the message cannot be dropped as unroutable. A key that
no `[[routing.queues]]` entry has would be exactly such a silent drop, so it is an error here.
"""

import re

from fetcher.settings import RoutingSettings

# Native delayed delivery (countdown, retry backoff on quorum queues) puts the delay in front of the key
# as 28 binary digits: 0.0.….1.0.server_task.
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


class UnknownRoutingKey(ValueError):
    """No queue in the configuration is bound with this routing key."""


def queue_for(routing: RoutingSettings, routing_key: str) -> str:
    """The name of the queue bound with `routing_key`."""
    for queue in routing.queues:
        if queue.routing_key == routing_key:
            return queue.name
    known = ", ".join(queue.routing_key for queue in routing.queues)
    raise UnknownRoutingKey(f"no queue is bound with routing key {routing_key!r} (known keys: {known})")


def delivered_queue(routing: RoutingSettings, routing_key: str) -> str | None:
    """The queue a message delivered with `routing_key` came from (a delayed one too), if it is one of ours."""
    key = _DELAY_PREFIX.sub("", routing_key or "", count=1)
    return next((queue.name for queue in routing.queues if queue.routing_key == key), None)
