"""The fetcher app on every server: routing by host, a shared queue, beat on one host, and nothing lost."""

import re

import pytest
from conftest import (
    FETCHER,
    BackgroundDemo,
    beat_sends,
    demo,
    group,
    node,
    queue_depths,
    set_workers,
    unit_enabled,
    wait_for,
)

testinfra_hosts = group("celery_workers")
WORKERS = group("celery_workers")
# The write-up's numbers: (2,2) (4,4) (8,8) (16,16).
SUMS = [4, 8, 16, 32]


def test_worker_is_running_and_enabled(host):
    service = host.service("fetcher-worker")
    assert service.is_running
    assert service.is_enabled


def test_configuration_is_readable_by_root_and_the_service_user_only(host):
    config = host.file("/etc/fetcher/fetcher.toml")
    assert (config.user, config.group, config.mode) == ("root", "fetcher", 0o640)


def test_no_secret_in_units_or_process_arguments(host, app_user):
    password = app_user[1]
    for unit in ("fetcher-worker", "fetcher-beat"):
        path = host.file(f"/etc/systemd/system/{unit}.service")
        if path.exists:
            assert password not in path.content_string
    assert password not in host.check_output("ps -eo args")


def test_worker_logs_in_the_write_ups_format(host):
    log = host.file("/var/log/fetcher/worker.log").content_string
    assert re.search(r"^\[INFO \] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+\s+", log, re.MULTILINE), log[-2000:]


def test_demo_prints_the_write_ups_sums():
    out = node("server").check_output(f"{FETCHER}/fetcher-demo")
    assert out.splitlines()[0] == str(SUMS)


@pytest.mark.parametrize(("sender", "target"), [("laptop", "desktop"), ("desktop", "server")])
def test_task_runs_only_on_the_host_its_routing_key_names(sender, target):
    report = demo(sender, "--routing-key", f"{target}_task", "--count", "8")
    assert report["results"] == [2 * n for n in range(1, 9)]
    assert set(report["hosts"]) == {target}


def test_shared_queue_is_served_by_both_its_consumers():
    # server consumes laptop's queue too (host_vars), so RabbitMQ round-robins it between the two.
    report = demo("desktop", "--routing-key", "laptop_task", "--count", "40")
    assert report["results"] == [2 * n for n in range(1, 41)]
    assert set(report["hosts"]) == {"laptop", "server"}


def test_beat_runs_on_exactly_one_host():
    running = [name for name in WORKERS if node(name).service("fetcher-beat").is_running]
    enabled = [name for name in WORKERS if unit_enabled(node(name), "fetcher-beat")]
    assert len(running) == 1, f"beat runs on {running}"
    assert enabled == running


def test_beats_periodic_fan_out_is_executed():
    def count(pattern, names):
        return sum(int(node(n).run(f"grep -c '{pattern}' /var/log/fetcher/worker.log").stdout or 0) for n in names)

    # The fan-out sends its tasks to laptop_task, which laptop and server consume.
    fanned, received = count("Ran periodic task", WORKERS), count("Received", ["laptop", "server"])
    wait_for(lambda: count("Ran periodic task", WORKERS) > fanned, 60, "beat's fan-out task to run")
    wait_for(lambda: count("Received", ["laptop", "server"]) >= received + 18, 60, "the fanned-out tasks to run")


def test_tasks_sent_while_every_worker_is_stopped_run_when_they_start(app_user):
    vhost = app_user[2]
    set_workers("stop")
    try:
        before = queue_depths(node("server"), vhost).get("desktop", 0)
        client = BackgroundDemo(
            "server", "stopped", "--routing-key", "desktop_task", "--count", "6", "--timeout", "300"
        )
        wait_for(lambda: queue_depths(node("server"), vhost)["desktop"] >= before + 6, 60, "6 tasks to be queued")
    finally:
        set_workers("start")
    report = client.report(180)
    assert report["results"] == [2, 4, 6, 8, 10, 12]
    assert set(report["hosts"]) == {"desktop"}


def test_with_one_of_three_brokers_down_queued_and_new_tasks_all_complete(app_user):
    vhost = app_user[2]
    down = node("desktop")
    set_workers("stop")
    try:
        queued = BackgroundDemo("server", "queued", "--routing-key", "laptop_task", "--count", "10", "--timeout", "300")
        wait_for(lambda: queue_depths(node("server"), vhost)["laptop"] >= 10, 60, "10 tasks to be queued")
        down.check_output("systemctl stop rabbitmq-server")
        # Sent meanwhile, through laptop's own broker, to desktop's queue: desktop's worker must fail over.
        meanwhile = BackgroundDemo(
            "laptop", "meanwhile", "--routing-key", "desktop_task", "--count", "10", "--timeout", "300"
        )
        set_workers("start")
        first, second = queued.report(240), meanwhile.report(240)
    finally:
        down.check_output("systemctl start rabbitmq-server && rabbitmqctl await_startup --timeout 120")
        set_workers("start")
    assert first["results"] == [2 * n for n in range(1, 11)]
    assert second["results"] == [2 * n for n in range(1, 11)]
    assert set(second["hosts"]) == {"desktop"}


def test_a_task_that_fails_for_good_is_dead_lettered_not_dropped(app_user):
    vhost = app_user[2]
    before = queue_depths(node("server"), vhost).get("tasks.dead", 0)
    # add("x", 1) raises TypeError: not transient, so no retry; the worker rejects it and RabbitMQ dead-letters it.
    node("server").check_output(
        f"{FETCHER}/celery -A fetcher.app call fetcher.tasks.add --args '[\"x\", 1]' --queue desktop"
    )
    wait_for(
        lambda: queue_depths(node("server"), vhost).get("tasks.dead", 0) == before + 1,
        60,
        "the failed task to reach the dead-letter queue",
    )


def test_a_second_beat_sends_nothing_until_the_first_lets_go():
    """Two beats: the one without the lock waits and sends nothing; it takes over when the first stops, and
    no entry is sent twice within its period at any point (beat's send times in both logs, merged)."""
    first = next(name for name in WORKERS if node(name).service("fetcher-beat").is_running)
    second = next(name for name in WORKERS if name != first)
    period, entry = 10, "fan-out-to-laptop"  # every 10 s on the test bed
    beat_toml = node(first).file("/etc/fetcher/beat.toml").content_string
    node(second).check_output(f"cat > /tmp/beat2.toml <<'EOF'\n{beat_toml}\nEOF")
    log = "/tmp/beat2.log"
    node(second).check_output(
        f"rm -f {log} /tmp/beat2-schedule*; setsid -f env FETCHER_BEAT_CONFIG=/tmp/beat2.toml {FETCHER}/celery "
        f"-A fetcher.app beat --schedule /tmp/beat2-schedule --logfile {log} --pidfile /tmp/beat2.pid"
    )
    try:
        # The log appears only once the second beat has started (seconds on a busy machine).
        wait_for(
            lambda: "another beat holds the lock" in node(second).run(f"cat {log}").stdout,
            60,
            "the second beat to see the lock held",
        )
        sent_before = len(beat_sends(first, "/var/log/fetcher/beat.log", entry))
        wait_for(
            lambda: len(beat_sends(first, "/var/log/fetcher/beat.log", entry)) >= sent_before + 2,
            60,
            "the first beat to go on sending",
        )
        assert beat_sends(second, log, entry) == [], "the second beat sent without the lock"
        node(first).check_output("systemctl stop fetcher-beat")
        wait_for(lambda: len(beat_sends(second, log, entry)) >= 2, 120, "the second beat to take the lock and send")
        node(first).check_output("systemctl start fetcher-beat")
        wait_for(
            lambda: "another beat holds the lock" in node(first).run("tail -n 20 /var/log/fetcher/beat.log").stdout,
            60,
            "the restarted first beat to wait for the lock",
        )
        node(second).check_output("kill $(cat /tmp/beat2.pid)")
        taken_back = len(beat_sends(first, "/var/log/fetcher/beat.log", entry))
        wait_for(
            lambda: len(beat_sends(first, "/var/log/fetcher/beat.log", entry)) >= taken_back + 2,
            120,
            "the first beat to take the lock back and send",
        )
    finally:
        node(second).run("kill $(cat /tmp/beat2.pid) 2>/dev/null")
        node(first).check_output("systemctl start fetcher-beat")
    sends = sorted(beat_sends(first, "/var/log/fetcher/beat.log", entry) + beat_sends(second, log, entry))
    gaps = [later - earlier for earlier, later in zip(sends, sends[1:], strict=False)]
    # Log times are whole seconds: one period is at least period - 1 apart as logged.
    assert min(gaps) >= period - 1, f"fan-out sent twice within {period} s: sends at {sends}"
