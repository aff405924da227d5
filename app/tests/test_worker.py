"""Worker start: it consumes only its own selection, but declares every queue and the dead-letter queue
when its consumer connects."""

import logging
from types import SimpleNamespace

import pytest
from celery.signals import celeryd_after_setup
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from fetcher.consumer import CELERY_STEP, Consumer, Topology
from fetcher.queues import declare_all
from fetcher.routing import delivered_queue
from kombu import Exchange, Producer


def deliver(connection, exchange, routing_key, body):
    Producer(connection.default_channel).publish(
        body, exchange=Exchange(exchange, type="topic"), routing_key=routing_key, serializer="json"
    )


def take(connection, queue):
    message = connection.default_channel.basic_get(queue, no_ack=True)
    return None if message is None else message.decode()


def test_declared_queues_route_by_exact_key_and_dead_letters_keep_theirs(broker, fetcher_app):
    declare_all(broker, fetcher_app.settings.routing)

    deliver(broker, "tasks", "desktop_task", {"to": "desktop"})
    deliver(broker, "tasks.dead", "laptop_task", {"dead": "laptop"})

    assert take(broker, "desktop") == {"to": "desktop"}
    assert take(broker, "server") is None and take(broker, "laptop") is None
    assert take(broker, "tasks.dead") == {"dead": "laptop"}


def test_worker_start_selects_its_queues(fetcher_app, caplog):
    app = fetcher_app.app
    queues = app.amqp.queues
    try:
        celeryd_after_setup.send(sender="fetcher@server", instance=SimpleNamespace(app=app), conf=app.conf)

        assert "This worker runs as" not in caplog.text
        assert sorted(queues.consume_from) == ["laptop", "server"]
        assert sorted(queues) == ["desktop", "laptop", "server"], "publishing to any host still works"
    finally:
        queues.select(list(queues))


def test_a_worker_not_named_after_its_node_is_warned_about(fetcher_app, caplog):
    app = fetcher_app.app
    try:
        with caplog.at_level(logging.WARNING, logger="fetcher.worker"):
            celeryd_after_setup.send(sender="celery@vm", instance=SimpleNamespace(app=app), conf=app.conf)
    finally:
        app.amqp.queues.select(list(app.amqp.queues))

    assert "This worker runs as celery@vm, but node = 'server'" in caplog.text
    assert "start it with --hostname fetcher@server" in caplog.text


def test_another_apps_worker_is_left_alone(fetcher_app):
    app = fetcher_app.app

    celeryd_after_setup.send(sender="other@host", instance=SimpleNamespace(app=object()), conf=None)

    assert sorted(app.amqp.queues.consume_from) == ["desktop", "laptop", "server"]


def test_the_consumer_sets_up_the_topology_in_place_of_celerys_per_url_step(fetcher_app):
    celery_steps = CeleryConsumer.Blueprint.default_steps
    steps = Consumer.Blueprint.default_steps

    assert fetcher_app.app.conf.worker_consumer == "fetcher.consumer:Consumer"
    assert CELERY_STEP in celery_steps and CELERY_STEP not in steps
    assert steps.index("fetcher.consumer:Topology") == celery_steps.index(CELERY_STEP)
    assert issubclass(Topology, DelayedDelivery), "same place in the boot order, same condition"


def test_the_topology_step_is_for_rabbitmq_only(fetcher_app):
    consumer = SimpleNamespace(app=fetcher_app.app)

    assert not Topology(consumer).include_if(consumer), "the in-memory transport has no delayed delivery"


@pytest.mark.parametrize(
    ("routing_key", "queue"),
    [
        ("laptop_task", "laptop"),
        # A retry with a countdown comes back through native delayed delivery with the delay in front.
        ("0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.laptop_task", "laptop"),
        ("nobody_task", None),
        (None, None),
    ],
)
def test_the_queue_a_message_came_from(fetcher_app, routing_key, queue):
    assert delivered_queue(fetcher_app.settings.routing, routing_key) == queue
