"""The app's metrics for Prometheus, recorded where things happen: task outcomes and run times in the worker,
beat's sends in beat. `fetcher-metrics` (`fetcher.metrics_server`) serves them with the host's API allowance.

The worker is many processes: Celery's prefork pool runs each task in a child process, and replaces a child after
`max_tasks_per_child` tasks. A counter kept in one child's memory would be lost with it, and a scrape could only
ever reach one process. So the units set PROMETHEUS_MULTIPROC_DIR (the worker `<[metrics] directory>/worker`,
beat `<directory>/beat`), which makes prometheus_client keep each process's values in a file of its own there,
under its pid; the exporter adds the files up (counters and histograms are summed over every file, also those of
children long gone, so nothing a recycled child counted is lost). Without the variable (the tests, the demo) the
values are ordinary in-process ones. The variable must be set before the process starts, as the units do:
prometheus_client reads it once, when it is first imported. The units also empty their directory at each start,
so the files of processes long gone do not pile up (counters then restart from zero, which Prometheus handles).

The names are a contract with the alert rules; the README's "Metrics" lists them. Every receiver is connected
once for the process (`weak=False`) and counts only the tasks of the apps that `fetcher.runtime.configure` set up,
the bundled one and an operator's own alike. Outcomes:

- `succeeded`: the task returned (Celery's `task_success`, in the pool's child).
- `retried`: it asked to run again later (`task_retry`, in the child); its next run counts again.
- `dead_lettered`: it failed for good, and the worker rejects its message without requeue, so RabbitMQ moves it
  to the dead-letter queue (`task_failure`, in the child, or in the main process for a lost child past its
  retries and a `Reject(requeue=False)`). A hard time limit is not: Celery requeues that message.
- `returned_unrun`: it found the host's API allowance spent before its call (`QuotaExhausted`), and its message
  goes back unrun, to another host or to wait for the reset (`fetcher.governor`). Counted as its run ends, in the
  child, where it is certain: the main process returns every such message, whichever way it can.
"""

import logging
import os
import time
import weakref
from pathlib import Path

from celery import Celery, states
from celery.exceptions import Reject, TimeLimitExceeded
from celery.signals import celeryd_after_setup, task_failure, task_postrun, task_prerun, task_retry, task_success
from prometheus_client import Counter, Gauge, Histogram

from fetcher.config_reader import ConfigError
from fetcher.governor import QuotaExhausted
from fetcher.settings import Settings

logger = logging.getLogger("fetcher.metrics")

# The environment variable that puts prometheus_client in multiprocess mode, naming the directory of the files.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

OUTCOMES = ("succeeded", "retried", "dead_lettered", "returned_unrun")

# Run times of API calls and the small tasks around them: from 10 ms to a minute (a longer one is in +Inf).
RUNTIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

TASKS = Counter(
    "fetcher_tasks_total",
    "Task runs by how they ended: succeeded, retried, dead_lettered (failed for good), returned_unrun "
    "(allowance spent)",
    ["task", "outcome"],
)
RUNTIME = Histogram(
    "fetcher_task_runtime_seconds",
    "Seconds each task run took in the worker, whatever its outcome",
    ["task"],
    buckets=RUNTIME_BUCKETS,
)
# "mostrecent": of the values in several files (beat restarted, a new pid), the one set last wins.
BEAT_LAST_SEND = Gauge(
    "fetcher_beat_last_send_timestamp_seconds",
    "When beat last sent the entry, or took the beat lock (each period starts afresh then), in Unix time",
    ["entry"],
    multiprocess_mode="mostrecent",
)
BEAT_PERIOD = Gauge(
    "fetcher_beat_period_seconds",
    "The entry's period: beat sends it every this many seconds while it holds the beat lock",
    ["entry"],
    multiprocess_mode="mostrecent",
)

# The apps whose tasks are counted (those `fetcher.runtime.configure` set up); weak, so a test's app can go.
_apps: "weakref.WeakSet[Celery]" = weakref.WeakSet()
# When each task run of this process started (task id -> time.monotonic()).
_started: dict[str, float] = {}
_connected = False


def install(app: Celery, settings: Settings) -> None:
    """Count the tasks of `app` (its worker's runs, in whichever process they happen).

    With PROMETHEUS_MULTIPROC_DIR set, its directory is created if missing (a ConfigError if it cannot be), and a
    directory that `fetcher-metrics` does not read is logged as a warning.
    """
    global _connected
    _prepare_directory(settings)
    _apps.add(app)
    if not _connected:
        task_prerun.connect(_on_prerun, weak=False)
        task_postrun.connect(_on_postrun, weak=False)
        task_success.connect(_on_success, weak=False)
        task_retry.connect(_on_retry, weak=False)
        task_failure.connect(_on_failure, weak=False)
        celeryd_after_setup.connect(_on_worker_setup, weak=False)
        _connected = True


def start_counts_at_zero(app: Celery) -> None:
    """Give every task of `app` (Celery's own aside) a series per outcome, at 0: an alert on an increase, the
    first dead letter of a task included, needs a value from before it (Prometheus' increase() sees none of a new
    series' first sample)."""
    for name in sorted(app.tasks):
        if not name.startswith("celery."):
            for outcome in OUTCOMES:
                TASKS.labels(name, outcome)


def _on_worker_setup(sender=None, instance=None, **_) -> None:
    app = getattr(instance, "app", None)
    if app in _apps:
        start_counts_at_zero(app)


def record_beat_send(entry: str, timestamp: float, period: float | None) -> None:
    """Beat sent `entry` (or started its period afresh) at `timestamp`; `period` in seconds, None if it has none."""
    BEAT_LAST_SEND.labels(entry).set(timestamp)
    if period is not None:
        BEAT_PERIOD.labels(entry).set(period)


def _prepare_directory(settings: Settings) -> None:
    value = os.environ.get(MULTIPROC_VARIABLE)
    if not value:
        return
    directory = Path(value)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{MULTIPROC_VARIABLE}: cannot create the directory {directory}: {exc.strerror}") from None
    metrics = settings.metrics
    if metrics is not None and directory not in (metrics.worker_directory, metrics.beat_directory):
        logger.warning(
            "%s is %s, but fetcher-metrics reads %s and %s ([metrics] directory in %s): these metrics go unseen",
            MULTIPROC_VARIABLE,
            directory,
            metrics.worker_directory,
            metrics.beat_directory,
            settings.source,
        )


def _ours(task: object) -> bool:
    return getattr(task, "app", None) in _apps


def _count(task, outcome: str) -> None:
    TASKS.labels(task.name, outcome).inc()


def _on_prerun(sender=None, task_id=None, **_) -> None:
    if _ours(sender) and task_id is not None:
        _started[task_id] = time.monotonic()


def _on_postrun(sender=None, task_id=None, retval=None, state=None, **_) -> None:
    if not _ours(sender):
        return
    started = _started.pop(task_id, None)
    if started is not None:
        RUNTIME.labels(sender.name).observe(time.monotonic() - started)
    if state == states.REJECTED and isinstance(retval, QuotaExhausted):
        _count(sender, "returned_unrun")


def _on_success(sender=None, **_) -> None:
    if _ours(sender):
        _count(sender, "succeeded")


def _on_retry(sender=None, **_) -> None:
    if _ours(sender):
        _count(sender, "retried")


def _on_failure(sender=None, exception=None, **_) -> None:
    if _ours(sender) and _dead_lettered(sender, exception):
        _count(sender, "dead_lettered")


def _dead_lettered(task, exception: BaseException | None) -> bool:
    """Whether the worker rejects a failed task's message without requeue, so RabbitMQ dead-letters it.

    As Celery's `Request.on_failure` decides: a `Reject` as it says; a hard time limit is requeued (or acknowledged,
    with `acks_on_timeout`); any other failure of a late-acknowledged task is rejected unless `acks_on_failure`
    (this cluster sets both to False: `task_acks_on_failure_or_timeout`).
    """
    if isinstance(exception, Reject):
        return not exception.requeue
    if isinstance(exception, TimeLimitExceeded):
        return False
    acks_on_failure = getattr(task, "acks_on_failure", None)
    if acks_on_failure is None:
        acks_on_failure = getattr(task, "acks_on_failure_or_timeout", True)
    return bool(getattr(task, "acks_late", False)) and not acks_on_failure
