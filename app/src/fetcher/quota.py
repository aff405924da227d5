"""This host's API allowance: a counter shared by every worker process, kept in a SQLite file.

Each API call takes one unit from the counter *before* the request is made (`QuotaCounter.take`); when
the window's allowance is spent, `take` refuses and no request is made, so the host never makes more
calls in a window than its allowance, however many worker processes it runs. The count lives in a file
(`[quota] state_file`), so a worker restarted mid-window finds what it had already used.

Why SQLite: it is the well-kept library for exactly this, an atomic read-modify-write shared by several
processes, durable across restarts, in Python's standard library and with nothing to run beside the
worker. `BEGIN IMMEDIATE` serialises the increments; the default rollback journal (not WAL) means a
reader such as `fetcher-quota`, run as root, creates no side files the service user could not write.

Windows are fixed and aligned to the Unix epoch (a 3600 s window starts on the hour), as APIs that
report an `X-RateLimit-Reset` count them; the clock is injectable so tests can move time.

The worker's main process also records here whether it is consuming its quota queues (`set_consuming`),
so an operator can read the whole picture with `fetcher-quota`.
"""

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fetcher.settings import QuotaSettings

# Seconds before a window ends from which a call counts in the next window too: it may reach the API after
# the roll-over, and the API counts it when it arrives. Hosts and API are expected to keep time by NTP.
BOUNDARY_GUARD = 1.0

# Past windows kept for the record (an operator can see the last ones); older rows are deleted.
KEEP_WINDOWS = 48

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (start INTEGER PRIMARY KEY, used INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS consumer (
    id INTEGER PRIMARY KEY CHECK (id = 1), consuming INTEGER NOT NULL, since REAL NOT NULL, pid INTEGER NOT NULL
);
"""


class QuotaSpent(Exception):
    """The allowance of the current window is used up; it comes back at `reset_at` (epoch seconds)."""

    def __init__(self, message: str, reset_at: float) -> None:
        # Both in args, so the exception survives pickling (the worker pool sends it to the main process).
        super().__init__(message, reset_at)
        self.message, self.reset_at = message, reset_at

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class QuotaStatus:
    """The current window as an operator wants to see it."""

    allowance: int
    used: int
    window_start: int
    reset_at: int
    # Whether the worker consumes its quota queues: None when no worker has said so yet.
    consuming: bool | None
    consuming_since: float | None
    worker_pid: int | None

    @property
    def remaining(self) -> int:
        return max(self.allowance - self.used, 0)

    def worker_consuming(self) -> bool:
        """Whether the worker consumes its quota queues now: as it recorded, and only while the process that
        recorded it runs (a killed worker cannot record that it stopped)."""
        return bool(self.consuming) and process_running(self.worker_pid)


class QuotaCounter:
    """Calls per fixed window, shared through one SQLite file by every process of the host.

    Each process opens its own connection on first use (and again after a fork: a SQLite connection
    must not cross one), so one counter object can be created before the worker forks its pool.
    """

    def __init__(
        self,
        path: Path,
        allowance: int,
        window: int,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.allowance = allowance
        self.window = window
        self._clock = clock
        self._read_only = read_only
        self._db: sqlite3.Connection | None = None
        self._pid = 0

    def now(self) -> float:
        """The counter's clock (the wall clock, but for tests)."""
        return self._clock()

    def window_start(self, now: float | None = None) -> int:
        """The start of the window `now` (default: the clock's time) falls in."""
        now = self._clock() if now is None else now
        return int(now // self.window) * self.window

    def take(self) -> None:
        """Take one call from this window's allowance, or raise QuotaSpent without taking anything.

        A call taken in the last `BOUNDARY_GUARD` seconds of a window may reach the API after the window
        rolled over, so it counts in both windows and needs room in both.
        """
        now = self._clock()
        start = self.window_start(now)
        windows = [start]
        if now + BOUNDARY_GUARD >= start + self.window:
            windows.append(start + self.window)
        db = self._connection()
        marks = ", ".join("?" * len(windows))
        with _immediate(db):
            db.executemany(
                "INSERT INTO windows (start, used) VALUES (?, 0) ON CONFLICT DO NOTHING", [(w,) for w in windows]
            )
            full = [
                window
                for (window,) in db.execute(
                    f"SELECT start FROM windows WHERE start IN ({marks}) AND used >= ?", (*windows, self.allowance)
                )
            ]
            if not full:
                db.execute(f"UPDATE windows SET used = used + 1 WHERE start IN ({marks})", windows)
            db.execute("DELETE FROM windows WHERE start < ?", (start - KEEP_WINDOWS * self.window,))
        if full:
            reset_at = max(full) + self.window
            raise QuotaSpent(
                f"API allowance spent: {self.allowance} calls in the window ending at {utc_time(reset_at)}",
                reset_at=reset_at,
            )

    def spend_all(self) -> None:
        """Mark this window's allowance as used up: the API said so (a 429), whatever we counted."""
        start = self.window_start()
        db = self._connection()
        with _immediate(db):
            db.execute(
                "INSERT INTO windows (start, used) VALUES (?, ?) ON CONFLICT DO UPDATE SET used = MAX(used, ?)",
                (start, self.allowance, self.allowance),
            )

    def set_consuming(self, consuming: bool) -> None:
        """Record whether this host's worker consumes its quota queues (the worker's main process calls it)."""
        db = self._connection()
        with _immediate(db):
            db.execute(
                "INSERT INTO consumer (id, consuming, since, pid) VALUES (1, ?, ?, ?) ON CONFLICT DO UPDATE"
                " SET consuming = excluded.consuming, since = excluded.since, pid = excluded.pid",
                (int(consuming), self._clock(), os.getpid()),
            )

    def status(self) -> QuotaStatus:
        """The current window's allowance, use and reset time, and whether the worker consumes."""
        start = self.window_start()
        db = self._connection()
        row = db.execute("SELECT used FROM windows WHERE start = ?", (start,)).fetchone()
        consumer = db.execute("SELECT consuming, since, pid FROM consumer WHERE id = 1").fetchone()
        return QuotaStatus(
            allowance=self.allowance,
            used=row[0] if row else 0,
            window_start=start,
            reset_at=start + self.window,
            consuming=bool(consumer[0]) if consumer else None,
            consuming_since=consumer[1] if consumer else None,
            worker_pid=consumer[2] if consumer else None,
        )

    def history(self) -> list[tuple[int, int]]:
        """(window start, calls used) of the windows still on record, oldest first."""
        return list(self._connection().execute("SELECT start, used FROM windows ORDER BY start"))

    def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            if self._read_only:
                # An outside reader (fetcher-quota, as root) must neither create the file nor write beside it.
                db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
            else:
                # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), none begins implicitly.
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.executescript(_SCHEMA)
            self._db, self._pid = db, os.getpid()
        return self._db


class _immediate:
    """A write transaction that takes the database's write lock at once, so increments never interleave."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def process_running(pid: int | None) -> bool:
    """Whether a process `pid` runs on this host (one of another user's counts: it exists)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def utc_time(epoch: float) -> str:
    """An epoch time as the logs and fetcher-quota show it."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(epoch))


def counter_for(settings: QuotaSettings, clock: Callable[[], float] = time.time) -> QuotaCounter:
    """The host's counter as `[quota]` describes it."""
    return QuotaCounter(settings.state_file, settings.allowance, settings.window, clock)
