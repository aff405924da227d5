"""The fetcher app on the write-up's two servers: the demo runs end to end."""

import json
import re

from conftest import FETCHER, host_var, node, wait_for


def test_demo_prints_the_write_ups_sums():
    out = node("server").check_output(f"{FETCHER}/fetcher-demo")
    assert out.splitlines()[0] == "[4, 8, 16, 32]"


def test_laptop_task_runs_on_laptop_or_server():
    out = node("laptop").check_output(f"{FETCHER}/fetcher-demo --routing-key laptop_task --show-hosts")
    assert out.splitlines()[0] == "[4, 8, 16, 32]"
    assert all(line.rsplit(" on ", 1)[1] in ("laptop", "server") for line in out.splitlines()[1:])


def test_with_the_occasional_laptop_off_the_queues_keep_working():
    """The write-up's laptop switched off: its broker and worker stop; server takes and runs every task."""
    laptop = node("laptop")
    laptop.check_output("systemctl stop fetcher-worker rabbitmq-server")
    try:
        out = node("server").check_output(
            f"{FETCHER}/fetcher-demo --routing-key laptop_task --show-hosts --timeout 120"
        )
        assert out.splitlines()[0] == "[4, 8, 16, 32]"
        assert all(line.rsplit(" on ", 1)[1] == "server" for line in out.splitlines()[1:])
        out = node("server").check_output(f"{FETCHER}/fetcher-demo --timeout 120")
        assert out.splitlines()[0] == "[4, 8, 16, 32]"
    finally:
        laptop.check_output(
            "systemctl start rabbitmq-server && rabbitmqctl await_startup --timeout 120 "
            "&& systemctl start fetcher-worker"
        )


def test_each_worker_replaces_its_processes_after_so_many_tasks_or_so_much_memory():
    """The recycling limits reach the running workers: the pool's own figure and the worker's loaded settings."""
    for name in ("server", "laptop"):
        ask = f"{FETCHER}/celery -A fetcher.app inspect --json -t 5 -d fetcher@{name}"
        # A worker just started again (the test above stops laptop's) answers once it is connected.
        stats = wait_for(
            lambda name=name, ask=ask: node(name).run(f"{ask} stats").stdout.strip(), 90, f"fetcher@{name} to answer"
        )
        pool = json.loads(stats)[f"fetcher@{name}"]["pool"]
        conf = json.loads(node(name).check_output(f"{ask} conf"))[f"fetcher@{name}"]
        assert pool["max-tasks-per-child"] == host_var(name, "celery_worker_max_tasks_per_child", 1000), pool
        assert conf["worker_max_memory_per_child"] == host_var(name, "celery_worker_max_memory_per_child", 524288)


def test_a_worker_log_larger_than_its_bound_is_rotated_before_its_week_is_up():
    """logrotate is installed (a minimal Debian lacks it), and the app's rule rotates by size as well as weekly."""
    server = node("server")
    assert server.package("logrotate").is_installed
    probe = "/var/log/fetcher/size-probe.log"
    size = host_var("server", "celery_worker_log_max_size", "100M")
    # One byte past the bound (a sparse file), and a state file of its own so no earlier rotation counts.
    server.check_output(
        f"runuser -u fetcher -- truncate -s {size} {probe} && runuser -u fetcher -- truncate -s +1 {probe}"
    )
    try:
        server.check_output("logrotate --state /tmp/size-probe.state /etc/logrotate.d/fetcher")
        assert server.file(f"{probe}.1").exists, "a log past its size bound was not rotated"
    finally:
        server.run(f"rm -f {probe} {probe}.* /tmp/size-probe.state")


def test_the_app_units_run_sandboxed():
    """systemd rates the worker's and beat's units below 5 (its "OK" band), and the running processes hold no
    capability, cannot gain privileges, and run under a system call filter."""
    for name, unit in (("server", "fetcher-worker"), ("laptop", "fetcher-worker"), ("server", "fetcher-beat")):
        host = node(name)
        rating = host.check_output(f"systemd-analyze security --no-pager {unit}.service")
        level = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", rating)[1])
        print(f"{name}: {unit} exposure {level}")
        assert level < 5, f"{name}: {unit} exposure {level}:\n{rating}"
        pid = host.check_output(f"systemctl show -p MainPID --value {unit}")
        status = dict(
            line.split(":\t", 1)
            for line in host.file(f"/proc/{pid}/status").content_string.splitlines()
            if ":\t" in line
        )
        assert (status["NoNewPrivs"], status["Seccomp"], int(status["CapBnd"], 16)) == ("1", "2", 0), status
