"""Celery's settings, derived from the host's configuration file.

The choices that make delivery reliable live here, each with its reason:

- Publisher confirms and publish retries: a task counts as sent only once the broker has it; if a node
  goes away mid-publish, the retry reconnects (to the next node in the URL list) and publishes again.
- Late acks with prefetch 1: a message is acknowledged only after its task finished, and a worker holds
  at most one unstarted message per process, so a crashed or stopped worker's messages go back to the
  queue for another worker instead of being lost with it.
- Reject on worker loss and on failure: a task whose process died is requeued (the quorum queue's
  delivery limit bounds how often); a task that fails for good is rejected without requeue, and RabbitMQ
  dead-letters it to the dead-letter queue where it stays visible.
- Cancel long-running tasks on connection loss: their messages will be redelivered, so finishing them
  here too would run them twice.
- Beat's scheduler sends only while it holds the beat lock on the cluster (`fetcher.beat`), so a second
  beat (an old host back with its unit still enabled) sends nothing.
"""

from typing import Any

from fetcher.broker import broker_tls, broker_urls
from fetcher.queues import task_queues
from fetcher.schedule import beat_schedule
from fetcher.settings import Settings

# Up to five retries over about 10 s while a publish fails: time enough to fail over to another node.
PUBLISH_RETRY_POLICY = {"max_retries": 5, "interval_start": 0, "interval_step": 1, "interval_max": 5}


def build_config(settings: Settings) -> dict[str, Any]:
    """The complete Celery configuration for this host."""
    routing = settings.routing
    worker = settings.worker
    return {
        "broker_url": broker_urls(settings.broker),
        "broker_use_ssl": broker_tls(settings.broker),
        "broker_heartbeat": settings.broker.heartbeat,
        "broker_connection_timeout": settings.broker.connect_timeout,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"confirm_publish": True},
        "task_publish_retry": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "task_queues": task_queues(routing),
        "task_default_queue": routing.own_queue,
        "task_default_exchange": routing.exchange,
        "task_default_exchange_type": routing.exchange_type,
        "task_default_routing_key": routing.own_routing_key,
        "task_default_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
        # Declares every queue and sets up delayed delivery once through the cluster (see fetcher.consumer).
        "worker_consumer": "fetcher.consumer:Consumer",
        "task_acks_late": True,
        "worker_prefetch_multiplier": worker.prefetch_multiplier,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_time_limit": worker.time_limit,
        "task_soft_time_limit": worker.soft_time_limit,
        "worker_concurrency": worker.concurrency,
        # Celery reads None as "never": 0 in the settings file means the same.
        "worker_max_tasks_per_child": worker.max_tasks_per_child or None,
        "worker_max_memory_per_child": worker.max_memory_per_child or None,
        "result_backend": settings.result.backend,
        "result_expires": settings.result.expires,
        # The result then carries the name of the worker that ran the task (the demo's --show-hosts).
        "result_extended": True,
        "timezone": "UTC",
        "enable_utc": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "beat_schedule": beat_schedule(settings.schedule),
        # Celery's PersistentScheduler (`--schedule FILE`) behind the beat lock; the unit needs no --scheduler.
        "beat_scheduler": "fetcher.beat:LockedScheduler",
    }
