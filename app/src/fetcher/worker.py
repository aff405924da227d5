"""What the worker does at start: check its node name and pick the queues it consumes.

Celery knows every host's queue (so tasks can be sent to any of them), and a worker would by default
consume them all; this host's worker consumes only `routing.consume`. Every queue is still declared, when
the consumer connects (`fetcher.consumer.Topology`).

A worker whose API allowance is spent (restarted mid-window) leaves its quota queues out until the window
resets; `fetcher.governor` then subscribes to them again.

The worker should run as `fetcher@<node>` (`--hostname`): results carry that name and the demo reports the
host from it, so another name is logged as a warning.
"""

import logging

from celery import Celery
from celery.signals import celeryd_after_setup

from fetcher.quota import counter_for
from fetcher.settings import Settings

logger = logging.getLogger(__name__)


def install(app: Celery, settings: Settings) -> None:
    """Connect the start hook for workers of `app`."""

    def on_after_setup(sender: str, instance: object, **_: object) -> None:
        if getattr(instance, "app", None) is not app:
            return
        if sender != settings.worker_name:
            logger.warning(
                "This worker runs as %s, but node = %r in %s: start it with --hostname %s",
                sender,
                settings.node,
                settings.source,
                settings.worker_name,
            )
        consume = settings.routing.consume
        if settings.quota is not None and counter_for(settings.quota).status().remaining == 0:
            # Restarted with the window's allowance spent: the quota queues wait for the governor.
            consume = tuple(queue for queue in consume if queue not in settings.quota.queues)
            logger.warning(
                "API allowance spent: not consuming %s until the window resets", ", ".join(settings.quota.queues)
            )
        app.amqp.queues.select(consume)
        logger.info("Consuming from %s", ", ".join(consume))

    celeryd_after_setup.connect(on_after_setup, weak=False)
