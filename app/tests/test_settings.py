"""Loading the host's configuration file: the values, the optional sections, and the error messages."""

from pathlib import Path

import pytest
from fetcher.config_reader import ConfigError
from fetcher.settings import DEFAULT_PATH, beat_config_path, config_path, load_settings
from sample_config import EXAMPLE, PASSWORD, TOKEN, without_line, without_section


def load(tmp_path: Path, text: str):
    path = tmp_path / "fetcher.toml"
    path.write_text(text)
    return load_settings(path)


def error_for(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert str(tmp_path / "fetcher.toml") in message, "the message names the file"
    assert PASSWORD not in message and TOKEN not in message
    return message


def test_the_template_format_loads(tmp_path):
    settings = load(tmp_path, EXAMPLE)

    assert settings.node == "server"
    assert settings.worker_name == "fetcher@server"
    assert settings.broker.hosts == ("server:5672", "laptop:5672", "desktop:5672")
    assert settings.broker.password == PASSWORD
    assert settings.broker.connect_timeout == 10.0
    assert settings.routing.own_routing_key == "server_task"
    assert settings.routing.consume == ("server", "laptop")
    assert [queue.name for queue in settings.routing.queues] == ["server", "laptop", "desktop"]
    assert settings.worker.soft_time_limit == 270
    assert settings.api.token == TOKEN
    assert settings.api.timeout == 10.0
    [entry] = settings.schedule
    assert (entry.name, entry.task, entry.every) == ("fan-out-to-laptop", "fetcher.tasks.fan_out", 30.0)
    assert entry.args == () and entry.kwargs == {"routing_key": "laptop_task"}


def test_api_and_beat_are_optional(tmp_path):
    text = without_section(without_section(EXAMPLE, "[api]"), "[[beat.schedule]]")

    settings = load(tmp_path, text)

    assert settings.api is None
    assert settings.schedule == ()


def test_secrets_stay_out_of_repr(tmp_path):
    settings = load(tmp_path, EXAMPLE)

    for shown in (repr(settings), str(settings), repr(settings.broker), repr(settings.api)):
        assert PASSWORD not in shown
        assert TOKEN not in shown
    assert "myuser" in repr(settings.broker)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('vhost = "myvhost"', "broker.vhost is missing"),
        ('password = "', "broker.password is missing"),
        ("node = ", "node is missing"),
        ("delivery_limit = ", "routing.delivery_limit is missing"),
        ("timeout = ", "api.timeout is missing"),
    ],
)
def test_a_missing_key_is_named(tmp_path, line, expected):
    assert expected in error_for(tmp_path, without_line(EXAMPLE, line))


def test_a_missing_section_is_named(tmp_path):
    assert "worker is missing" in error_for(tmp_path, without_section(EXAMPLE, "[worker]"))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("heartbeat = 30", 'heartbeat = "30"', "broker.heartbeat must be an integer >= 0"),
        ("heartbeat = 30", "heartbeat = true", "broker.heartbeat must be an integer >= 0"),
        ("connect_timeout = 10", "connect_timeout = 0", "broker.connect_timeout must be a number > 0"),
        ('"desktop:5672"]', '"desktop"]', "broker.hosts entries must be host:port"),
        (
            'exchange_type = "topic"',
            'exchange_type = "direct"',
            "routing.exchange_type must be one of: topic",
        ),
        (
            'consume = ["server", "laptop"]',
            'consume = ["server", "nas"]',
            "routing.consume[1] is not the name of a [[routing.queues]] entry",
        ),
        ('consume = ["server", "laptop"]', "consume = []", "routing.consume must be a non-empty array"),
        (
            'own_queue = "server"',
            'own_queue = "nas"',
            "routing.own_queue is not the name of a [[routing.queues]] entry",
        ),
        (
            'dead_letter_queue = "tasks.dead"',
            'dead_letter_queue = "laptop"',
            "routing.dead_letter_queue must not",
        ),
        (
            'routing_key = "laptop_task"',
            'routing_key = "laptop.#"',
            "routing.queues[1].routing_key must be an exact",
        ),
        ('name = "desktop"', 'name = "laptop"', "routing.queues must not repeat a queue name"),
        ("soft_time_limit = 270", "soft_time_limit = 300", "worker.soft_time_limit must be less than"),
        (
            "max_tasks_per_child = 1000",
            "max_tasks_per_child = -1",
            "worker.max_tasks_per_child must be an integer >= 0",
        ),
        (
            "prefetch_multiplier = 1",
            "prefetch_multiplier = 1\nmax_retry = 3",
            "worker.max_retry is not a known key",
        ),
        ("prefetch_multiplier = 1", "prefetch_multipler = 1", "worker.prefetch_multiplier is missing"),
        ('level = "INFO"', 'level = "LOUD"', "logging.level must be one of: DEBUG"),
        (
            'format = "[%(levelname)-5s] %(asctime)-8s %(name)-10s %(message)s"',
            'format = "[level] message"',
            "logging.format is not a valid",
        ),
        ("http://api.example:8080", "ftp://api.example", "api.base_url must start with http"),
        ("every = 30.0", "every = -1", "beat.schedule[0].every must be a number > 0"),
        ("kwargs = {", "kwargs = 3 #", "beat.schedule[0].kwargs must be a table"),
    ],
)
def test_an_invalid_value_is_named(tmp_path, old, new, expected):
    assert old in EXAMPLE
    assert expected in error_for(tmp_path, EXAMPLE.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("heartbeat = 30", f'heartbeat = "{PASSWORD}"', "broker.heartbeat must be an integer"),
        ("\ntimeout = 10", f'\ntimeout = "{TOKEN}"', "api.timeout must be a number"),
        ("consume = [", f'consume = ["{PASSWORD}", ', "routing.consume[0] is not the name"),
    ],
)
def test_a_secret_under_the_wrong_key_is_not_echoed(tmp_path, old, new, expected):
    assert EXAMPLE.count(old) == 1
    assert expected in error_for(tmp_path, EXAMPLE.replace(old, new))


def test_not_toml(tmp_path):
    assert "not valid TOML" in error_for(tmp_path, EXAMPLE.replace('node = "server"', "node = server"))


def test_no_such_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file.*FETCHER_CONFIG"):
        load_settings(tmp_path / "absent.toml")


def test_the_path_comes_from_the_environment():
    assert config_path({"FETCHER_CONFIG": "/srv/f.toml"}) == Path("/srv/f.toml")
    assert config_path({}) == DEFAULT_PATH == Path("/etc/fetcher/fetcher.toml")


def test_beats_schedule_comes_from_its_own_file_when_given(tmp_path):
    main = tmp_path / "fetcher.toml"
    main.write_text(without_section(EXAMPLE, "[[beat.schedule]]"))
    beat = tmp_path / "beat.toml"
    beat.write_text('[[beat.schedule]]\nname = "tick"\ntask = "fetcher.tasks.add"\nevery = 5.0\nargs = [1, 2]\n')
    assert load_settings(main).schedule == ()
    [entry] = load_settings(main, beat).schedule
    assert (entry.name, entry.task, entry.every, tuple(entry.args)) == ("tick", "fetcher.tasks.add", 5.0, (1, 2))


def test_beats_file_holds_only_the_schedule(tmp_path):
    main = tmp_path / "fetcher.toml"
    main.write_text(EXAMPLE)
    beat = tmp_path / "beat.toml"
    beat.write_text('node = "other"\n')
    with pytest.raises(ConfigError, match="node"):
        load_settings(main, beat)
    with pytest.raises(ConfigError, match="no such file.*FETCHER_BEAT_CONFIG"):
        load_settings(main, tmp_path / "absent.toml")


def test_beats_path_comes_from_the_environment():
    assert beat_config_path({"FETCHER_BEAT_CONFIG": "/etc/fetcher/beat.toml"}) == Path("/etc/fetcher/beat.toml")
    assert beat_config_path({}) is None


QUOTA = """
[quota]
allowance = 20000
window = 3600
queues = ["laptop"]
state_file = "/var/lib/fetcher/quota.sqlite3"
"""


def test_quota_is_optional_and_read_when_present(tmp_path):
    assert load(tmp_path, EXAMPLE).quota is None

    quota = load(tmp_path, EXAMPLE + QUOTA).quota

    assert (quota.allowance, quota.window, quota.queues) == (20000, 3600, ("laptop",))
    assert quota.state_file == Path("/var/lib/fetcher/quota.sqlite3")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("allowance = 20000", "allowance = 0"), "quota.allowance must be an integer >= 1"),
        (("window = 3600", "window = 0.5"), "quota.window must be an integer >= 1"),
        (('queues = ["laptop"]', 'queues = ["desktop"]'), "quota.queues[0] is not one of routing.consume"),
        (('queues = ["laptop"]', 'queues = ["server"]'), "quota.queues[0] is this host's own queue"),
        (('state_file = "/var', 'state_file = "var'), "quota.state_file must be an absolute path"),
        (("window = 3600", "window = 3600\nwindwo = 1"), "quota.windwo is not a known key"),
    ],
)
def test_quota_errors_say_what_to_fix(tmp_path, change, expected):
    assert expected in error_for(tmp_path, EXAMPLE + QUOTA.replace(*change))


def test_a_quota_needs_the_api(tmp_path):
    message = error_for(tmp_path, without_section(EXAMPLE, "[api]") + QUOTA)
    assert "there is no [api] section" in message


def test_the_broker_ca_is_optional_and_read_when_present(tmp_path):
    assert load(tmp_path, EXAMPLE).broker.ca_file is None
    text = EXAMPLE.replace(
        "connect_timeout = 10\n", 'connect_timeout = 10\nca_file = "/etc/fetcher/broker-ca.pem"\n', 1
    )
    assert load(tmp_path, text).broker.ca_file == "/etc/fetcher/broker-ca.pem"
    empty = EXAMPLE.replace("connect_timeout = 10\n", 'connect_timeout = 10\nca_file = ""\n', 1)
    assert "ca_file" in error_for(tmp_path, empty)


METRICS = """
[metrics]
port = 9808
address = "0.0.0.0"
allow = ["192.0.2.0/24", "2001:db8::7", "monitor", "prometheus.example.org", "db_2"]
directory = "/var/lib/fetcher/metrics"
"""


def test_metrics_is_optional_and_read_when_present(tmp_path):
    assert load(tmp_path, EXAMPLE).metrics is None

    metrics = load(tmp_path, EXAMPLE + METRICS).metrics

    assert (metrics.port, metrics.address) == (9808, "0.0.0.0")
    assert metrics.allow == ("192.0.2.0/24", "2001:db8::7", "monitor", "prometheus.example.org", "db_2")
    assert [str(network) for network in metrics.networks] == ["192.0.2.0/24", "2001:db8::7/128"]
    assert metrics.host_names == ("monitor", "prometheus.example.org", "db_2")
    assert metrics.worker_directory == Path("/var/lib/fetcher/metrics/worker")
    assert metrics.beat_directory == Path("/var/lib/fetcher/metrics/beat")


def test_metrics_may_allow_loopback_only_and_listen_on_ipv6(tmp_path):
    text = (EXAMPLE + METRICS).replace('"0.0.0.0"', '"::"')
    text = text.replace(
        'allow = ["192.0.2.0/24", "2001:db8::7", "monitor", "prometheus.example.org", "db_2"]', "allow = []"
    )
    metrics = load(tmp_path, text).metrics
    assert metrics.address == "::" and metrics.allow == () and metrics.networks == ()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("port = 9808", "port = 0"), "metrics.port must be an integer from 1 to 65535"),
        (("port = 9808", "port = 65536"), "metrics.port must be an integer from 1 to 65535"),
        (("port = 9808", 'port = "9808"'), "metrics.port must be an integer from 1 to 65535"),
        (('address = "0.0.0.0"', 'address = "localhost"'), "metrics.address must be an IPv4 or IPv6 address"),
        (('address = "0.0.0.0"', 'address = ""'), "metrics.address must be a non-empty string"),
        (('"192.0.2.0/24"', '"192.0.2.1/24"'), "metrics.allow[0] must be an IPv4 or IPv6 address, a network"),
        (('"192.0.2.0/24"', '"192.0.2.300"'), "metrics.allow[0] must be an IPv4 or IPv6 address, a network"),
        (('"monitor"', '"monitor host"'), "metrics.allow[2] must be an IPv4 or IPv6 address, a network"),
        (('"monitor"', '"-monitor"'), "metrics.allow[2] must be an IPv4 or IPv6 address, a network"),
        (('"monitor"', '"2001:db8::7"'), "metrics.allow must not repeat an entry"),
        (('allow = ["192.0.2.0/24"', 'allow = [5, "192.0.2.0/24"'), "metrics.allow must be an array of non-empty"),
        (('directory = "/var', 'directory = "var'), "metrics.directory must be an absolute path"),
        (("port = 9808", "port = 9808\nprot = 1"), "metrics.prot is not a known key"),
    ],
)
def test_metrics_errors_say_what_to_fix(tmp_path, change, expected):
    assert change[0] in METRICS
    assert expected in error_for(tmp_path, EXAMPLE + METRICS.replace(*change))


def test_every_metrics_key_is_required(tmp_path):
    for key in ("port", "address", "allow", "directory"):
        text = without_line(EXAMPLE + METRICS, f"{key} = ")
        assert f"metrics.{key} is missing" in error_for(tmp_path, text)
