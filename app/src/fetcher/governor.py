"""Stop consuming the quota queues while this host's API allowance is spent; start again when it returns.

Celery's `rate_limit` is no answer here: it is per worker process, and a rate-limited worker still
reserves messages it will not run, holding them back from hosts that could. What the write-up wanted
("once the 20,000 machine hits its limit, the worker will stop accepting tasks") is done here, in the
worker's main process, which owns the broker connection and its consumers:

- At start, a worker whose allowance is already spent (restarted mid-window) does not subscribe to its
  quota queues at all (`fetcher.worker`).
- `QuotaGovernor`, a consumer bootstep, reads the host's shared counter every `CHECK_INTERVAL` seconds
  and after every quota task: once nothing remains it cancels its consumers on the quota queues
  (`basic.cancel`), so RabbitMQ hands their messages to the other hosts that consume them; at the moment
  the window rolls over it subscribes again. Non-quota queues are never touched.
- A task that finds the allowance spent (another process of the host took the last call) raises
  `QuotaExhausted`, a reject with requeue. Its `QuotaRequest`, in the main process, first stops the
  consumers and only then rejects the message, so RabbitMQ cannot hand it straight back to this host:
  the message goes to another host, or waits in its queue. Nothing is dropped, and no call is made.

A returned message is not rejected back into its queue: a quorum queue counts every such return as a failed
delivery (`x-delivery-limit`; RabbitMQ 4 sets 20 on every quorum queue), so a task that waited through many
quota pauses would be dead-lettered although it never failed. It is published again instead, as the same
message (body, headers and properties, through the exchange and routing key it came by, with a publisher
confirm), plus a header that counts its returns, and only then is the delivered one acknowledged. If the
broker does not take the copy, the message is rejected back as before: returned, never lost. A task that
really fails still counts towards the limit, and is dead-lettered after it.
"""

import logging
import os

from billiard.einfo import ExceptionWithTraceback
from celery import bootsteps
from celery.exceptions import Reject
from celery.worker.request import Request
from celery.worker.state import task_ready

from fetcher.broker import publish_again
from fetcher.quota import QuotaCounter, QuotaStatus, counter_for, utc_time

logger = logging.getLogger("fetcher.quota")

# The header that counts how often a task went back to its queue unrun (see the module's docstring).
RETURNS_HEADER = "x-fetcher-quota-returns"

# Seconds between two reads of the counter (a paused host also checks at the very moment its window resets).
CHECK_INTERVAL = 0.5

# The governor of this worker process (the main one), once its consumer has started.
_governor: "QuotaGovernor | None" = None


class QuotaExhausted(Reject):
    """The task found the allowance spent before its call: return the message to its queue, unrun."""

    def __init__(self, reason: str | None = None, requeue: bool = True) -> None:
        super().__init__(reason, requeue)


class QuotaGovernor(bootsteps.StartStopStep):
    """Consume the quota queues only while the host has calls left in the current window."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs) -> None:
        super().__init__(c, **kwargs)
        self._consumer = None
        self._timer = None
        self._wake = None
        self._wake_at = None
        self.queues: tuple[str, ...] = ()
        self.counter: QuotaCounter | None = None

    def include_if(self, c) -> bool:
        # Imported here, in the running worker: importing this module must not read the host's file.
        from fetcher.runtime import configured

        settings = configured()

        return settings.quota is not None

    def start(self, c) -> None:
        global _governor
        from fetcher.runtime import configured

        settings = configured()

        self._consumer, self.queues = c, settings.quota.queues
        self.counter = counter_for(settings.quota)
        _governor = self
        # The first check comes from the timer, inside the event loop: consuming before the loop has set
        # the consumer's message callback would leave delivered messages with nobody to take them.
        self._timer = c.timer.call_repeatedly(CHECK_INTERVAL, self.check)

    def stop(self, c) -> None:
        # Also called when the connection is lost: the consumer restarts every step once it is back.
        for entry in (self._timer, self._wake):
            if entry is not None:
                entry.cancel()
        self._timer = self._wake = self._wake_at = None

    def shutdown(self, c) -> None:
        global _governor
        self.stop(c)
        if self.counter is not None:
            self.counter.set_consuming(False)
        _governor = None

    def check(self) -> None:
        """Pause or resume the quota queues to match the counter, and record which it is."""
        try:
            status = self.counter.status()
            consuming = self._consuming()
            if consuming and status.remaining == 0:
                self._pause(status)
                consuming = False
            elif not consuming and status.remaining > 0:
                self._resume(status)
                consuming = True
            if status.consuming != consuming or status.worker_pid != os.getpid():
                # Also after a restart: fetcher-quota trusts the record only while its process runs.
                self.counter.set_consuming(consuming)
            if not consuming and self._wake_at != status.reset_at:
                # Check again the moment the window rolls over, rather than up to CHECK_INTERVAL later.
                self._wake_at = status.reset_at
                delay = max(status.reset_at - self.counter.now(), 0) + 0.001
                self._wake = self._consumer.timer.call_after(delay, self.check)
        except Exception:  # the timer must keep running: the next check may succeed
            logger.exception("Checking the API allowance failed; trying again in %s s", CHECK_INTERVAL)

    def _consuming(self) -> bool:
        # The worker's selection of queues, which cancel_task_queue and add_task_queue keep, and from which
        # the consumer subscribes again after a reconnection (it is already set before the first subscribe).
        selected = self._consumer.app.amqp.queues.consume_from
        return any(queue in selected for queue in self.queues)

    def _pause(self, status: QuotaStatus) -> None:
        for queue in self.queues:
            self._consumer.cancel_task_queue(queue)
        logger.warning(
            "API allowance spent (%d of %d calls): not consuming %s until the window resets at %s",
            status.used,
            status.allowance,
            ", ".join(self.queues),
            utc_time(status.reset_at),
        )

    def _resume(self, status: QuotaStatus) -> None:
        for queue in self.queues:
            self._consumer.add_task_queue(queue)
        logger.info(
            "API allowance available (%d of %d calls left until %s): consuming %s again",
            status.remaining,
            status.allowance,
            utc_time(status.reset_at),
            ", ".join(self.queues),
        )


def check_now() -> None:
    """Let the governor act at once (in the main process; a no-op where no governor runs)."""
    if _governor is not None:
        _governor.check()


def return_unrun(request) -> int:
    """Publish a refused task's message again, as it came, and say how often it has been returned now."""
    message = request.message
    headers = dict(message.headers or {})
    returns = int(headers.get(RETURNS_HEADER, 0)) + 1
    headers[RETURNS_HEADER] = returns
    info = message.delivery_info
    with request.task.app.producer_or_acquire() as producer:
        publish_again(producer, message, info.get("exchange") or "", info.get("routing_key"), headers)
    return returns


class QuotaRequest(Request):
    """The request of a task that calls the API: stop consuming, then send a refused message back unrun."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, QuotaExhausted):
            # The counter says nothing is left: the governor cancels the quota consumers now, before the
            # message goes back, so it goes to another host or waits in its queue.
            check_now()
            if not self.acknowledged:
                try:
                    returns = return_unrun(self)
                except Exception:  # the reject below returns it all the same, counted as a delivery
                    logger.exception("Task %s could not be published again; rejecting it back to its queue", self.id)
                else:
                    task_ready(self)
                    self.acknowledge()
                    self.send_event("task-rejected", requeue=True)
                    logger.info(
                        "Task %s went back to its queue unrun (return %d): the allowance is spent", self.id, returns
                    )
                    return None
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_success(self, failed__retval__runtime, **kwargs):
        result = super().on_success(failed__retval__runtime, **kwargs)
        # That call may have been the window's last: stop before the next message is handed out.
        check_now()
        return result
