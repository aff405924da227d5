"""The app's metrics: counted in a real prefork worker's pool processes, added up and served by fetcher-metrics.

The worker test runs `celery worker --pool prefork --max-tasks-per-child 1` in a process of its own, on Kombu's
filesystem transport, with PROMETHEUS_MULTIPROC_DIR set as its unit sets it: every task runs in a child that is
then replaced, and what each child counted must still be in the sum the exporter serves over HTTP. The rest runs
in this process: the quota gauges on a fake clock, beat's gauges from the real scheduler behind a fake lock, the
access rules, the configuration.
"""

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from celery import Celery, current_app
from celery.exceptions import Reject, TimeLimitExceeded
from celery.signals import task_failure
from fetcher import metrics, metrics_server, quota, runtime
from fetcher.beat import LockedScheduler
from fetcher.celeryconfig import build_config
from fetcher.config_reader import ConfigError
from fetcher.metrics_server import (
    RESOLVE_INTERVAL,
    Access,
    ProcessFiles,
    QuotaCollector,
    address_allowed,
    make_server,
    registry_for,
)
from fetcher.quota import QuotaCounter
from fetcher.schedule import beat_schedule
from fetcher.settings import QuotaSettings, ScheduleEntry, load_settings
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from sample_config import EXAMPLE
from test_beatlock import FakeLock, Now

TESTS = Path(__file__).resolve().parent
# What Prometheus asks for by default: OpenMetrics first.
PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
METRICS = """
[metrics]
port = 9808
address = "127.0.0.1"
allow = ["192.0.2.0/24"]
directory = "{directory}"
"""


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """An exposition as {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def scrape(port: int, path: str = "/metrics", host: str = "127.0.0.1", accept: str = "") -> tuple[int, str, str]:
    """GET over a real socket: (status, content type, body)."""
    request = urllib.request.Request(f"http://{host}:{port}{path}", headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


@pytest.fixture(scope="module")
def host_settings(tmp_path_factory):
    """The example host's settings with a [metrics] table whose directory is a fresh temporary one."""
    base = tmp_path_factory.mktemp("metrics")
    path = base / "fetcher.toml"
    path.write_text(EXAMPLE + METRICS.format(directory=base / "m"))
    return load_settings(path)


@contextmanager
def serving(settings, clock=time.time):
    """fetcher-metrics' server for `settings`, on an ephemeral port of its address, in a thread: yields the port."""
    server = make_server(replace(settings, metrics=replace(settings.metrics, port=0)), clock)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- a real prefork worker -------------------------------------------------------------------------------------

# What the worker runs: each name once per entry, each run in a pool process of its own (max-tasks-per-child 1).
SENT = ["harvest.ok"] * 4 + ["harvest.flaky", "harvest.broken"]
EXPECTED = {
    ("harvest.ok", "succeeded"): 4,
    ("harvest.flaky", "retried"): 1,
    ("harvest.flaky", "succeeded"): 1,
    ("harvest.broken", "dead_lettered"): 1,
}


def nonzero(counts: dict) -> dict:
    return {key: number for key, number in counts.items() if number}


def outcomes(found: dict) -> dict[tuple[str, str], float]:
    return {
        (labels["task"], labels["outcome"]): number
        for (name, frozen), number in found.items()
        if name == "fetcher_tasks_total" and (labels := dict(frozen))
    }


@pytest.fixture(scope="module")
def prefork_worker(host_settings, tmp_path_factory):
    """Runs SENT through `celery worker --pool prefork --concurrency 2 --max-tasks-per-child 1`, as the unit starts
    it (PROMETHEUS_MULTIPROC_DIR=<directory>/worker), until all is counted; then stops it. Yields its log."""
    folder = tmp_path_factory.mktemp("broker")
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(folder / "control"),
    }
    sender = Celery("sender")
    sender.conf.update(build_config(host_settings))
    sender.conf.update(broker_url="filesystem://", broker_transport_options=options, task_ignore_result=True)
    with sender.producer_or_acquire() as producer:
        for name in SENT:
            sender.send_task(name, queue="server", producer=producer)
    sender.close()

    environment = dict(
        os.environ,
        FETCHER_CONFIG=str(host_settings.source),
        FETCHER_TEST_BROKER=str(folder),
        PROMETHEUS_MULTIPROC_DIR=str(host_settings.metrics.worker_directory),
        PYTHONPATH=os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]),
    )
    environment.pop("FETCHER_BEAT_CONFIG", None)
    log = folder / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "metrics_worker_app", "worker", "--pool", "prefork"]
    command += ["--concurrency", "2", "--max-tasks-per-child", "1", "--hostname", "fetcher@server"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
    with log.open("w") as output:
        worker = subprocess.Popen(
            command, env=environment, cwd=folder, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    files = ProcessFiles([host_settings.metrics.worker_directory])
    try:
        deadline = time.monotonic() + 20
        while nonzero(outcomes(samples(_exposition(files)))) != EXPECTED:
            assert worker.poll() is None, f"the worker stopped:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"counted {outcomes(samples(_exposition(files)))}:\n{log.read_text()}"
            time.sleep(0.05)
        time.sleep(0.3)  # time for anything counted twice (the main process handles each result after its child)
    finally:
        # Its files hold the counts already: the worker and its pool go at once (a warm shutdown takes seconds).
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    yield log


def _exposition(*collectors) -> str:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry).decode()


def test_a_prefork_worker_counts_in_each_pool_process_and_the_exporter_serves_the_sum(prefork_worker, host_settings):
    directory = host_settings.metrics.worker_directory
    pids = {path.stem.rsplit("_", 1)[1] for path in directory.glob("counter_*.db")}
    assert len(pids) >= len(SENT) + 1, f"each run counted in a pool process of its own: {sorted(pids)}"

    with serving(host_settings) as port:
        status, content_type, body = scrape(port)
        openmetrics_body = scrape(port, accept=PROMETHEUS_ACCEPT)[2]

    assert status == 200 and content_type.startswith("text/plain")
    openmetrics = {
        sample.name: sample for family in openmetrics_families(openmetrics_body) for sample in family.samples
    }
    assert {"fetcher_tasks_total", "fetcher_task_runtime_seconds_bucket"} <= set(openmetrics)
    found = samples(body)
    counts = outcomes(found)
    assert nonzero(counts) == EXPECTED, "every child's count, also since replaced"
    # Set up, the worker gave every task each outcome at 0, so that an alert on the first increase has a before.
    assert set(counts) == {(task, outcome) for task, _ in EXPECTED for outcome in metrics.OUTCOMES}
    for task, runs in (("harvest.ok", 4), ("harvest.flaky", 2), ("harvest.broken", 1)):
        assert value(found, "fetcher_task_runtime_seconds_count", task=task) == runs
        assert value(found, "fetcher_task_runtime_seconds_bucket", task=task, le="60.0") == runs
        assert value(found, "fetcher_task_runtime_seconds_bucket", task=task, le="0.01") is not None
    assert not any(name.startswith("fetcher_api_") for name, _ in found), "no [quota], no quota series"


# --- outcomes counted in this process ---------------------------------------------------------------------------


def counted(task: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("fetcher_tasks_total", {"task": task, "outcome": outcome}) or 0.0


def test_a_quota_task_sent_back_unrun_counts_as_returned_unrun(fetcher_app, tmp_path, monkeypatch):
    quota_settings = QuotaSettings(allowance=1, window=3600, queues=("laptop",), state_file=tmp_path / "q.sqlite3")
    monkeypatch.setattr(runtime, "_configured", replace(fetcher_app.settings, quota=quota_settings))

    @runtime.api_task(fetcher_app.app, name="metricsproj.fetch")
    def fetch(url):
        return len(url)

    assert fetch.apply(("a",), routing_key="laptop_task").successful()
    assert fetch.apply(("b",), routing_key="laptop_task").state == "REJECTED"

    assert counted("metricsproj.fetch", "succeeded") == 1
    assert counted("metricsproj.fetch", "returned_unrun") == 1
    assert counted("metricsproj.fetch", "dead_lettered") == 0, "sent back, not failed"
    assert REGISTRY.get_sample_value("fetcher_task_runtime_seconds_count", {"task": "metricsproj.fetch"}) == 2


def test_every_task_has_each_outcome_at_zero_once_a_worker_is_set_up(fetcher_app):
    metrics.start_counts_at_zero(fetcher_app.app)
    for outcome in metrics.OUTCOMES:
        assert counted("fetcher.tasks.call_api", outcome) is not None, outcome
    assert (
        REGISTRY.get_sample_value("fetcher_tasks_total", {"task": "celery.backend_cleanup", "outcome": "retried"})
        is None
    )


def test_only_the_tasks_of_configured_apps_are_counted(fetcher_app, monkeypatch):
    monkeypatch.setattr(runtime, "_configured", runtime.configured())  # restored after configure below
    own, other = Celery("ownproj"), Celery("otherproj")
    runtime.configure(own, fetcher_app.settings)

    def add(x, y):
        return x + y

    own_add = own.task(name="ownproj.add")(add)
    other_add = other.task(name="otherproj.add")(add)

    assert own_add.apply((1, 2)).result == other_add.apply((1, 2)).result == 3

    assert counted("ownproj.add", "succeeded") == 1
    assert counted("otherproj.add", "succeeded") == 0
    assert REGISTRY.get_sample_value("fetcher_task_runtime_seconds_count", {"task": "otherproj.add"}) is None


@pytest.mark.parametrize(
    ("exception", "options", "dead"),
    [
        (ValueError("broken"), {}, True),
        (Reject("bad message", requeue=False), {}, True),
        # Celery requeues a task past its hard time limit (acks_on_timeout is False here): not dead yet.
        (TimeLimitExceeded(300), {}, False),
        (Reject("later", requeue=True), {}, False),
        # A task that acknowledges its failures loses them rather than dead-lettering them.
        (ValueError("broken"), {"acks_on_failure": True}, False),
    ],
)
def test_a_failure_counts_as_dead_lettered_only_when_the_message_is_rejected_for_good(
    fetcher_app, exception, options, dead
):
    name = f"metricsproj.fails.{len(options)}"

    def fails():
        raise exception

    task = fetcher_app.app.tasks.get(name) or fetcher_app.app.task(name=name, **options)(fails)
    before = counted(name, "dead_lettered")

    task_failure.send(sender=task, task_id="a-task-id", exception=exception)

    assert counted(name, "dead_lettered") - before == (1 if dead else 0)


def test_a_retry_counts_as_retried(fetcher_app):
    @fetcher_app.app.task(name="metricsproj.again", bind=True, max_retries=1)
    def again(self):
        raise self.retry(countdown=0)

    again.apply()

    # Run eagerly, a retry runs again at once: the first run retried, the second was past max_retries and failed.
    assert counted("metricsproj.again", "retried") == 1
    assert counted("metricsproj.again", "dead_lettered") == 1
    assert counted("metricsproj.again", "succeeded") == 0


def test_a_multiprocess_directory_is_created_and_one_the_exporter_does_not_read_is_warned_about(
    host_settings, tmp_path, monkeypatch, caplog
):
    elsewhere = tmp_path / "elsewhere" / "worker"
    monkeypatch.setenv(metrics.MULTIPROC_VARIABLE, str(elsewhere))

    metrics.install(Celery("warnedproj"), host_settings)

    assert elsewhere.is_dir()
    assert f"{metrics.MULTIPROC_VARIABLE} is {elsewhere}, but fetcher-metrics reads" in caplog.text

    caplog.clear()
    monkeypatch.setenv(metrics.MULTIPROC_VARIABLE, str(host_settings.metrics.beat_directory))
    metrics.install(Celery("beatproj"), host_settings)
    assert "fetcher-metrics reads" not in caplog.text

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(metrics.MULTIPROC_VARIABLE, str(tmp_path / "a-file" / "worker"))
    with pytest.raises(ConfigError, match=f"{metrics.MULTIPROC_VARIABLE}: cannot create the directory"):
        metrics.install(Celery("brokenproj"), host_settings)


# --- beat -------------------------------------------------------------------------------------------------------


def beat_gauges(entry: str) -> tuple[float | None, float | None]:
    return (
        REGISTRY.get_sample_value("fetcher_beat_last_send_timestamp_seconds", {"entry": entry}),
        REGISTRY.get_sample_value("fetcher_beat_period_seconds", {"entry": entry}),
    )


@pytest.fixture
def beat_of(fetcher_app, tmp_path, monkeypatch):
    """The real scheduler of the test app (Celery's clock moved by the test), behind a fake lock, with `entry` as
    its schedule: yields (scheduler, lock, clock)."""

    @contextmanager
    def scheduler_for(entry: ScheduleEntry):
        app = fetcher_app.app
        monkeypatch.setitem(app.conf, "beat_schedule", beat_schedule((entry,)))
        clock = Now()
        monkeypatch.setattr(app, "now", clock)
        # Entries read back from the schedule file have no app, and take the time from the current one (in beat,
        # its only app): here the test app, whose clock the test moves, rather than one another test made.
        previous = current_app._get_current_object()
        app.set_current()
        lock = FakeLock()
        scheduler = LockedScheduler(app=app, schedule_filename=str(tmp_path / "celerybeat-schedule"), lock=lock)
        try:
            yield scheduler, lock, clock
        finally:
            scheduler.close()
            previous.set_current()

    return scheduler_for


def test_beat_records_each_send_and_the_moment_it_takes_the_lock(beat_of, broker):
    entry = ScheduleEntry(name="metrics-tick", task="fetcher.tasks.add", every=30.0, args=(1, 2), kwargs={})
    with beat_of(entry) as (scheduler, lock, now):
        start = now().timestamp()
        scheduler.tick()
        assert beat_gauges("metrics-tick") == (None, None), "nothing before the lock is taken"

        now.advance(100)
        lock.take()
        scheduler.tick()
        assert beat_gauges("metrics-tick") == (start + 100, 30.0), "the period starts when the lock is taken"

        now.advance(29)
        scheduler.tick()
        assert beat_gauges("metrics-tick") == (start + 100, 30.0)
        assert broker.default_channel.basic_get("server", no_ack=True) is None

        now.advance(1)
        scheduler.tick()
        sent = broker.default_channel.basic_get("server", no_ack=True)
        assert sent is not None and sent.headers["task"] == "fetcher.tasks.add"
        assert beat_gauges("metrics-tick") == (start + 130, 30.0), "sent one period after taking the lock"


def test_a_send_that_fails_is_not_recorded_as_one(beat_of, monkeypatch):
    # A task no app has registered: Celery sends it by name (send_task), which here cannot reach the broker.
    entry = ScheduleEntry(name="metrics-unsent", task="metricsproj.unknown", every=10.0, args=(), kwargs={})
    with beat_of(entry) as (scheduler, lock, now):

        def broker_refuses(*args, **kwargs):
            raise ConnectionError("no broker")

        monkeypatch.setattr(scheduler, "send_task", broker_refuses)
        lock.take()
        scheduler.tick()
        now.advance(10)
        scheduler.tick()  # Celery's apply_entry logs the error and goes on
        assert beat_gauges("metrics-unsent") == (now().timestamp() - 10, 10.0), "still the lock's moment"


def test_beats_gauges_from_a_restarted_beat_are_the_last_ones_set(tmp_path):
    """Two beat processes one after the other (a restart), each writing its file, as beat's unit has it."""
    beat = tmp_path / "beat"
    environment = dict(
        os.environ, PROMETHEUS_MULTIPROC_DIR=str(beat), PYTHONPATH=os.pathsep.join([str(TESTS.parent / "src")])
    )
    record = "import sys; from fetcher import metrics; metrics.record_beat_send('tick', float(sys.argv[1]), 30.0)"
    beat.mkdir()
    for timestamp in ("2000", "1000"):  # the second process's (later) record holds the smaller value
        subprocess.run([sys.executable, "-c", record, timestamp], env=environment, check=True)

    found = samples(_exposition(ProcessFiles([tmp_path / "worker", beat])))

    assert len(list(beat.glob("gauge_mostrecent_*.db"))) == 2
    assert value(found, "fetcher_beat_last_send_timestamp_seconds", entry="tick") == 1000.0, "the newest, not the max"
    assert value(found, "fetcher_beat_period_seconds", entry="tick") == 30.0, "one series, no pid label"


# --- the API allowance ------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def quota_gauges(collector: QuotaCollector) -> dict[str, float]:
    """Each gauge's value; a labelled one's by its label too (`name{queue}`)."""
    return {
        sample.name + "".join(f"{{{value}}}" for value in sample.labels.values()): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def expected(used, remaining, reset, consuming, paused):
    return {
        "fetcher_api_allowance_calls": 3,
        "fetcher_api_window_seconds": 60,
        "fetcher_api_calls_used": used,
        "fetcher_api_calls_remaining": remaining,
        "fetcher_api_window_reset_timestamp_seconds": reset,
        "fetcher_api_quota_consuming": consuming,
        "fetcher_api_quota_paused_seconds": paused,
        "fetcher_api_allowance_spent{laptop}": int(remaining == 0),
    }


@pytest.fixture
def clock():
    return Clock(1_800_000_010.0)  # 10 s into a 60 s window


@pytest.fixture
def quota_settings(tmp_path):
    return QuotaSettings(allowance=3, window=60, queues=("laptop",), state_file=tmp_path / "quota.sqlite3")


def test_the_allowance_gauges_read_the_hosts_counter_at_each_scrape(quota_settings, clock):
    collector = QuotaCollector(quota_settings, clock)
    assert quota_gauges(collector) == expected(0, 3, 1_800_000_060, 0, 0), "no call made yet, no worker"
    assert not quota_settings.state_file.exists(), "read-only: the exporter creates nothing"

    counter = QuotaCounter(quota_settings.state_file, 3, 60, clock)
    counter.take()
    counter.take()
    counter.set_consuming(True)
    clock.now += 5
    assert quota_gauges(collector) == expected(2, 1, 1_800_000_060, 1, 0)

    counter.take()
    counter.set_consuming(False)  # the governor pauses the quota queues at 1_800_000_015
    clock.now = 1_800_000_040.0
    assert quota_gauges(collector) == expected(3, 0, 1_800_000_060, 0, 25)

    clock.now = 1_800_000_061.0  # a new window; the governor has not resumed yet
    assert quota_gauges(collector) == expected(0, 3, 1_800_000_120, 0, 46)


def test_a_worker_gone_while_consuming_counts_as_not_consuming(quota_settings, clock, monkeypatch):
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    counter = QuotaCounter(quota_settings.state_file, 3, 60, clock)
    with monkeypatch.context() as patch:
        patch.setattr(quota.os, "getpid", lambda: gone.pid)
        counter.set_consuming(True)  # recorded by a worker that was then killed, unable to record its stop

    gauges = quota_gauges(QuotaCollector(quota_settings, clock))

    assert gauges["fetcher_api_quota_consuming"] == 0
    assert gauges["fetcher_api_quota_paused_seconds"] == 0, "when it stopped is unknown"


def test_a_host_without_a_quota_has_no_allowance_series(host_settings):
    assert host_settings.quota is None
    assert "fetcher_api_" not in generate_latest(registry_for(host_settings)).decode()


# --- the exporter over HTTP, and who may read it ----------------------------------------------------------------


def test_it_serves_the_metrics_at_metrics_and_nothing_else(host_settings, quota_settings, clock):
    settings = replace(host_settings, quota=quota_settings)
    QuotaCounter(quota_settings.state_file, 3, 60, clock).take()

    with serving(settings, clock) as port:
        status, content_type, body = scrape(port)
        with_query = scrape(port, "/metrics?debug=1")[0]
        _, openmetrics_type, openmetrics_body = scrape(port, accept=PROMETHEUS_ACCEPT)
        elsewhere = scrape(port, "/")
        favicon = scrape(port, "/favicon.ico")[0]

    assert status == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(body)
    assert value(found, "fetcher_api_calls_used") == 1 and value(found, "fetcher_api_allowance_calls") == 3
    assert openmetrics_type.startswith("application/openmetrics-text; version=1.0.0")
    families = {family.name for family in openmetrics_families(openmetrics_body)}
    assert "fetcher_api_calls_used" in families and openmetrics_body.endswith("# EOF\n")
    assert with_query == 200
    assert elsewhere[0] == favicon == 404 and "/metrics" in elsewhere[2]


def test_a_file_created_but_not_yet_sized_does_not_fail_the_scrape(tmp_path):
    # prometheus_client creates a process's file empty and only then sizes it: a scrape may come in between, and a
    # process killed in between leaves it so until its unit starts again.
    worker = tmp_path / "worker"
    worker.mkdir()
    written = MmapedDict(str(worker / "counter_4242.db"))
    written.write_value(
        mmap_key("fetcher_tasks", "fetcher_tasks_total", ["task", "outcome"], ["t", "succeeded"], ""), 2, 0
    )
    written.close()
    (worker / "counter_4343.db").touch()

    found = samples(_exposition(ProcessFiles([worker])))

    assert value(found, "fetcher_tasks_total", task="t", outcome="succeeded") == 2.0


def test_the_directories_are_created_so_it_can_start_before_the_worker(host_settings, tmp_path):
    settings = replace(host_settings, metrics=replace(host_settings.metrics, directory=tmp_path / "fresh"))
    registry_for(settings)
    assert (tmp_path / "fresh" / "worker").is_dir() and (tmp_path / "fresh" / "beat").is_dir()


NETWORKS = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8:1::/48"))


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 client of a dual-stack socket
        ("192.0.2.7", True),
        ("::ffff:192.0.2.7", True),
        ("2001:db8:1::5", True),
        ("198.51.100.7", False),
        ("::ffff:198.51.100.7", False),
        ("2001:db8:2::5", False),
        ("fe80::1%eth0", False),
        ("not an address", False),
    ],
)
def test_loopback_and_the_allowed_networks_may_read_no_one_else(address, allowed):
    assert address_allowed(address, NETWORKS) is allowed


def test_an_allowed_host_name_is_looked_up_when_an_unknown_address_asks():
    addresses = {"monitor": {ipaddress.ip_address("198.51.100.7")}}
    lookups = []

    def resolver(name):
        lookups.append(name)
        if name not in addresses:
            raise OSError("Name or service not known")
        return set(addresses[name])

    clock = Clock(0.0)
    access = Access(NETWORKS, ("monitor", "gone"), resolver, clock)

    assert access.permits("198.51.100.7") and lookups == ["monitor", "gone"]
    assert access.permits("198.51.100.7") and access.permits("192.0.2.7") and access.permits("127.0.0.1")
    assert len(lookups) == 2, "a known address, a network, loopback: no lookup"

    clock.now += RESOLVE_INTERVAL
    assert not access.permits("203.0.113.9") and len(lookups) == 4, "a stranger: looked up again, refused"
    addresses["monitor"] = {ipaddress.ip_address("203.0.113.9")}  # the monitor moved
    assert not access.permits("203.0.113.9") and len(lookups) == 4, f"at most one lookup per {RESOLVE_INTERVAL} s"
    clock.now += RESOLVE_INTERVAL
    assert access.permits("203.0.113.9") and len(lookups) == 6
    assert not access.permits("198.51.100.7"), "its old address reads no more"


def own_address() -> str | None:
    """This host's IPv4 address on its default route, if it has one (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_a_client_not_allowed_gets_403_and_nothing_else(host_settings):
    address = own_address()
    if address is None:
        pytest.skip("no address but loopback: every client would be allowed")
    refused = replace(host_settings, metrics=replace(host_settings.metrics, address=address, allow=()))
    allowed = replace(host_settings, metrics=replace(host_settings.metrics, address=address, allow=(address,)))

    with serving(refused) as port:
        status, content_type, body = scrape(port, host=address)
        elsewhere = scrape(port, "/nothing-here", host=address)[0]
    with serving(allowed) as port:
        assert scrape(port, host=address)[0] == 200

    assert (status, content_type, body) == (403, "", "")
    assert elsewhere == 403, "a refused client learns nothing of the paths either"


def test_without_a_metrics_table_it_exits_saying_so(tmp_path, monkeypatch, capsys):
    path = tmp_path / "fetcher.toml"
    path.write_text(EXAMPLE)
    monkeypatch.setenv("FETCHER_CONFIG", str(path))

    assert metrics_server.main([]) == 2
    assert capsys.readouterr().err == f"fetcher-metrics: no [metrics] in {path}: nothing to serve\n"

    path.write_text(EXAMPLE + METRICS.format(directory=tmp_path).replace("9808", "0"))
    assert metrics_server.main([]) == 2
    assert "metrics.port must be an integer from 1 to 65535" in capsys.readouterr().err
