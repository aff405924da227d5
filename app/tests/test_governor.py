"""The quota governor: the worker consumes its quota queues only while the host has calls left."""

import pickle
from dataclasses import replace
from types import SimpleNamespace

import pytest
from billiard.einfo import ExceptionWithTraceback
from celery import Celery
from celery.signals import celeryd_after_setup
from celery.worker.request import Request
from fetcher import governor, runtime, worker
from fetcher.celeryconfig import build_config
from fetcher.governor import QuotaExhausted, QuotaGovernor, QuotaRequest
from fetcher.quota import QuotaCounter, QuotaSpent
from fetcher.settings import QuotaSettings


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class FakeConsumer:
    """Celery's consumer as the governor uses it: which queues it consumes, and the two calls that change it."""

    def __init__(self, *consuming):
        self.active = set(consuming)
        self.calls = []
        self.app = SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=self.active)))
        self.wakes = []
        self.timer = SimpleNamespace(call_after=lambda delay, fun: self.wakes.append((delay, fun)))

    def cancel_task_queue(self, queue):
        self.active.discard(queue)
        self.calls.append(("cancel", queue))

    def add_task_queue(self, queue):
        self.active.add(queue)
        self.calls.append(("add", queue))


@pytest.fixture
def clock():
    return Clock(1_800_000_005.0)


@pytest.fixture
def counter(tmp_path, clock):
    return QuotaCounter(tmp_path / "quota.sqlite3", allowance=2, window=20, clock=clock)


@pytest.fixture
def governed(counter):
    """A governor over a consumer that consumes its own queue and the quota queue `api`."""
    consumer = FakeConsumer("server", "api")
    step = QuotaGovernor(SimpleNamespace())
    step._consumer, step.queues, step.counter = consumer, ("api",), counter
    return step, consumer


def test_it_stops_consuming_the_quota_queues_once_the_allowance_is_spent(governed, counter):
    step, consumer = governed
    counter.take()
    step.check()
    assert consumer.calls == [] and counter.status().consuming is True

    counter.take()
    step.check()
    assert consumer.active == {"server"}, "the quota queue is cancelled, the host's own queue keeps flowing"
    assert counter.status().consuming is False

    step.check()
    assert consumer.calls == [("cancel", "api")], "cancelled once"
    [(delay, fun)] = consumer.wakes
    assert delay == pytest.approx(15.001) and fun == step.check, "it checks again the moment the window resets"


def test_it_consumes_again_when_the_window_rolls_over(governed, counter, clock):
    step, consumer = governed
    counter.spend_all()
    step.check()
    clock.now = 1_800_000_019.9
    step.check()
    assert consumer.active == {"server"}

    clock.now = 1_800_000_020.0
    step.check()
    assert consumer.active == {"server", "api"}
    assert consumer.calls == [("cancel", "api"), ("add", "api")]
    assert counter.status().consuming is True


def test_a_restarted_worker_records_itself_as_the_consumer(governed, counter, monkeypatch):
    """fetcher-quota shows `consuming` only while the process that recorded it runs."""
    step, consumer = governed
    step.check()
    monkeypatch.setattr(governor.os, "getpid", lambda: 999_999)
    step.check()
    assert counter.status().worker_pid == 999_999 and counter.status().consuming is True


def test_a_failing_check_is_logged_and_the_next_one_runs(governed, caplog):
    step, consumer = governed
    broken = SimpleNamespace(status=lambda: (_ for _ in ()).throw(OSError("disk full")))
    step.counter, working = broken, step.counter
    step.check()
    assert "Checking the API allowance failed" in caplog.text
    step.counter = working
    working.spend_all()
    step.check()
    assert consumer.active == {"server"}


def refused(consumer, seen):
    """A QuotaRequest whose task found the allowance spent, recording its acknowledgement."""
    request = QuotaRequest.__new__(QuotaRequest)
    request.acknowledged = False
    request.acknowledge = lambda: seen.append(("ack", set(consumer.active)))
    request.send_event = lambda *a, **k: None
    request.id = "a-task-id"
    return request


def test_a_refused_message_goes_back_after_the_consumer_stopped_then_is_acknowledged(governed, counter, monkeypatch):
    step, consumer = governed
    counter.spend_all()
    seen = []
    monkeypatch.setattr(governor, "return_unrun", lambda request: seen.append(("publish", set(consumer.active))) or 1)
    monkeypatch.setattr(governor, "task_ready", lambda request: None)
    monkeypatch.setattr(Request, "on_failure", lambda self, *a, **k: seen.append(("reject", set(consumer.active))))
    monkeypatch.setattr(governor, "_governor", step)

    refused(consumer, seen).on_failure(SimpleNamespace(exception=ExceptionWithTraceback(QuotaExhausted("spent"), "tb")))

    # Published again (not rejected: a reject counts against the queue's delivery limit), with the quota
    # queue already cancelled, and acknowledged only after the broker took the copy.
    assert seen == [("publish", {"server"}), ("ack", {"server"})]


def test_a_message_the_broker_does_not_take_again_is_rejected_back(governed, counter, monkeypatch):
    step, consumer = governed
    counter.spend_all()
    seen = []

    def broker_down(request):
        raise ConnectionError("no broker")

    monkeypatch.setattr(governor, "return_unrun", broker_down)
    monkeypatch.setattr(Request, "on_failure", lambda self, *a, **k: seen.append(("reject", set(consumer.active))))
    monkeypatch.setattr(governor, "_governor", step)

    refused(consumer, seen).on_failure(SimpleNamespace(exception=ExceptionWithTraceback(QuotaExhausted("spent"), "tb")))

    assert seen == [("reject", {"server"})], "returned with Celery's reject-and-requeue: never lost"


def test_a_returned_message_is_the_same_task_counting_its_returns(tasks, fetcher_app, broker):
    tasks.fan_out("laptop_task", numbers=[7])
    for expected in (1, 2, 3):
        delivered = broker.default_channel.basic_get("laptop", no_ack=True)
        message = fetcher_app.app.amqp.TaskConsumer(broker).channel.message_to_python(delivered)
        request = SimpleNamespace(message=message, task=tasks.fan_out)
        assert governor.return_unrun(request) == expected
    again = broker.default_channel.basic_get("laptop", no_ack=True)
    assert again.headers["task"] == "fetcher.tasks.MyTest" and again.headers[governor.RETURNS_HEADER] == 3
    assert again.headers["id"] == delivered.headers["id"] and again.body == delivered.body
    assert again.delivery_info["routing_key"] == "laptop_task"
    assert broker.default_channel.basic_get("laptop", no_ack=True) is None, "one copy, not one more per return"


def test_quota_exhausted_is_a_requeue_that_survives_the_pool_pipe():
    copy = pickle.loads(pickle.dumps(QuotaExhausted("spent")))
    assert isinstance(copy, QuotaExhausted) and copy.requeue is True and copy.reason == "spent"


def test_a_worker_restarted_with_its_allowance_spent_leaves_its_quota_queues_out(fetcher_app, tmp_path):
    state = tmp_path / "quota.sqlite3"
    settings = replace(
        fetcher_app.settings,
        quota=QuotaSettings(allowance=1, window=3600, queues=("laptop",), state_file=state),
    )
    QuotaCounter(state, allowance=1, window=3600).spend_all()
    app = Celery("restarted")
    app.conf.update(build_config(settings))
    worker.install(app, settings)

    celeryd_after_setup.send(sender="fetcher@server", instance=SimpleNamespace(app=app), conf=None)

    assert sorted(app.amqp.queues.consume_from) == ["server"]


def test_a_spent_allowance_returns_a_quota_queues_message_unrun(tasks, stub_api, tmp_path, monkeypatch):
    quota = QuotaSettings(allowance=1, window=3600, queues=("laptop",), state_file=tmp_path / "q.sqlite3")
    monkeypatch.setattr(tasks, "settings", replace(tasks.settings, quota=quota))
    monkeypatch.setattr(runtime, "_configured", tasks.settings)
    tasks.api_client.cache_clear()
    stub_api.requests.clear()
    try:
        first = tasks.call_api.apply(("ok",), routing_key="laptop_task")
        second = tasks.call_api.apply(("ok",), routing_key="laptop_task")
        elsewhere = tasks.call_api.apply(("ok",), routing_key="server_task")
    finally:
        tasks.api_client.cache_clear()

    assert first.successful()
    assert second.state == "REJECTED" and isinstance(second.result, QuotaExhausted)
    assert second.result.requeue, "back to its queue for a host with allowance left"
    # From a queue that is not a quota queue nobody else would take it: it is retried after the reset.
    assert elsewhere.failed() and isinstance(elsewhere.result, QuotaSpent)
    assert len(stub_api.requests) == 1, "no call is made without allowance"
