"""The worker's consumer: Celery's own, with the broker topology set up once through the cluster.

Each time the consumer connects, before it processes messages, the `Topology` step declares every host's
queue and the dead-letter queue, then Celery's native delayed-delivery exchanges and queues, and binds
every task queue to them. The order matters: binding a queue that does not exist fails, and a host whose
worker never ran would otherwise have no queue (a message routed to its key would be dropped as
unroutable) and no delayed-delivery binding (its countdowns and retries would vanish).

It replaces Celery's `DelayedDelivery` step, which does the same delayed-delivery setup once per broker
URL, treating each URL as a separate broker, and retries an unreachable one several times (about
4 x (2 x connect_timeout + 2) + 9 seconds) before the worker starts consuming. Our URLs are the nodes of
one cluster, which share exchanges, queues and bindings, so one pass through the node the consumer is
already connected to is enough: with the laptop switched off, a worker still starts in seconds.
"""

from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from fetcher.queues import declare_all

CELERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class Topology(DelayedDelivery):
    """Declare every queue, then set up delayed delivery for them, through the consumer's own node.

    It keeps `DelayedDelivery`'s place in the boot order (after the task consumer) and its condition
    (RabbitMQ with quorum queues, so never with the tests' in-memory transport).
    """

    def start(self, c: CeleryConsumer) -> None:
        # Imported here, in the running worker, not at the top: importing this module (the tests do)
        # must not load the host's configuration file.
        from fetcher.runtime import configured

        settings = configured()

        app = c.app
        # A clone connects first to the node the consumer is connected to, so a node that is down is
        # not tried again; it keeps the other nodes as failover.
        with c.connection.clone() as connection:
            declare_all(connection, settings.routing)
            declare_native_delayed_delivery_exchanges_and_queues(
                connection, app.conf.broker_native_delayed_delivery_queue_type
            )
            for queue in app.amqp.queues.values():
                bind_queue_to_native_delayed_delivery_exchange(connection, queue)


class Consumer(CeleryConsumer):
    """Celery's consumer with `Topology` in place of its per-URL `DelayedDelivery` step, and the quota
    governor (`fetcher.governor`), which runs only on a host with a `[quota]` section."""

    class Blueprint(CeleryConsumer.Blueprint):
        default_steps = [
            "fetcher.consumer:Topology" if step == CELERY_STEP else step
            for step in CeleryConsumer.Blueprint.default_steps
        ] + ["fetcher.governor:QuotaGovernor"]
