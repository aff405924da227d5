"""The beat lock and the scheduler behind it: a beat sends only while it holds the lock.

There is no broker here: the scheduler is tested with a fake lock whose state the test sets, and the
lock's thread with fake connections to a fake broker that knows which connection has the exclusive queue.
The Molecule scenarios run the real lock against RabbitMQ.
"""

import logging
import time
from collections import deque
from datetime import UTC, datetime, timedelta

import pytest
from amqp.exceptions import ConnectionForced, ResourceLocked
from celery.apps.beat import Beat
from celery.beat import Service
from fetcher.beat import HELD_INTERVAL, WAIT_INTERVAL, LockedScheduler
from fetcher.beatlock import LOCK_HEARTBEAT, BeatLock, lock_connection, lock_name
from fetcher.broker import broker_urls
from fetcher.celeryconfig import build_config
from fetcher.settings import load_settings
from kombu.exceptions import OperationalError
from sample_config import EXAMPLE

NAME = "tasks.beat.lock"
ENTRY = "fan-out-to-laptop"  # the example's one entry: every 30 s


# --- the scheduler, with a fake lock -------------------------------------------------------------


class FakeLock:
    """A lock whose state the test sets: `take` is a new hold (a new generation), `lapse`/`renew` keep it."""

    name = NAME

    def __init__(self):
        self.generation = 0
        self.is_held = False
        self.started = self.stopped = False

    def take(self):
        self.generation += 1
        self.is_held = True

    def lose(self):
        self.is_held = False

    def renew(self):
        self.is_held = True

    def holding(self):
        return self.generation if self.is_held else None

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True
        self.is_held = False


class Now:
    """Celery's clock (`app.now`), moved by the test."""

    def __init__(self):
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


class RecordingScheduler(LockedScheduler):
    """Records what it would send instead of publishing it; Celery's own log line is still written."""

    def __init__(self, *args, **kwargs):
        self.sent = []
        super().__init__(*args, **kwargs)
        self.__dict__["producer"] = None  # no broker connection

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        self.sent.append(entry.name)


@pytest.fixture
def now(fetcher_app, monkeypatch):
    clock = Now()
    monkeypatch.setattr(fetcher_app.app, "now", clock)
    return clock


@pytest.fixture
def lock():
    return FakeLock()


@pytest.fixture
def scheduler(fetcher_app, now, lock, tmp_path):
    scheduler = RecordingScheduler(
        app=fetcher_app.app, schedule_filename=str(tmp_path / "celerybeat-schedule"), lock=lock
    )
    yield scheduler
    scheduler.close()


def test_the_app_uses_the_locked_scheduler_with_its_schedule_file(fetcher_app, tmp_path):
    path = tmp_path / "fetcher.toml"
    path.write_text(EXAMPLE)
    assert build_config(load_settings(path))["beat_scheduler"] == "fetcher.beat:LockedScheduler"

    # What `celery beat --schedule FILE` builds: its scheduler class comes from the configuration.
    beat = Beat(app=fetcher_app.app, schedule=str(tmp_path / "schedule"), quiet=True)
    service = Service(fetcher_app.app, scheduler_cls=beat.scheduler_cls, schedule_filename=beat.schedule)
    banner = service.get_scheduler(lazy=True)  # what `celery beat` prints its banner from
    assert isinstance(banner, LockedScheduler) and banner.schedule_filename == str(tmp_path / "schedule")
    assert banner._lock is None, "a lazy scheduler takes no lock"


def test_setting_up_the_schedule_starts_the_lock_and_closing_stops_it(scheduler, lock):
    assert lock.started and not lock.stopped
    scheduler.close()
    assert lock.stopped


def test_nothing_is_sent_while_the_lock_is_not_held(scheduler, now):
    now.advance(300)

    assert [scheduler.tick() for _ in range(3)] == [WAIT_INTERVAL] * 3
    assert scheduler.sent == []


def test_taking_the_lock_starts_every_period_afresh(scheduler, lock, now):
    now.advance(300)  # long overdue: the beat that held the lock before may have just sent it
    lock.take()

    assert scheduler.tick() == HELD_INTERVAL
    assert scheduler.sent == [], "not sent right after taking the lock"
    now.advance(29.9)
    scheduler.tick()
    assert scheduler.sent == []

    now.advance(0.1)
    assert scheduler.tick() == 0
    assert scheduler.sent == [ENTRY], "one full period after taking the lock"


def test_while_held_it_sends_every_period_and_ticks_at_least_every_second(scheduler, lock, now):
    lock.take()
    scheduler.tick()
    for _ in range(3):
        now.advance(30)
        while scheduler.tick() == 0:
            pass
    assert scheduler.sent == [ENTRY] * 3
    assert scheduler.tick() == HELD_INTERVAL, "nothing due for 30 s, yet the lock is checked within a second"


def test_sending_stops_once_the_lock_is_lost_and_restarts_afresh_when_retaken(scheduler, lock, now):
    lock.take()
    scheduler.tick()
    now.advance(30)
    scheduler.tick()
    assert scheduler.sent == [ENTRY]

    lock.lose()
    now.advance(90)
    assert scheduler.tick() == WAIT_INTERVAL
    assert scheduler.sent == [ENTRY]

    lock.take()  # a new generation: another beat may have held it and sent meanwhile
    scheduler.tick()
    assert scheduler.sent == [ENTRY]
    now.advance(30)
    scheduler.tick()
    assert scheduler.sent == [ENTRY, ENTRY]


def test_a_lapsed_lease_renewed_on_the_same_hold_sends_what_fell_due(scheduler, lock, now):
    lock.take()
    scheduler.tick()
    lock.lose()
    now.advance(40)
    scheduler.tick()
    assert scheduler.sent == []

    lock.renew()  # the same generation: no other beat can have held the lock
    scheduler.tick()
    assert scheduler.sent == [ENTRY]


def test_state_changes_are_logged_once_and_celerys_send_line_is_kept(scheduler, lock, now, caplog):
    caplog.set_level(logging.INFO)
    for _ in range(3):
        scheduler.tick()
    lock.take()
    now.advance(30)
    for _ in range(3):
        scheduler.tick()
    now.advance(30)
    scheduler.tick()

    messages = [record.getMessage() for record in caplog.records]
    assert messages.count(f"not holding the beat lock {NAME}: sending nothing") == 1
    assert messages.count(f"sending the periodic tasks (holding the beat lock {NAME})") == 1
    assert sum(message.startswith(f"took the beat lock {NAME}") for message in messages) == 1
    assert messages.count(f"Scheduler: Sending due task {ENTRY} (fetcher.tasks.fan_out)") == 1


# --- the lock's thread, with fake connections --------------------------------------------------


class FakeBroker:
    """Which connection has the exclusive queue, whether nodes answer, and whether pings come back."""

    def __init__(self):
        self.holder = None
        self.reachable = True
        self.answers = True
        self.declares = 0
        self.connections = []


class FakeConnection:
    """The kombu Connection calls BeatLock makes, against a FakeBroker."""

    alt = ["amqp://server:5672/v", "amqp://laptop:5672/v"]

    def __init__(self, broker):
        self.broker = broker
        self.broken = None
        self.closed = None
        self.pending = deque()
        self.retries = None
        broker.connections.append(self)

    def ensure_connection(self, max_retries=None):
        self.retries = max_retries
        if not self.broker.reachable:
            raise OperationalError("[Errno 111] Connection refused")
        return self

    def get_heartbeat_interval(self):
        return float(LOCK_HEARTBEAT)

    def channel(self):
        return FakeChannel(self)

    def heartbeat_check(self):
        if self.broken:
            raise self.broken

    def drain_events(self, timeout):
        if self.broken:
            raise self.broken
        if self.pending and self.broker.answers:
            callback, message = self.pending.popleft()
            callback(message)
            return
        time.sleep(min(timeout, 0.002))
        raise TimeoutError("timed out")

    def release(self):
        self._close("released")

    def collect(self):
        self._close("collected")

    def _close(self, how):
        self.closed = how
        if self.broker.holder is self:
            self.broker.holder = None  # RabbitMQ deletes an exclusive queue with its connection


class FakeChannel:
    def __init__(self, connection):
        self.connection = connection
        self.callback = None

    def queue_declare(self, queue, exclusive, auto_delete, durable):
        assert (queue, exclusive, auto_delete, durable) == (NAME, True, True, False)
        broker = self.connection.broker
        broker.declares += 1
        if broker.holder not in (None, self.connection):
            raise ResourceLocked("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue", (50, 10))
        broker.holder = self.connection

    def basic_consume(self, queue, no_ack, callback):
        assert (queue, no_ack) == (NAME, True)
        self.callback = callback

    def basic_publish(self, message, exchange, routing_key):
        assert (exchange, routing_key) == ("", NAME), "a ping goes to the lock's own queue"
        self.connection.pending.append((self.callback, message))


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Witness(logging.Handler):
    """Records, with each log line of the lock, whether the lock was held when it was written."""

    def __init__(self, lock):
        super().__init__()
        self.beat_lock = lock
        self.lines = []

    def emit(self, record):
        self.lines.append((record.getMessage(), self.beat_lock.held))


def eventually(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


@pytest.fixture
def broker():
    return FakeBroker()


@pytest.fixture
def new_lock(broker, caplog):
    """Locks over the fake broker, retrying every 10 ms, stopped after the test."""
    caplog.set_level(logging.INFO, logger="fetcher.beat")
    locks = []

    def new(clock=time.monotonic):
        lock = BeatLock(NAME, lambda: FakeConnection(broker), clock=clock, retry_interval=0.01)
        locks.append(lock)
        return lock

    yield new
    for lock in locks:
        lock.stop()


def messages(caplog, text):
    return [record for record in caplog.records if text in record.getMessage()]


def test_the_lock_is_a_queue_named_after_the_exchange_on_its_own_connection(tmp_path):
    path = tmp_path / "fetcher.toml"
    path.write_text(EXAMPLE)
    settings = load_settings(path)

    assert lock_name(settings.routing) == NAME
    connection = lock_connection(settings)
    assert connection.alt == broker_urls(settings.broker), "every node, the local one first"
    assert (connection.heartbeat, connection.connect_timeout) == (LOCK_HEARTBEAT, 10)
    assert BeatLock.for_settings(settings).name == NAME


def test_it_takes_a_free_lock_and_stop_frees_it(new_lock, broker, caplog):
    lock = new_lock()
    assert not lock.held and lock.holding() is None
    lock.start()

    assert lock.wait(5)
    [connection] = broker.connections
    assert broker.holder is connection and connection.retries == 1, "each of the two nodes once per round"
    assert (lock.generation, lock.holding()) == (1, 1)
    eventually(lambda: messages(caplog, f"holding the beat lock {NAME}"))

    lock.stop()
    assert not lock.held
    assert connection.closed == "released" and broker.holder is None, "a clean close frees the lock at once"


def test_while_another_beat_holds_it_it_waits_and_retries_on_the_same_connection(new_lock, broker, caplog):
    broker.holder = "another beat"
    lock = new_lock()
    lock.start()

    eventually(lambda: broker.declares >= 3)
    assert not lock.held and lock.holding() is None and lock.generation == 0
    assert len(broker.connections) == 1, "the connection stays open (with heartbeats) between attempts"
    assert len(messages(caplog, f"another beat holds the lock {NAME}; waiting, sending nothing")) == 1

    broker.holder = None  # the other beat is gone and RabbitMQ deleted its queue
    assert lock.wait(5)
    assert lock.generation == 1


def test_two_beats_one_lock(new_lock, broker):
    first, second = new_lock(), new_lock()
    first.start()
    assert first.wait(5)
    second.start()
    eventually(lambda: broker.declares >= 3)
    assert first.held and not second.held

    first.stop()
    assert second.wait(5)
    assert not first.held


def test_while_no_node_answers_it_holds_nothing_warns_once_and_retries(new_lock, broker, caplog):
    broker.reachable = False
    lock = new_lock()
    lock.start()

    eventually(lambda: len(broker.connections) >= 3)
    assert not lock.held
    assert len(messages(caplog, f"cannot take the beat lock {NAME}")) == 1
    assert all(connection.closed == "collected" for connection in broker.connections[:-1])

    broker.reachable = True
    assert lock.wait(5)


def test_a_failing_connection_clears_the_lock_before_anything_is_logged_then_it_is_taken_again(
    new_lock, broker, caplog
):
    lock = new_lock()
    witness = Witness(lock)
    logging.getLogger("fetcher.beat").addHandler(witness)
    try:
        lock.start()
        assert lock.wait(5)
        [first] = broker.connections
        first.broken = ConnectionForced("Too many heartbeats missed")

        eventually(lambda: lock.generation == 2)
    finally:
        logging.getLogger("fetcher.beat").removeHandler(witness)

    [lost] = [(line, held) for line, held in witness.lines if line.startswith("lost the beat lock")]
    assert lost == (f"lost the beat lock {NAME} (Too many heartbeats missed); trying to take it again", False)
    assert first.closed == "collected", "a failed connection is dropped without waiting for the broker"
    assert broker.holder is broker.connections[-1] and lock.held


def held_on_a_fake_clock(new_lock):
    """A started lock that holds, and the fake clock it reads."""
    clock = FakeClock()
    lock = new_lock(clock)
    lock.start()
    assert lock.wait(5)
    return lock, clock


def test_the_lease_lapses_without_answers_and_returns_with_them_on_the_same_hold(new_lock, broker, caplog):
    lock, clock = held_on_a_fake_clock(new_lock)

    broker.answers = False
    clock.now += LOCK_HEARTBEAT - 1
    eventually(lambda: broker.connections[0].pending)  # a ping on its way, not answered
    assert lock.held, "the last answered ping keeps the lease"
    clock.now += 1.5
    assert not lock.held and lock.holding() is None, "the lease ran out: nothing may be sent"
    eventually(lambda: messages(caplog, "no answer from the broker for 10 s"))

    broker.answers = True
    eventually(lambda: lock.held)
    assert lock.generation == 1, "the same connection, so the same hold"
    eventually(lambda: messages(caplog, "the broker answers again"))
    assert len(messages(caplog, "no answer from the broker")) == 1


def test_stop_ends_the_thread(new_lock):
    lock = new_lock()
    lock.start()
    assert lock.wait(5)
    lock.stop()
    assert not lock._thread.is_alive()


def test_a_connection_that_stays_silent_is_given_up_for_a_new_one(new_lock, broker, caplog):
    lock, clock = held_on_a_fake_clock(new_lock)
    broker.answers = False

    clock.now += 3 * LOCK_HEARTBEAT - 1
    eventually(lambda: messages(caplog, "no answer from the broker for 10 s"))
    assert len(broker.connections) == 1
    clock.now += 1
    eventually(lambda: len(broker.connections) == 2)
    assert messages(caplog, f"lost the beat lock {NAME} (no answer from the broker for 30 s)")
    assert broker.connections[0].closed == "collected"

    broker.answers = True
    eventually(lambda: lock.held)
    assert lock.generation == 2
