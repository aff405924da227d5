"""The tasks, run eagerly; fan_out publishes to the in-memory broker and the messages are read back;
call_api talks to the stub API over real HTTP."""

import logging
from dataclasses import replace

import pytest
from celery.signals import task_retry
from fetcher.api import ApiError, TransientError
from fetcher.config_reader import ConfigError
from fetcher.routing import UnknownRoutingKey
from sample_config import TOKEN


def test_task_names_are_stable(tasks, fetcher_app):
    registered = fetcher_app.app.tasks
    for name in (
        "fetcher.tasks.add",
        "fetcher.tasks.MyTest",
        "fetcher.tasks.fan_out",
        "fetcher.tasks.call_api",
    ):
        assert name in registered
    assert registered["fetcher.tasks.MyTest"] is tasks.my_test
    assert isinstance(tasks.my_test, tasks.MyTest)


def test_add(tasks):
    assert tasks.add.apply((2, 3)).get() == 5


def test_my_test_logs_its_arguments_and_adds_them_as_integers(tasks, caplog):
    with caplog.at_level(logging.INFO, logger="fetcher.tasks"):
        result = tasks.my_test.apply(("3", 4))

    assert result.get() == 7
    assert ("fetcher.tasks", logging.INFO, "Received 3 and 4") in caplog.record_tuples


def read_back(broker, queue):
    messages = []
    while (message := broker.default_channel.basic_get(queue, no_ack=True)) is not None:
        messages.append(message)
    return messages


def test_fan_out_sends_one_my_test_per_number_over_one_producer(tasks, fetcher_app, broker, caplog, monkeypatch):
    pool = fetcher_app.app.producer_pool
    acquired = []
    acquire = pool.acquire
    monkeypatch.setattr(pool, "acquire", lambda *a, **kw: acquired.append(1) or acquire(*a, **kw))

    with caplog.at_level(logging.INFO, logger="fetcher.tasks"):
        sent = tasks.fan_out("laptop_task", numbers=[1, 2, 3])

    assert sent == 3
    assert len(acquired) == 1, "one producer (and connection) from the pool for every message"
    messages = read_back(broker, "laptop")
    assert [message.headers["task"] for message in messages] == ["fetcher.tasks.MyTest"] * 3
    assert [message.decode()[0] for message in messages] == [[1, 1], [2, 2], [3, 3]]
    assert {message.delivery_info["routing_key"] for message in messages} == {"laptop_task"}
    # Nobody reads these results: the worker must not send them to a reply queue that does not exist.
    assert {message.headers.get("ignore_result") for message in messages} == {True}
    assert read_back(broker, "server") == []
    assert (
        "fetcher.tasks",
        logging.INFO,
        "Ran periodic task: sent 3 MyTest to laptop_task",
    ) in caplog.record_tuples


def test_fan_outs_own_result_is_not_kept(tasks):
    # beat sends fan_out and never reads its result: with rpc:// it would pile up in beat's reply queue.
    assert tasks.fan_out.ignore_result is True


def test_fan_out_defaults_to_eighteen_pairs(tasks, broker):
    assert tasks.fan_out("server_task") == 18
    assert [message.decode()[0] for message in read_back(broker, "server")] == [[n, n] for n in range(1, 19)]


def test_fan_out_refuses_an_unknown_routing_key(tasks, broker):
    with pytest.raises(UnknownRoutingKey, match="'nas_task'.*server_task, laptop_task, desktop_task"):
        tasks.fan_out("nas_task")


@pytest.fixture
def api_requests(stub_api):
    """The stub's request log, emptied for this test."""
    stub_api.requests.clear()
    return stub_api.requests


@pytest.fixture
def countdowns():
    """The countdown of every retry that call_api asks for."""
    seen = []

    def on_retry(reason, **_):
        seen.append(reason.when)

    task_retry.connect(on_retry, weak=False)
    yield seen
    task_retry.disconnect(on_retry)


def test_call_api_returns_the_decoded_json_after_one_request(tasks, api_requests):
    result = tasks.call_api.apply(("ok",))

    assert result.get() == {"item": "ok", "value": 42}
    assert api_requests == [("/items/ok", f"Bearer {TOKEN}")]


def test_call_api_fails_at_once_on_a_client_error(tasks, api_requests, countdowns):
    result = tasks.call_api.apply(("missing",))

    assert result.failed() and isinstance(result.result, ApiError)
    assert len(api_requests) == 1
    assert countdowns == []


@pytest.mark.parametrize(("item", "expected"), [("down", None), ("limited", [7, 7]), ("limited-long", [3600, 3600])])
def test_call_api_retries_transient_errors_with_one_request_each(tasks, api_requests, countdowns, item, expected):
    result = tasks.call_api.apply((item,))

    # Eager mode runs each retry at once; max_retries is 2 in the sample file: 1 try + 2 retries.
    assert result.failed() and isinstance(result.result, TransientError)
    assert len(api_requests) == 3
    assert len(countdowns) == 2
    if expected is None:
        assert all(1 <= countdown <= 60 for countdown in countdowns), "exponential backoff with jitter"
    else:
        assert countdowns == expected, "the API's Retry-After, capped at api.max_reset_wait"


def test_call_api_without_an_api_section_fails_naming_it(tasks, api_requests, monkeypatch):
    monkeypatch.setattr(tasks, "settings", replace(tasks.settings, api=None))
    tasks.api_client.cache_clear()
    try:
        result = tasks.call_api.apply(("ok",))
    finally:
        tasks.api_client.cache_clear()

    assert result.failed() and isinstance(result.result, ConfigError)
    assert "[api] is missing" in str(result.result)
    assert api_requests == []
