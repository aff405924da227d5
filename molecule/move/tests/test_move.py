"""Moving a loaded cluster to new hosts across a broker major version, as an operator would.

old1 and old2 (Debian 12, RabbitMQ 3.10) run the brokers and the workers, beat on old1; new1 and new2
(Debian 13, RabbitMQ 4.0) are empty, in the group rabbitmq_next. A publisher on old1, started with the old
configuration, sends tasks to both workers' queues before and during playbooks/move-cluster.yml; old2's worker
is stopped first, so its queue holds a backlog the move has to carry across. After the move a second
publisher, started with the configuration the move wrote, sends more. Every task either had confirmed runs.
"""

import os
import re
import subprocess
import time

from conftest import PROJECT, Publisher, node, operator_env, queue_depths, wait_for

testinfra_hosts = ["old1"]
OLD, NEW = ["old1", "old2"], ["new1", "new2"]


def move_cluster():
    """Run playbooks/move-cluster.yml against the scenario's hosts; return its output and how long it took."""
    env = operator_env()
    began = time.monotonic()
    done = subprocess.run(
        [
            "ansible-playbook",
            str(PROJECT / "playbooks" / "move-cluster.yml"),
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, f"move-cluster.yml failed:\n{done.stdout[-5000:]}\n{done.stderr[-2000:]}"
    return done.stdout, time.monotonic() - began


def fan_outs(name):
    """How many of beat's fan_out tasks a worker has run."""
    return int(
        node(name).run("grep -c 'fetcher.tasks.fan_out\\[.*\\] succeeded' /var/log/fetcher/worker.log").stdout or 0
    )


def test_a_loaded_cluster_moves_to_new_hosts_and_no_task_is_lost(app_user):
    vhost = app_user[2]
    node("old2").check_output("systemctl stop fetcher-worker")
    with Publisher("old1", OLD) as before:
        wait_for(lambda: queue_depths(node("old1"), vhost).get("old2", 0) >= 20, 60, "a backlog in old2's queue")
        output, took = move_cluster()
    moved = int(re.search(r"Moved (\d+) waiting message", output)[1])
    print(f"move-cluster.yml took {took:.0f} s and moved {moved} waiting messages")
    assert moved >= 20, f"old2's backlog was not carried across:\n{output[-3000:]}"

    # The old brokers are stopped for good; the new cluster runs RabbitMQ 4 on both new hosts.
    for name in OLD:
        service = node(name).service("rabbitmq-server")
        assert not service.is_running and not service.is_enabled, name
    running = node("new1").check_output("rabbitmqctl --silent eval 'rabbit_nodes:list_running().'")
    assert "rabbit@new1" in running and "rabbit@new2" in running, running
    assert node("new1").check_output("rabbitmqctl --silent eval 'rabbit_misc:version().'").startswith('"4.')

    # Tasks sent after the move, with the configuration it wrote, go to the new cluster and run.
    beats = sum(fan_outs(name) for name in OLD)
    with Publisher("old1", OLD) as after:
        wait_for(lambda: len(after.sent()) >= 20, 60, "20 tasks sent after the move")
    for load, what in ((before, "sent before and during the move"), (after, "sent after the move")):
        sent, duplicates = load.report(what, OLD)
        assert sent, what
    # Beat moved too: its fan-out still runs, through the new cluster (the old brokers are stopped).
    wait_for(lambda: sum(fan_outs(name) for name in OLD) > beats, 60, "beat's fan-out to run again after the move")
    assert queue_depths(node("new1"), vhost).get("tasks.dead", 0) == 0, "no task was dead-lettered"
