"""The broker objects of the system: the task exchange, one quorum queue per host, and dead-lettering.

Every host declares the same objects with the same arguments (RabbitMQ refuses a redeclaration with other
arguments), all derived from `[routing]` here and nowhere else.

Why quorum queues: they are replicated across the cluster's nodes and survive the loss of a minority of
them, and they count redeliveries, so `x-delivery-limit` stops a message that keeps crashing workers from
looping forever. Why at-least-once dead-lettering: with the default (at-most-once) a dead-lettered message is
dropped if the dead-letter queue cannot take it at that instant; at-least-once keeps it in the source
queue until the dead-letter queue has confirmed it. RabbitMQ accepts that strategy only together with
`x-overflow: reject-publish`.
"""

from kombu import Connection, Exchange, Queue

from fetcher.settings import RoutingSettings


def task_exchange(routing: RoutingSettings) -> Exchange:
    """The exchange every task is published to."""
    # Topic, not direct: on quorum queues Celery (5.5+) implements countdown, ETA and retry backoff with
    # native delayed delivery, which re-routes a delayed message through topic exchanges and cannot bind
    # a direct exchange; with a direct exchange the worker warns and holds every delayed task in memory
    # until it is due, blocking a pool slot with prefetch 1. Routing keys are exact (no wildcards), so the
    # topic exchange delivers exactly like a direct one.
    return Exchange(routing.exchange, type=routing.exchange_type, durable=True)


def task_queues(routing: RoutingSettings) -> tuple[Queue, ...]:
    """Every host's queue, bound to the task exchange with its routing key."""
    exchange = task_exchange(routing)
    return tuple(
        Queue(
            queue.name,
            exchange,
            routing_key=queue.routing_key,
            durable=True,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": routing.dead_letter_exchange,
                "x-delivery-limit": routing.delivery_limit,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        for queue in routing.queues
    )


def dead_letter_queue(routing: RoutingSettings) -> Queue:
    """The queue where every rejected or over-delivered task lands, with its original routing key.

    It is bound with `#`, so it takes everything dead-lettered from any host's queue. It is deliberately not
    one of Celery's task queues: nothing consumes it (dead tasks stay visible until someone looks), and
    Celery binds its task queues to the delayed-delivery exchange with their routing key, which for `#`
    would copy every delayed task into it.
    """
    exchange = Exchange(routing.dead_letter_exchange, type="topic", durable=True)
    return Queue(
        routing.dead_letter_queue,
        exchange,
        routing_key="#",
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def declare_all(connection: Connection, routing: RoutingSettings) -> None:
    """Declare every host's queue and the dead-letter queue, with their exchanges and bindings."""
    channel = connection.default_channel
    for queue in (*task_queues(routing), dead_letter_queue(routing)):
        queue.bind(channel).declare()
