"""Availability follows membership: a cluster grown from one node to four and shrunk to two, under load.

Each step changes the inventory as an operator would (a host added to or deleted from a group) and runs
site.yml or remove-node.yml against it; a publisher (molecule/resources/load/publish.py) on a server sends
real Celery tasks, each counted once the broker confirmed it, and every confirmed task must then be executed
(counted by task id in the workers' logs). The tests run in file order, each on the cluster the previous one
left: converge built lc-delta alone.
"""

import atexit
import collections
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from conftest import (
    FETCHER,
    PROJECT,
    beat_sends,
    cluster_status,
    node,
    nodename,
    operator_env,
    queue_depths,
    quorum_queues,
    unit_enabled,
    wait_for,
)

PUBLISHER = PROJECT / "molecule/resources/load/publish.py"
VHOST = "myvhost"
DELTA, ALPHA, CHARLIE, BRAVO = "lc-delta", "lc-alpha", "lc-charlie", "lc-bravo"
# The hosts with the app (a worker each, and so a publisher): lc-delta from the start, lc-alpha once it joins.
WORKERS = [ALPHA, DELTA]
# The longest a publisher may wait for a confirm while a node is down or off.
GAP_BOUND = 60
# From the beat move on, beat sends one entry every TICK_PERIOD seconds (none before: the counts above stay clear).
TICK, TICK_PERIOD = "lc-tick", 10
TICK_SCHEDULE = [
    "-e",
    json.dumps(
        {"celery_beat_schedule": [{"name": TICK, "task": "fetcher.tasks.add", "every": TICK_PERIOD, "args": [1, 1]}]}
    ),
]
BEAT_LOG = "/var/log/fetcher/beat.log"
# The inventory's groups as the operator keeps them, changed step by step (converge: lc-delta alone).
INVENTORY = {"rabbitmq": [DELTA], "rabbitmq_occasional": [], "celery_workers": [DELTA], "celery_beat": [DELTA]}
FOLDER = Path(tempfile.mkdtemp(prefix="lifecycle-inventory-"))
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)


def write_inventory():
    """The inventory of this step: Molecule's hosts (their connection) in INVENTORY's groups, beside the test
    bed's group_vars and host_vars."""
    source = yaml.safe_load(Path(os.environ["MOLECULE_INVENTORY_FILE"]).read_text())
    hosts = {
        name: {"ansible_connection": values["ansible_connection"]} for name, values in source["all"]["hosts"].items()
    }
    groups = {name: {"hosts": {host: None for host in members}} for name, members in INVENTORY.items()}
    for link in ("group_vars", "host_vars"):
        if not (FOLDER / link).exists():
            (FOLDER / link).symlink_to(PROJECT / "inventories/testbed" / link)
    path = FOLDER / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts, "children": groups}}))
    return path


def playbook(name, *args, succeed=True):
    """Run site.yml or one of playbooks/ as an operator would, against this step's inventory."""
    command = ["ansible-playbook", str(PROJECT / name), "-i", str(write_inventory()), *args]
    env = operator_env()
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    print(
        f"{name} {' '.join(args)} with rabbitmq={INVENTORY['rabbitmq']} "
        f"occasional={INVENTORY['rabbitmq_occasional']}: rc {done.returncode}, {time.monotonic() - started:.0f} s"
    )
    if succeed:
        assert done.returncode == 0, f"{name} failed:\n{done.stdout[-5000:]}\n{done.stderr[-2000:]}"
    return done


def recap(output):
    """{host: {"changed": N, ...}} from a play recap."""
    return {
        match[1]: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match[2])}
        for match in re.finditer(r"^(\S+)\s*:\s*(ok=.*)$", output, re.MULTILINE)
    }


def docker(*args):
    subprocess.run(["docker", *args], check=True, capture_output=True, text=True, timeout=120)


def main_pid(name, unit):
    return node(name).check_output(f"systemctl show -p MainPID --value {unit}")


def members():
    return sorted(INVENTORY["rabbitmq"])


def whole(via, timeout=300):
    """Wait until every member runs in one cluster, every quorum queue has all its replicas online, and every
    worker of the inventory runs."""
    expected = sorted(nodename(name) for name in members())

    def check():
        try:
            if sorted(cluster_status(node(via))["running_nodes"]) != expected:
                return False
            queues = quorum_queues(node(via), VHOST)
        except (AssertionError, ValueError):
            return False
        return all(sorted(queue["online"]) == sorted(queue["members"]) for queue in queues) and all(
            node(name).run("systemctl is-active fetcher-worker").rc == 0 for name in INVENTORY["celery_workers"]
        )

    wait_for(check, timeout, f"the cluster {expected} to be whole again")


def check_replicas(target, via=DELTA):
    """Every quorum queue of the app's vhost has `target` replicas, all on dependable members, all online."""
    eligible = {nodename(name) for name in members() if name not in INVENTORY["rabbitmq_occasional"]}
    queues = quorum_queues(node(via), VHOST)
    assert queues, "the app's vhost has no quorum queue"
    for queue in queues:
        assert len(queue["members"]) == target, f"{queue['name']} has replicas on {queue['members']}, wants {target}"
        assert set(queue["members"]) <= eligible, f"{queue['name']} has replicas on {queue['members']}"
        assert sorted(queue["online"]) == sorted(queue["members"]), queue
    print(f"{len(members())} node(s) {members()}: {len(queues)} quorum queues, {target} replica(s) each")


class Load:
    """The publisher on one server, sending `add` tasks round-robin to the given hosts' queues."""

    def __init__(self, name, queues):
        self.host, self.run = node(name), f"lc-{uuid.uuid4().hex[:8]}"
        self.folder = f"/tmp/{self.run}"
        self.host.check_output(f"mkdir -p {self.folder}")
        self.host.ansible("copy", f"src={PUBLISHER} dest={self.folder}/publish.py mode=0644", check=False)
        self.host.check_output(
            f"setsid -f sh -c '{FETCHER}/python {self.folder}/publish.py {self.run} {self.folder} {' '.join(queues)} "
            f">{self.folder}/out 2>&1'"
        )

    def sent(self):
        sent = self.host.file(f"{self.folder}/sent")
        return sent.content_string.split() if sent.exists else []

    def confirmed(self):
        """The time of each confirm, in order."""
        lines = self.host.file(f"{self.folder}/confirmed").content_string.splitlines()
        return [float(line.split()[0]) for line in lines]

    def more(self, count, timeout, what):
        """Wait until `count` more tasks than now are confirmed."""
        goal = len(self.sent()) + count
        wait_for(lambda: len(self.sent()) >= goal, timeout, f"{count} more confirmed tasks {what}")

    def __enter__(self):
        wait_for(lambda: len(self.sent()) >= 10, 120, "the publisher to get going")
        return self

    def __exit__(self, *exc):
        self.host.check_output(f"touch {self.folder}/stop")
        wait_for(lambda: self.host.file(f"{self.folder}/done").exists, 180, "the publisher to stop")

    def executed(self, hosts):
        """How many times each task id of this run succeeded, over the given workers' logs."""
        counts = collections.Counter()
        for name in hosts:
            found = (
                node(name)
                .run(f"grep -ho 'fetcher.tasks.add\\[{self.run}-[0-9]*\\] succeeded' /var/log/fetcher/worker.log")
                .stdout
            )
            counts.update(re.findall(rf"\[({self.run}-\d+)\]", found))
        return counts

    def report(self, what, hosts=WORKERS):
        """Wait until every confirmed task ran; return (sent, duplicates)."""
        sent = self.sent()
        wait_for(
            lambda: not set(sent) - set(self.executed(hosts)),
            300,
            f"all {len(sent)} confirmed tasks of {self.run} to be executed",
        )
        executed = self.executed(hosts)
        duplicates = {task: n for task, n in executed.items() if n > 1}
        errors = self.host.file(f"{self.folder}/errors").content_string.splitlines()
        print(
            f"{what}: {len(sent)} tasks sent and executed ({self.run}), 0 lost, {len(duplicates)} executed "
            f"twice, {len(errors)} publish attempts retried"
        )
        return sent, duplicates

    def longest_gap(self, start, end):
        """The longest wait between consecutive confirms over [start, end] (epoch seconds)."""
        times = [start, *(t for t in self.confirmed() if start < t < end), end]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


def test_queued_tasks_run_when_a_node_whose_name_sorts_first_joins():
    """lc-delta holds tasks its stopped worker has not taken; lc-alpha, sorting first, joins it, and lc-delta is
    neither reset nor restarted: its worker then runs every task."""
    delta = node(DELTA)
    delta.check_output("systemctl stop fetcher-worker")
    with Load(DELTA, [DELTA]) as load:
        load.more(40, 120, "while lc-delta's worker is stopped")
    sent = load.sent()
    # The depth comes from the queue's statistics, which RabbitMQ updates every few seconds.
    wait_for(
        lambda: queue_depths(delta, VHOST)[DELTA] == len(sent),
        60,
        f"lc-delta's queue to hold all {len(sent)} confirmed tasks",
    )
    assert not load.executed([DELTA]), "a task ran while the worker was stopped"
    broker = main_pid(DELTA, "rabbitmq-server")

    INVENTORY["rabbitmq"].append(ALPHA)
    INVENTORY["celery_workers"].append(ALPHA)
    playbook("site.yml")

    assert main_pid(DELTA, "rabbitmq-server") == broker, "lc-delta's broker was restarted"
    status = cluster_status(delta)
    assert sorted(status["running_nodes"]) == sorted(nodename(name) for name in members()), status
    load.report("queued on lc-delta alone, run after lc-alpha joined", [DELTA])
    check_replicas(2)


def test_grows_to_three_then_four_nodes_with_replicas_on_the_target():
    INVENTORY["rabbitmq"].append(CHARLIE)
    playbook("site.yml")
    check_replicas(3)
    INVENTORY["rabbitmq"].append(BRAVO)
    playbook("site.yml")
    # Four dependable nodes: three replicas, so any one node off leaves each queue a majority.
    check_replicas(3)


def test_each_node_killed_in_turn_under_load_loses_no_task_and_publishing_goes_on():
    whole(DELTA)
    gaps = {}
    for victim in sorted(members()):
        publisher = ALPHA if victim == DELTA else DELTA
        with Load(publisher, WORKERS) as load:
            killed = time.time()
            docker("kill", victim)
            load.more(25, 120, f"while {victim} is killed")
            docker("start", victim)
            whole(publisher)
            back = time.time()
            load.more(10, 60, f"once {victim} is back")
        load.report(f"{victim} killed (down {back - killed:.0f} s until the cluster was whole again)")
        gaps[victim] = load.longest_gap(killed, back)
        print(f"{victim} killed: the longest wait for a confirm was {gaps[victim]:.1f} s")
    assert max(gaps.values()) < GAP_BOUND, f"publishing waited too long for a confirm: {gaps}"


def test_a_removed_node_leaves_no_replica_and_keeps_no_cookie_tls_key_or_data():
    with Load(DELTA, WORKERS) as load:
        playbook("playbooks/remove-node.yml", "-e", f"node={BRAVO}")
    INVENTORY["rabbitmq"].remove(BRAVO)
    load.report(f"{BRAVO} removed")
    check_replicas(3)
    status = cluster_status(node(DELTA))
    assert sorted(status["disk_nodes"] + status["ram_nodes"]) == sorted(nodename(name) for name in members())
    removed = node(BRAVO)
    assert not removed.service("rabbitmq-server").is_running
    assert not removed.service("rabbitmq-server").is_enabled
    assert not removed.file("/var/lib/rabbitmq/.erlang.cookie").exists
    assert not removed.file("/root/.erlang.cookie").exists
    assert not removed.file("/var/lib/rabbitmq/mnesia").exists
    # Its TLS key and the certificate the cluster's CA signed for it go too: the key never leaves a member.
    assert not removed.file("/etc/rabbitmq/tls").exists


def test_a_removal_that_would_cost_a_queue_its_majority_is_refused_with_nothing_changed():
    """lc-delta's broker is stopped: removing lc-charlie would leave every queue one replica of two online."""
    queues = {queue["name"]: sorted(queue["members"]) for queue in quorum_queues(node(ALPHA), VHOST)}
    brokers = {name: main_pid(name, "rabbitmq-server") for name in (ALPHA, CHARLIE)}
    node(DELTA).check_output("systemctl stop rabbitmq-server")
    try:
        done = playbook("playbooks/remove-node.yml", "-e", f"node={CHARLIE}", succeed=False)
    finally:
        node(DELTA).check_output("systemctl start rabbitmq-server")
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"the removal went ahead:\n{output[-4000:]}"
    assert "without a majority of their members online" in output, output[-4000:]
    named = re.findall(r"(\S+) \(members after: ", output)
    print(
        f"removing {CHARLIE} with {DELTA} stopped: refused, changed=0, {len(set(named))} queues named as left "
        f"without a majority, e.g. {sorted(set(named))[:3]}"
    )
    counts = recap(done.stdout)
    assert counts and all(host["changed"] == 0 for host in counts.values()), counts
    # Nothing stopped, nothing forgotten, no replica moved.
    assert {name: main_pid(name, "rabbitmq-server") for name in (ALPHA, CHARLIE)} == brokers
    whole(ALPHA)
    status = cluster_status(node(ALPHA))
    assert sorted(status["disk_nodes"] + status["ram_nodes"]) == sorted(nodename(name) for name in members())
    assert set(status["maintenance_status"].values()) == {"not under maintenance"}, status
    assert {queue["name"]: sorted(queue["members"]) for queue in quorum_queues(node(ALPHA), VHOST)} == queues


def test_two_nodes_one_occasional_and_switched_off_keep_taking_and_running_tasks():
    with Load(DELTA, WORKERS) as load:
        playbook("playbooks/remove-node.yml", "-e", f"node={CHARLIE}")
        INVENTORY["rabbitmq"].remove(CHARLIE)
        INVENTORY["rabbitmq_occasional"].append(ALPHA)
        # Beat moves to the occasional node too: the next test moves it back while that node is off.
        INVENTORY["celery_beat"] = [ALPHA]
        playbook("site.yml", *TICK_SCHEDULE)
    load.report(f"{CHARLIE} removed, then {ALPHA} made occasional")
    # One dependable node: one replica each, none on the occasional node.
    check_replicas(1)
    assert not node(DELTA).service("fetcher-beat").is_running
    wait_for(lambda: len(beat_sends(ALPHA, BEAT_LOG, TICK)) >= 2, 60, f"beat on {ALPHA} to send {TICK}")

    with Load(DELTA, [DELTA]) as load:
        off = time.time()
        docker("stop", ALPHA)
        load.more(50, 120, f"while {ALPHA} is switched off")
        gap = load.longest_gap(off, time.time())
    load.report(f"{ALPHA} (occasional) switched off", [DELTA])
    print(f"{ALPHA} switched off: the longest wait for a confirm was {gap:.1f} s")
    assert gap < GAP_BOUND
    assert cluster_status(node(DELTA))["running_nodes"] == [nodename(DELTA)]


def test_beat_moves_in_one_run_while_its_old_host_is_off_and_the_old_beat_never_sends_when_back():
    """lc-alpha, beat's host, is off: site.yml moves beat to lc-delta, leaving lc-alpha out with a message.
    When lc-alpha boots, its beat (still enabled there) starts but sends nothing, since lc-delta's beat holds
    the lock; the next run stops it. No send of the entry, over both logs, is within one period of another."""
    INVENTORY["celery_beat"] = [DELTA]
    done = playbook("site.yml", *TICK_SCHEDULE)
    assert f"Not answering, left out of this run: {ALPHA}." in done.stdout, done.stdout[-3000:]
    assert all(counts.get("unreachable", 0) == 0 and counts["failed"] == 0 for counts in recap(done.stdout).values())
    assert node(DELTA).service("fetcher-beat").is_running
    wait_for(lambda: len(beat_sends(DELTA, BEAT_LOG, TICK)) >= 2, 60, f"beat on {DELTA} to send {TICK}")

    docker("start", ALPHA)
    alpha = node(ALPHA)
    wait_for(
        lambda: alpha.run(f"tail -n 20 {BEAT_LOG}").stdout.count("another beat holds the lock") > 0,
        180,
        f"the old beat on {ALPHA}, started at boot, to find the lock held",
    )
    booted = int(alpha.check_output("date +%s"))
    # While both beats run, only lc-delta's sends: three periods of it.
    goal = len(beat_sends(DELTA, BEAT_LOG, TICK)) + 3
    wait_for(lambda: len(beat_sends(DELTA, BEAT_LOG, TICK)) >= goal, 60, f"beat on {DELTA} to go on sending")
    assert [t for t in beat_sends(ALPHA, BEAT_LOG, TICK) if t >= booted] == [], f"the old beat on {ALPHA} sent"

    whole(DELTA)
    again = playbook("site.yml", *TICK_SCHEDULE)
    assert "Not answering" not in again.stdout
    assert not alpha.service("fetcher-beat").is_running and not unit_enabled(alpha, "fetcher-beat")
    sends = sorted(beat_sends(ALPHA, BEAT_LOG, TICK) + beat_sends(DELTA, BEAT_LOG, TICK))
    gaps = [later - earlier for earlier, later in zip(sends, sends[1:], strict=False)]
    print(f"beat moved with {ALPHA} off: {len(sends)} sends of {TICK} over both hosts, shortest gap {min(gaps)} s")
    # Log times are whole seconds: one period is at least TICK_PERIOD - 1 apart as logged.
    assert min(gaps) >= TICK_PERIOD - 1, f"{TICK} sent twice within {TICK_PERIOD} s: sends at {sends}"
