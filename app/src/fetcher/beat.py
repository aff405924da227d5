"""Beat's scheduler: Celery's own, sending only while this beat holds the beat lock (`fetcher.beatlock`).

`LockedScheduler` is Celery's `PersistentScheduler` (so `--schedule FILE` still names its file), with the lock
taken in the background from the moment the schedule is set up, and two changes to `tick`:

- **Nothing is sent without the lock.** While the lock is not held, a tick sends nothing and the next comes
  after `WAIT_INTERVAL`. While it is held, ticks are at most `HELD_INTERVAL` apart, so a beat whose lock
  lapses or is lost stops sending within about a second.
- **Every period starts afresh when the lock is taken,** at start and again after a loss (a new generation
  of the lock): before anything is sent, each entry's last run is set to now, so its next send is one full
  period after this beat took the lock. The beat that held the lock before may have sent any entry just
  before it lost it, so an entry is never sent twice within one period across a move; the cost is at most
  one period without a send. A lapse of the lease alone keeps the generation (no other beat can have held
  the lock meanwhile), and what fell due during it is sent when the lease is renewed.

Celery's own line for each send, `Scheduler: Sending due task NAME (TASK)`, is unchanged.

For Prometheus (`fetcher.metrics`), each entry's last send and its period: set when Celery has sent it, and for
every entry when the lock is taken, as each period starts afresh then: an entry is overdue (beat silent) only
once a period has passed since the later of the two.
"""

import logging
from datetime import timedelta
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry

from fetcher import metrics
from fetcher.beatlock import BeatLock

logger = logging.getLogger("fetcher.beat")

# Seconds between two ticks while the lock is not held, and at most while it is.
WAIT_INTERVAL = 1.0
HELD_INTERVAL = 1.0


class LockedScheduler(PersistentScheduler):
    """Celery's persistent scheduler, sending only while this beat holds the beat lock.

    `lock` replaces the lock of the host's configuration (the tests pass a fake one).
    """

    def __init__(self, *args: Any, lock: BeatLock | None = None, **kwargs: Any) -> None:
        self._lock = lock
        # The lock generation whose periods the schedule was started afresh for, and whether it sends.
        self._generation: int | None = None
        self._sending: bool | None = None
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        # Called once, and only in the scheduler that runs (Celery also makes lazy ones, to print its banner).
        super().setup_schedule()
        if self._lock is None:
            # Imported here, in the running beat: importing this module must not read the host's file.
            from fetcher.runtime import configured

            settings = configured()

            self._lock = BeatLock.for_settings(settings)
        self._lock.start()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        generation = self._lock.holding() if self._lock is not None else None
        if generation is None:
            self._report(sending=False)
            return WAIT_INTERVAL
        if generation != self._generation:
            self._start_afresh()
            self._generation = generation
        self._report(sending=True)
        return min(super().tick(*args, **kwargs), HELD_INTERVAL)

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        # Where Celery's apply_entry sends an entry (it logs and swallows an error, which then records nothing).
        result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        metrics.record_beat_send(entry.name, self.app.now().timestamp(), _period(entry))
        return result

    def close(self) -> None:
        # The lock first: this beat stops sending, and another may take over as soon as the queue is gone.
        if self._lock is not None:
            self._lock.stop()
        super().close()

    def _start_afresh(self) -> None:
        """Set every entry's last run to now, so each is next sent a full period from now."""
        entries = list(self.schedule.values())
        for entry in entries:
            entry.last_run_at = entry.default_now()
            metrics.record_beat_send(entry.name, entry.last_run_at.timestamp(), _period(entry))
        self.populate_heap()
        logger.info(
            "took the beat lock %s: the periods of %d entries start now, each sends a full period from now",
            self._lock.name,
            len(entries),
        )

    def _report(self, sending: bool) -> None:
        """Log when this beat starts or stops sending."""
        if sending == self._sending:
            return
        self._sending = sending
        if sending:
            logger.info("sending the periodic tasks (holding the beat lock %s)", self._lock.name)
        else:
            logger.info("not holding the beat lock %s: sending nothing", self._lock.name)


def _period(entry: ScheduleEntry) -> float | None:
    """The entry's period in seconds; None for a schedule without one (a crontab's intervals vary)."""
    run_every = getattr(entry.schedule, "run_every", None)
    return run_every.total_seconds() if isinstance(run_every, timedelta) else None
