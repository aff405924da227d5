"""The beat lock: whichever hosts have a beat running, only the one holding the lock sends.

The inventory puts beat on one host, and moving it stops the old host's beat. But a host that was switched
off during the move is not reached: it comes back later with its unit still enabled, and its beat starts at
boot. Two beats would send every periodic task twice, so a beat sends only while it holds a lock on the
RabbitMQ cluster that all beats share (`fetcher.beat.LockedScheduler` asks `BeatLock` before each send).

- **The lock is an exclusive queue,** `<routing.exchange>.beat.lock` (`tasks.beat.lock`; the exchange is the
  same on every host of one system, and the vhost keeps other systems apart): non-durable, auto-delete,
  declared with `exclusive=True`. RabbitMQ gives an exclusive queue to one connection only, across the
  cluster: any other connection that declares it gets channel error 405 RESOURCE_LOCKED (py-amqp's
  `ResourceLocked`) and this beat waits, sending nothing, and tries again every `RETRY_INTERVAL` seconds.
  Nothing ever has to release it: RabbitMQ deletes the queue when its connection goes, whether beat
  stopped, its process was killed, its host was switched off (the broker notices the missing heartbeats
  2 to 3 `LOCK_HEARTBEAT` intervals after it last heard from it) or the node it was connected to went down
  (once the other nodes notice). Then the next beat to try takes it.
- **One thread, one connection.** A daemon thread owns the lock's connection (its own, with heartbeats; the
  local node first, the others as failover) and nothing else touches it: it takes the lock, then keeps the
  connection alive and proves every `PING_INTERVAL` that the broker still hears it, by publishing a ping to
  its own queue and consuming it. On any error it counts the lock as lost *before* it logs or reconnects,
  and goes back to taking it.
- **A lease, not just a flag.** The lock counts as held only until one heartbeat interval after the last
  ping that came back was sent. The broker cannot delete the queue less than two heartbeat intervals after
  it last heard from the connection (it looks for incoming data once per interval and closes the connection
  after two looks without any), and that ping proves it heard it then, so a beat cut off from its broker
  stops sending before any other beat can take the lock, even while the thread has not yet noticed (or is
  stuck on) a dead connection. A connection silent for `GIVE_UP` more leases is given up for a new one.
- `generation` counts the times the lock was taken. While it stays the same, this beat held the lock all
  along (a lapse of the lease alone does not change it: the connection, and so the queue, stayed); when it
  changes, another beat may have held the lock and sent in between, which the scheduler must allow for.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from amqp import Message
from amqp.exceptions import AMQPError, ResourceLocked
from kombu import Connection
from kombu.exceptions import KombuError

from fetcher.broker import broker_tls, broker_urls
from fetcher.settings import RoutingSettings, Settings

logger = logging.getLogger("fetcher.beat")

# The lock connection's AMQP heartbeat, in seconds, and so the lease after each ping. Not the tasks'
# heartbeat: this one sets how soon the lock is free after its holder vanished (2 to 3 intervals).
LOCK_HEARTBEAT = 10
# Seconds between two pings while the lock is held, and at most between two checks of the connection.
PING_INTERVAL = 1.0
# Seconds between two attempts to take the lock, while another beat holds it or no node answers.
RETRY_INTERVAL = 5.0
# Lease lengths after the lease ran out without an answer before the connection is given up for a new one
# (the broker itself drops a silent connection 2 to 3 heartbeats after it last heard from it).
GIVE_UP = 2


def lock_name(routing: RoutingSettings) -> str:
    """The lock's queue name, the same for every beat of one system."""
    return f"{routing.exchange}.beat.lock"


def lock_connection(settings: Settings) -> Connection:
    """A new connection for the lock, to the cluster's nodes in failover order (the local one first)."""
    return Connection(
        broker_urls(settings.broker),
        ssl=broker_tls(settings.broker),
        heartbeat=LOCK_HEARTBEAT,
        connect_timeout=settings.broker.connect_timeout,
    )


class BeatLock:
    """Takes and holds the beat lock from a daemon thread; `held` says whether this beat may send now.

    `connect` returns a new, unconnected kombu Connection for each attempt; `clock` is monotonic seconds.
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], Connection],
        clock: Callable[[], float] = time.monotonic,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self.name = name
        self.generation = 0
        self._connect = connect
        self._clock = clock
        self._retry_interval = retry_interval
        self._taken = threading.Event()
        self._stopping = threading.Event()
        self._lease = float(LOCK_HEARTBEAT)
        self._lease_until = 0.0
        # The ping on its way (its number and when it was sent), how many were sent, when the next is due.
        self._ping: tuple[int, float] | None = None
        self._pings = 0
        self._ping_due = 0.0
        self._state = ""
        self._thread = threading.Thread(target=self._run, name="beat-lock", daemon=True)

    @classmethod
    def for_settings(cls, settings: Settings) -> "BeatLock":
        """The lock of this host's system, over connections to its broker."""
        return cls(lock_name(settings.routing), lambda: lock_connection(settings))

    @property
    def held(self) -> bool:
        """Whether this beat holds the lock now, with a lease the broker confirmed recently enough."""
        return self._taken.is_set() and self._clock() < self._lease_until

    def holding(self) -> int | None:
        """The generation of the hold in force now, or None while this beat must send nothing."""
        # `held` first: a generation read after it is that hold's or a later one, never an earlier one.
        return self.generation if self.held else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the lock to be taken; whether it is held."""
        self._taken.wait(timeout)
        return self.held

    def start(self) -> None:
        """Start taking the lock, in the background."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending at once, then close the connection, which frees the lock for another beat."""
        self._taken.clear()
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            connection = None
            try:
                connection = self._connect()
                self._session(connection)
            except Exception as exc:  # whatever it was, the lock is not held until taken again
                self._taken.clear()
                self._report_failure(exc)
            finally:
                self._taken.clear()
                if connection is not None:
                    self._close(connection)
            self._stopping.wait(self._retry_interval)

    def _session(self, connection: Connection) -> None:
        """One connection's life: take the lock (waiting while another beat holds it), then keep it."""
        # Every node once, the local one first; the next round starts after RETRY_INTERVAL.
        connection.ensure_connection(max_retries=max(len(connection.alt), 1) - 1)
        self._lease = float(min(connection.get_heartbeat_interval() or LOCK_HEARTBEAT, LOCK_HEARTBEAT))
        channel = connection.channel()
        if self._stopping.is_set():
            return
        while not self._take(channel):
            self._idle(connection, self._retry_interval)
            if self._stopping.is_set():
                return
        try:
            self._keep(connection, channel)
        finally:
            # First of all: no send may rely on a connection that is failing.
            self._taken.clear()

    def _take(self, channel: Any) -> bool:
        """Declare the lock's queue; False if another beat holds it (the channel reopens by itself)."""
        sent = self._clock()
        try:
            channel.queue_declare(queue=self.name, exclusive=True, auto_delete=True, durable=False)
        except ResourceLocked:
            self._log_once(
                "locked", logging.INFO, "another beat holds the lock %s; waiting, sending nothing", self.name
            )
            return False
        channel.basic_consume(queue=self.name, no_ack=True, callback=self._on_ping)
        self._ping, self._ping_due = None, 0.0
        self.generation += 1
        self._lease_until = sent + self._lease
        self._taken.set()
        self._log_once("held", logging.INFO, "holding the beat lock %s", self.name)
        return True

    def _keep(self, connection: Connection, channel: Any) -> None:
        """Keep the connection alive and the lease renewed until stopped or the connection fails."""
        while not self._stopping.is_set():
            next_ping = self._send_ping(channel)
            self._wait_for_events(connection, min(next_ping - self._clock(), PING_INTERVAL))
            if self.held:
                self._log_once("held", logging.INFO, "the broker answers again; holding the beat lock %s", self.name)
            elif not self._stopping.is_set():
                self._log_once(
                    "lapsed",
                    logging.WARNING,
                    "no answer from the broker for %g s; sending nothing until it answers (beat lock %s)",
                    self._lease,
                    self.name,
                )
                if self._clock() >= self._lease_until + GIVE_UP * self._lease:
                    # Whatever keeps the pings from coming back (a connection kombu replaced behind our
                    # back, lost messages), a new connection is the way back to the lock.
                    raise ConnectionError(f"no answer from the broker for {(GIVE_UP + 1) * self._lease:g} s")

    def _send_ping(self, channel: Any) -> float:
        """Send a ping if one is due; when the next one is due."""
        now = self._clock()
        if self._ping is not None and now - self._ping[1] < self._lease:
            return now + PING_INTERVAL  # still on its way
        if now < self._ping_due:
            return self._ping_due
        # A ping not back after a whole lease is replaced (the lease has lapsed by then).
        self._pings += 1
        self._ping = (self._pings, now)
        self._ping_due = now + PING_INTERVAL
        channel.basic_publish(Message(str(self._pings).encode()), exchange="", routing_key=self.name)
        return self._ping_due

    def _on_ping(self, message: Any) -> None:
        """A ping came back: the broker heard this connection when it was sent."""
        body = message.body.decode() if isinstance(message.body, bytes) else str(message.body)
        ping = self._ping
        if ping is not None and body == str(ping[0]):
            self._ping = None
            self._lease_until = max(self._lease_until, ping[1] + self._lease)

    def _idle(self, connection: Connection, seconds: float) -> None:
        """Keep the connection alive for `seconds` (or until stopped)."""
        deadline = self._clock() + seconds
        while not self._stopping.is_set() and self._clock() < deadline:
            self._wait_for_events(connection, min(deadline - self._clock(), PING_INTERVAL))

    def _wait_for_events(self, connection: Connection, timeout: float) -> None:
        # Sends a heartbeat when one is due; raises once the broker has been silent for two intervals.
        connection.heartbeat_check()
        try:
            connection.drain_events(timeout=max(timeout, 0.01))
        except TimeoutError:
            pass

    def _report_failure(self, exc: Exception) -> None:
        if self._state in ("held", "lapsed"):
            self._log_once(
                "lost", logging.WARNING, "lost the beat lock %s (%s); trying to take it again", self.name, exc
            )
        elif isinstance(exc, (OSError, AMQPError, KombuError)):
            self._log_once(
                "unreachable",
                logging.WARNING,
                "cannot take the beat lock %s (%s); sending nothing, trying again every %g s",
                self.name,
                exc,
                self._retry_interval,
            )
        else:
            self._state = "failed"
            logger.exception("the beat lock %s failed; sending nothing, trying again", self.name)

    def _log_once(self, state: str, level: int, message: str, *args: object) -> None:
        """Log `message` when the lock enters `state`, not again while it stays there."""
        if self._state != state:
            self._state = state
            logger.log(level, message, *args)

    def _close(self, connection: Connection) -> None:
        try:
            if self._stopping.is_set():
                # A clean close: RabbitMQ deletes the queue at once, and another beat may take the lock.
                connection.release()
            else:
                # The connection failed: close the socket without waiting for a broker that may be gone.
                connection.collect()
        except Exception:  # closing a broken connection may fail too; it is dropped either way
            logger.debug("closing the beat lock's connection failed", exc_info=True)
