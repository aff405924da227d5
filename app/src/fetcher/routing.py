"""From a routing key to the queue it reaches.

Tasks are sent with `queue=<name>` rather than a bare routing key: Celery then publishes with that queue's
exchange and key and declares the queue first, so the message cannot be dropped as unroutable. A key that
no `[[routing.queues]]` entry has would be exactly such a silent drop, so it is an error here.
"""

from fetcher.settings import RoutingSettings


class UnknownRoutingKey(ValueError):
    """No queue in the configuration is bound with this routing key."""


def queue_for(routing: RoutingSettings, routing_key: str) -> str:
    """The name of the queue bound with `routing_key`."""
    for queue in routing.queues:
        if queue.routing_key == routing_key:
            return queue.name
    known = ", ".join(queue.routing_key for queue in routing.queues)
    raise UnknownRoutingKey(f"no queue is bound with routing key {routing_key!r} (known keys: {known})")
