"""fetcher.runtime: what an operator's own Celery app imports to run on the cluster, as the bundled app does."""

from dataclasses import replace

import pytest
from celery import Celery
from fetcher import runtime
from fetcher.governor import QuotaExhausted
from fetcher.routing import UnknownRoutingKey
from fetcher.settings import QuotaSettings


@pytest.fixture
def spent_after_one(fetcher_app, tmp_path, monkeypatch):
    """This host's settings with an allowance of one call, the queue `laptop` its quota queue."""
    quota = QuotaSettings(allowance=1, window=3600, queues=("laptop",), state_file=tmp_path / "q.sqlite3")
    monkeypatch.setattr(runtime, "_configured", replace(fetcher_app.settings, quota=quota))


def test_configure_gives_an_app_of_its_own_the_hosts_broker_queues_and_routing(fetcher_app):
    app = Celery("harvestproj")
    settings = runtime.configure(app, fetcher_app.settings)
    assert app.conf.task_default_queue == settings.routing.own_queue
    assert app.conf.task_default_routing_key == settings.routing.own_routing_key
    assert {queue.name for queue in app.conf.task_queues} >= {queue.name for queue in settings.routing.queues}
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_consumer == "fetcher.consumer:Consumer"
    assert runtime.configured() is settings


def test_queue_for_names_the_queue_of_a_routing_key_and_refuses_an_unknown_one(fetcher_app):
    laptop = next(queue for queue in fetcher_app.settings.routing.queues if queue.routing_key == "laptop_task")
    assert runtime.queue_for("laptop_task") == laptop.name
    with pytest.raises(UnknownRoutingKey, match="nobody_task"):
        runtime.queue_for("nobody_task")


def test_an_api_task_takes_a_call_first_and_with_none_left_returns_a_quota_queues_message_unrun(
    fetcher_app, spent_after_one
):
    ran = []

    @runtime.api_task(fetcher_app.app, name="harvestproj.fetch")
    def fetch(url):
        ran.append(url)
        return len(url)

    first = fetch.apply(("https://example.org/a",), routing_key="laptop_task")
    second = fetch.apply(("https://example.org/b",), routing_key="laptop_task")

    assert first.successful() and first.result == len("https://example.org/a")
    assert second.state == "REJECTED" and isinstance(second.result, QuotaExhausted) and second.result.requeue
    assert ran == ["https://example.org/a"], "no call is made without allowance"


def test_a_task_that_takes_its_own_call_is_not_charged_twice(fetcher_app, spent_after_one):
    @runtime.api_task(fetcher_app.app, name="harvestproj.fetch_twice", take_call=False, bind=True)
    def fetch_twice(self, url):
        runtime.take_api_call()
        return self.name

    assert fetch_twice.apply(("a",), routing_key="laptop_task").result == "harvestproj.fetch_twice"
    assert fetch_twice.apply(("b",), routing_key="laptop_task").state == "REJECTED"
