"""What the roles configure, for any Celery app (a Django project's too), in one import.

The celery_worker role writes each host's settings (`/etc/fetcher/fetcher.toml`, `FETCHER_CONFIG`): the broker
URLs with failover, this host's queue and routing key, the shared queues and the other hosts' queues it helps
with, retries and dead-lettering, and its API allowance. An app takes all of it with one call, and marks the
tasks that spend the allowance with one decorator; the bundled app (`fetcher.app`, `fetcher.tasks`) does
exactly this:

    from celery import Celery
    from fetcher import runtime

    app = Celery("harvest")
    settings = runtime.configure(app)

    @runtime.api_task(app, name="harvest.fetch")
    def fetch(url): ...          # each run is one API call, taken from this host's allowance first

    fetch.apply_async(("https://...",), queue=runtime.queue_for("laptop_task"))   # to laptop's queue

In a Django project the same two lines go into `proj/celery.py` (`app = Celery("proj")`, then
`runtime.configure(app)` and `app.autodiscover_tasks()`); `DJANGO_SETTINGS_MODULE` comes from
`celery_worker_app_environment`. The host's settings win over Django's CELERY_* settings: the broker, queues
and reliability choices are the cluster's, not one app's.
"""

import functools
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from fetcher import logs, metrics, worker
from fetcher.backoff import retry_delay
from fetcher.celeryconfig import build_config
from fetcher.governor import QuotaExhausted
from fetcher.quota import QuotaSpent, counter_for
from fetcher.routing import delivered_queue
from fetcher.routing import queue_for as _queue_for
from fetcher.settings import Settings, beat_config_path, config_path, load_settings

_configured: Settings | None = None


def configure(app: Celery, settings: Settings | None = None) -> Settings:
    """Configure `app` from this host's settings (read from `FETCHER_CONFIG` unless given) and return them.

    Celery's configuration (brokers, queues, routing, acks, retries, dead-lettering, beat's lock), the app's
    logging, the worker's start hook (its queues, and the quota queues left out while the allowance is spent),
    and its tasks' metrics (`fetcher.metrics`). A bad settings file stops here with a ConfigError naming the key.
    """
    global _configured
    if settings is None:
        settings = load_settings(config_path(), beat_config_path())
    app.conf.update(build_config(settings))
    logs.install(settings.logging)
    worker.install(app, settings)
    metrics.install(app, settings)
    _configured = settings
    return settings


def configured() -> Settings:
    """This process's settings: those `configure` applied, or read from the host's file if it never ran."""
    global _configured
    if _configured is None:
        _configured = load_settings(config_path(), beat_config_path())
    return _configured


def queue_for(routing_key: str) -> str:
    """The queue bound with `routing_key` (a host's `<name>_task`, or a shared queue's key), to send a task to
    with `apply_async(queue=...)`. A key no queue has is an error, never a message dropped as unroutable."""
    return _queue_for(configured().routing, routing_key)


def take_api_call() -> None:
    """Take one call from this host's API allowance (nothing to take on a host without one); `QuotaSpent` if
    none is left in this window. `api_task` does this before each run."""
    settings = configured()
    if settings.quota is not None:
        _counter(settings.quota).take()


@functools.cache
def _counter(quota):
    return counter_for(quota)


def api_task(app: Celery, *, take_call: bool = True, **options: Any) -> Callable:
    """A task decorator for work that spends the API allowance: each run takes one call first (unless the
    task takes its own, `take_call=False`). With the allowance spent, a message from one of the host's quota
    queues goes back unrun, after the worker stopped consuming that queue (`fetcher.governor`), so another
    host takes it, or this one after the reset; from any other queue it is retried when the window resets.
    Other options are Celery's (`name`, `bind`, `max_retries`...)."""
    bound = options.pop("bind", False)

    def decorate(function: Callable) -> Any:
        @functools.wraps(function)
        def run(self, *args: Any, **kwargs: Any) -> Any:
            settings = configured()
            try:
                if take_call:
                    take_api_call()
                return function(self, *args, **kwargs) if bound else function(*args, **kwargs)
            except QuotaSpent as exc:
                queue = delivered_queue(settings.routing, (self.request.delivery_info or {}).get("routing_key"))
                if settings.quota is not None and queue in settings.quota.queues:
                    raise QuotaExhausted(str(exc)) from None
                ceiling = settings.api.max_reset_wait if settings.api is not None else 3600
                wait = exc.reset_at - time.time()
                raise self.retry(exc=exc, countdown=max(1, retry_delay(0, ceiling, wait))) from exc

        options.setdefault("max_retries", configured().worker.max_retries)
        return app.task(bind=True, Request="fetcher.governor:QuotaRequest", **options)(run)

    return decorate
