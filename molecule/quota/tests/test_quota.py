"""Per-host API allowances that hold, against a real rate-limited HTTP API (the stand-in on `api`).

server may make 20 calls per 20 s window, laptop 100; both consume the shared `api` queue. The stand-in
counts every call per token and per window by its own clock, and answers 429 past a token's allowance:
its counts are the evidence.
"""

import json
import threading
import time
import uuid

from conftest import FETCHER, demo, group, host_var, node, queue_depths, send_api_calls, stand_in, wait_for

testinfra_hosts = group("celery_workers")
WINDOW = host_var("server", "celery_worker_quota_window")
ALLOWANCE = {name: host_var(name, "celery_worker_quota_allowance") for name in ("server", "laptop")}
QUOTA = f"{FETCHER}/fetcher-quota --json"
# Takes the one message of the api queue and sends it back unrun TIMES times, each time through the function
# the worker uses when a task finds the allowance spent (fetcher.governor.return_unrun), then acknowledges it.
RETURN = (
    f"{FETCHER}/python -c 'import sys, time, types; from fetcher.app import app; from fetcher import governor\n"
    "with app.connection_for_write() as connection:\n"
    "    channel = connection.default_channel\n"
    "    for _ in range(int(sys.argv[1])):\n"
    "        deadline, raw = time.time() + 10, None\n"
    "        while raw is None and time.time() < deadline:\n"
    "            raw = channel.basic_get(\"api\", no_ack=False)\n"
    "        message = channel.message_to_python(raw)\n"
    "        governor.return_unrun(types.SimpleNamespace(message=message, task=types.SimpleNamespace(app=app)))\n"
    "        message.ack()\n"
    "'"
)
# Rejects the api queue's messages back with requeue, as a plain reject would, until none is left; prints how many.
REJECT = (
    f"{FETCHER}/python -c 'import time; from fetcher.app import app\n"
    "with app.connection_for_write() as connection:\n"
    "    channel, rejects = connection.default_channel, 0\n"
    "    while rejects < 50 and (raw := channel.basic_get(\"api\", no_ack=False)) is not None:\n"
    "        channel.basic_reject(raw.delivery_tag, requeue=True)\n"
    "        rejects += 1\n"
    "        time.sleep(0.05)\n"
    "    print(rejects)\n"
    "'"
)


def calls(run):
    """The stand-in's record of this run's calls: {"t", "caller", "item", "status", "window"} each."""
    return [call for call in stand_in("/calls") if call["item"].startswith(f"{run}-")]


def quota(name):
    return json.loads(node(name).check_output(QUOTA))


def dead(vhost):
    return queue_depths(node("server"), vhost).get("tasks.dead", 0)


def wait_for_a_fresh_window():
    """Sleep until just after a window starts, so a test's first window is a whole one."""
    wait_for(lambda: time.time() % WINDOW < 1.0, WINDOW + 5, "a new window to start")


def per_window(run_calls):
    counts = {}
    for call in run_calls:
        key = (call["caller"], call["window"])
        counts.setdefault(key, {"ok": 0, "limited": 0})
        counts[key]["ok" if call["status"] == 200 else "limited"] += 1
    return counts


def test_the_stand_in_counts_each_token_against_the_servers_allowance():
    stats = stand_in("/stats")
    assert stats["window"] == WINDOW
    assert {name: caller["allowance"] for name, caller in stats["callers"].items()} == ALLOWANCE


def test_the_api_token_is_in_no_unit_log_or_process_argument(host):
    name = host.backend.get_hostname()
    token = host_var(name, "vault_fetcher_api_tokens")[name]
    config = host.file("/etc/fetcher/fetcher.toml")
    assert token in config.content_string and (config.user, config.group, config.mode) == ("root", "fetcher", 0o640)
    for path in ("/etc/systemd/system/fetcher-worker.service", "/var/log/fetcher/worker.log"):
        assert token not in host.file(path).content_string, path
    assert token not in host.check_output("ps -eo args")
    assert token not in host.check_output("journalctl --no-pager -u fetcher-worker")


def test_under_demand_above_supply_no_server_exceeds_its_allowance_and_nothing_is_lost(app_user):
    """Three windows' worth of work: the smaller allowance runs out first and laptop carries on; after
    each roll-over both take work again; every task is executed or dead-lettered, exactly once."""
    vhost = app_user[2]
    supply = sum(ALLOWANCE.values())
    count, run = 5 * supply // 2, f"demand-{uuid.uuid4().hex[:8]}"
    dead_before = dead(vhost)
    wait_for_a_fresh_window()
    send_api_calls(run, count)

    # While it runs: server's worker is seen not consuming `api` while laptop still is, and meanwhile its own
    # queue keeps flowing.
    # The two workers are sampled in a loop of their own, as often as they answer, so that the pause (seconds
    # long) is not missed while the counts below are read.
    seen, own_queue, stop = [], [], threading.Event()

    def sample():
        while not stop.is_set():
            seen.append((quota("server")["consuming"], quota("laptop")["consuming"]))

    def finished():
        if (False, True) in seen and not own_queue:
            own_queue.append(demo("server", "--routing-key", "server_task", "--count", "4"))
        done = {call["item"] for call in calls(run) if call["status"] == 200}
        return len(done) + dead(vhost) - dead_before >= count

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wait_for(finished, 4 * WINDOW + 60, f"{count} API tasks to be executed or dead-lettered")
    finally:
        stop.set()
        sampler.join(timeout=30)
    run_calls = calls(run)
    counts = per_window(run_calls)

    overruns = {key: value for key, value in counts.items() if value["limited"] or value["ok"] > ALLOWANCE[key[0]]}
    assert not overruns, f"calls past an allowance (429s or counts above it): {overruns}"
    first = min(window for _, window in counts)
    assert counts[("server", first)]["ok"] == ALLOWANCE["server"], counts
    assert counts[("laptop", first)]["ok"] > ALLOWANCE["server"], "laptop carried on after server stopped"
    assert len({window for caller, window in counts if caller == "server"}) >= 2, "server resumed after the reset"
    assert (False, True) in seen, f"server never seen paused while laptop consumed: {seen}"
    [report] = own_queue
    assert report["results"] == [2, 4, 6, 8] and set(report["hosts"]) == {"server"}, "the own queue flows meanwhile"

    items = [call["item"] for call in run_calls if call["status"] == 200]
    duplicates = len(items) - len(set(items))
    assert duplicates == 0, f"{duplicates} items were called twice"
    assert len(set(items)) + dead(vhost) - dead_before == count, "every task executed or dead-lettered"
    assert dead(vhost) == dead_before, "no task should die for want of allowance: it waits for one"


def test_a_worker_restarted_mid_window_does_not_regain_its_allowance(app_user):
    """server spends its allowance with laptop's worker stopped, restarts, and makes no call until the reset."""
    vhost = app_user[2]
    run = f"restart-{uuid.uuid4().hex[:8]}"
    laptop = node("laptop")
    laptop.check_output("systemctl stop fetcher-worker")
    try:
        wait_for_a_fresh_window()
        send_api_calls(run, ALLOWANCE["server"] + 10)
        wait_for(lambda: quota("server")["remaining"] == 0, WINDOW / 2, "server to spend its allowance")
        window = quota("server")["window_start"]
        node("server").check_output("systemctl restart fetcher-worker")
        wait_for(
            lambda: node("server").run(f"{FETCHER}/celery -A fetcher.app inspect ping -d fetcher@server -t 2").rc == 0,
            30,
            "server's worker to answer after its restart",
        )
        status = quota("server")
        assert status["window_start"] == window, "the restart took longer than the window; make the window longer"
        assert (status["used"], status["remaining"], status["consuming"]) == (ALLOWANCE["server"], 0, False)
        assert queue_depths(node("server"), vhost)["api"] >= 10, "the rest waits in the queue"
        made = [call for call in calls(run) if call["window"] == window]
        assert len(made) == ALLOWANCE["server"] and all(call["status"] == 200 for call in made)

        # After the roll-over it takes work again by itself, and the queue drains.
        wait_for(lambda: len(calls(run)) == ALLOWANCE["server"] + 10, 2 * WINDOW, "server to resume after the reset")
        assert {call["caller"] for call in calls(run)} == {"server"}
        assert quota("server")["consuming"] is True
    finally:
        laptop.check_output("systemctl start fetcher-worker")


def test_a_worker_that_starts_with_api_work_waiting_takes_it(app_user):
    """Both workers stopped, work queued; laptop alone starts (with allowance left) and runs all of it."""
    vhost = app_user[2]
    run, count = f"waiting-{uuid.uuid4().hex[:8]}", 10
    dead_before = dead(vhost)
    for name in ("server", "laptop"):
        node(name).check_output("systemctl stop fetcher-worker")
    try:
        send_api_calls(run, count)
        wait_for(lambda: queue_depths(node("server"), vhost)["api"] >= count, 30, f"{count} tasks to be queued")
        node("laptop").check_output("systemctl start fetcher-worker")
        wait_for(lambda: len(calls(run)) >= count, 60, f"laptop to run the {count} waiting tasks")
    finally:
        for name in ("server", "laptop"):
            node(name).check_output("systemctl start fetcher-worker")
    made = calls(run)
    assert len(made) == count and {call["caller"] for call in made} == {"laptop"}
    assert dead(vhost) == dead_before


def test_a_task_sent_back_unrun_more_often_than_the_delivery_limit_still_runs_once(app_user):
    """A quota pause never counts against the queue's delivery limit, while a real reject does."""
    vhost = app_user[2]
    limit = host_var("server", "celery_worker_delivery_limit", 5)
    waiting, failing = f"paused-{uuid.uuid4().hex[:8]}", f"rejected-{uuid.uuid4().hex[:8]}"
    for name in ("server", "laptop"):
        node(name).check_output("systemctl stop fetcher-worker")
    try:
        wait_for(lambda: queue_depths(node("server"), vhost)["api"] == 0, 30, "the api queue to be empty")
        dead_before = dead(vhost)
        # The limit is in force: a message rejected back again and again is dead-lettered after it.
        send_api_calls(failing, 1)
        rejects = int(node("server").check_output(REJECT))
        assert rejects <= limit + 1, f"rejected {rejects} times and still in its queue (limit {limit})"
        wait_for(lambda: dead(vhost) == dead_before + 1, 30, "the rejected task to be dead-lettered")
        # Sent back unrun twice the limit, the way a worker whose allowance is spent does: still waiting.
        send_api_calls(waiting, 1)
        node("server").check_output(f"{RETURN} {2 * limit}")
        # A quorum queue's message count comes from metrics the queue publishes now and then: poll it.
        wait_for(lambda: queue_depths(node("server"), vhost)["api"] == 1, 30, "the paused task to wait in its queue")
        assert dead(vhost) == dead_before + 1, "a task sent back unrun was dead-lettered"
    finally:
        for name in ("server", "laptop"):
            node(name).check_output("systemctl start fetcher-worker")
    wait_for(
        lambda: calls(waiting) and queue_depths(node("server"), vhost)["api"] == 0,
        2 * WINDOW + 30,
        "the paused task to run once a worker is back, and the api queue to drain",
    )
    assert [call["item"] for call in calls(waiting)] == [f"{waiting}-0"], "run exactly once"
    assert calls(failing) == [], "a dead-lettered task is not run"
    assert dead(vhost) == dead_before + 1
