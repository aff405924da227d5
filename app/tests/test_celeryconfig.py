"""The Celery configuration built from the host's settings."""

import ssl
from dataclasses import replace
from datetime import timedelta
from urllib.parse import quote

import pytest
from fetcher.broker import broker_urls
from fetcher.celeryconfig import build_config
from fetcher.queues import dead_letter_queue
from fetcher.settings import load_settings
from kombu import Connection
from sample_config import EXAMPLE, PASSWORD


@pytest.fixture
def settings(tmp_path):
    path = tmp_path / "fetcher.toml"
    path.write_text(EXAMPLE)
    return load_settings(path)


@pytest.fixture
def config(settings):
    return build_config(settings)


def test_one_broker_url_per_node_in_failover_order_with_quoted_credentials(config):
    password = quote(PASSWORD, safe="")
    assert config["broker_url"] == [
        f"amqp://myuser:{password}@server:5672/myvhost",
        f"amqp://myuser:{password}@laptop:5672/myvhost",
        f"amqp://myuser:{password}@desktop:5672/myvhost",
    ]
    connection = Connection(config["broker_url"])
    assert connection.alt == config["broker_url"], "Kombu keeps the order for failover"
    assert (connection.hostname, connection.port) == ("server", 5672)
    assert (connection.userid, connection.password, connection.virtual_host) == (
        "myuser",
        PASSWORD,
        "myvhost",
    )


def test_a_vhost_with_a_slash_survives_quoting(settings):
    broker = replace(settings.broker, vhost="/")

    [url, *_] = broker_urls(broker)

    assert url.endswith("/%2F")
    assert Connection(url).virtual_host == "/"


def test_connection_settings(config):
    assert config["broker_heartbeat"] == 30
    assert config["broker_connection_timeout"] == 10
    assert config["broker_connection_retry_on_startup"] is True
    assert config["broker_transport_options"] == {"confirm_publish": True}
    assert config["task_publish_retry"] is True
    assert config["task_publish_retry_policy"]["max_retries"] > 0


def test_every_queue_is_a_quorum_queue_on_the_topic_exchange_dead_lettering_at_least_once(config):
    queues = config["task_queues"]

    assert [(queue.name, queue.routing_key) for queue in queues] == [
        ("server", "server_task"),
        ("laptop", "laptop_task"),
        ("desktop", "desktop_task"),
    ]
    for queue in queues:
        assert (queue.exchange.name, queue.exchange.type, queue.exchange.durable) == ("tasks", "topic", True)
        assert queue.durable and not queue.auto_delete and not queue.exclusive
        assert queue.queue_arguments == {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "tasks.dead",
            "x-delivery-limit": 5,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


def test_the_dead_letter_queue_takes_every_routing_key_and_is_not_a_task_queue(settings, config):
    queue = dead_letter_queue(settings.routing)

    assert queue.name == "tasks.dead"
    assert (queue.exchange.name, queue.exchange.type, queue.exchange.durable) == ("tasks.dead", "topic", True)
    assert queue.routing_key == "#"
    assert queue.durable and queue.queue_arguments == {"x-queue-type": "quorum"}
    assert "tasks.dead" not in [task_queue.name for task_queue in config["task_queues"]]


def test_tasks_sent_from_this_host_default_to_its_own_queue(config):
    assert config["task_default_queue"] == "server"
    assert config["task_default_exchange"] == "tasks"
    assert config["task_default_exchange_type"] == "topic"
    assert config["task_default_routing_key"] == "server_task"
    assert config["task_default_queue_type"] == "quorum"
    assert config["worker_detect_quorum_queues"] is True


def test_reliability_flags(config):
    assert config["task_acks_late"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_reject_on_worker_lost"] is True
    assert config["task_acks_on_failure_or_timeout"] is False
    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is True
    assert (config["task_time_limit"], config["task_soft_time_limit"]) == (300, 270)
    assert config["worker_concurrency"] == 4


def test_pool_processes_are_recycled_by_task_count_and_memory_and_zero_means_never(settings, config):
    assert (config["worker_max_tasks_per_child"], config["worker_max_memory_per_child"]) == (1000, 524288)
    never = replace(settings, worker=replace(settings.worker, max_tasks_per_child=0, max_memory_per_child=0))
    recycled = build_config(never)
    assert (recycled["worker_max_tasks_per_child"], recycled["worker_max_memory_per_child"]) == (None, None)


def test_results_serialization_and_clock(config):
    assert (config["result_backend"], config["result_expires"]) == ("rpc://", 3600)
    assert config["result_extended"] is True
    assert config["timezone"] == "UTC"
    assert config["accept_content"] == config["result_accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"


def test_beat_schedule(config):
    assert config["beat_schedule"] == {
        "fan-out-to-laptop": {
            "task": "fetcher.tasks.fan_out",
            "schedule": timedelta(seconds=30),
            "args": (),
            "kwargs": {"routing_key": "laptop_task"},
        }
    }


def test_the_loaded_app_uses_this_configuration(fetcher_app):
    conf = fetcher_app.app.conf

    assert conf.task_default_queue == "server"
    assert sorted(conf.task_queues, key=lambda queue: queue.name)[0].queue_arguments["x-queue-type"] == "quorum"
    assert conf.task_acks_late is True
    assert "fan-out-to-laptop" in conf.beat_schedule


def test_plain_amqp_without_a_ca_and_tls_checked_against_the_ca_with_one(settings, config):
    assert config["broker_use_ssl"] is False
    with_ca = replace(settings, broker=replace(settings.broker, ca_file="/etc/fetcher/broker-ca.pem"))
    tls = build_config(with_ca)["broker_use_ssl"]
    assert tls == {"ca_certs": "/etc/fetcher/broker-ca.pem", "cert_reqs": ssl.CERT_REQUIRED}
