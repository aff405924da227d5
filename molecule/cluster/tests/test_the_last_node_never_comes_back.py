"""When the last node to stop never comes back, playbooks/force-boot.yml boots the others without it.

This stops the whole cluster and loses one node for good, so it runs after every other test of the scenario:
Molecule runs the test files sorted by path (the shared test_cluster.py first, then this folder's), and this
file's name sorts last. The cluster it finds is side_effect's: rabbit1 (disc), rabbit3 (RAM), rabbit4 (disc),
every held-* quorum queue with its 10 messages and a replica on each.
"""

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from conftest import PROJECT, amqp, cluster_status, members, node, nodename, operator_env, quorum_queues, wait_for

VHOST = "myvhost"
# The node that stops last and is then gone for good.
LOST = "rabbit1"
# How long a node waiting at boot is given to say so in its log, and how long force-boot.yml may take.
WAIT_SEEN, FORCE_BOOT_TIMEOUT = 180, 900


def operator_inventory(folder):
    """The inventory as the operator keeps it after side_effect: Molecule's hosts (their connection), the
    rabbitmq group holding the current members (rabbit2 deleted, rabbit4 added), the test bed's settings."""
    source = yaml.safe_load(Path(os.environ["MOLECULE_INVENTORY_FILE"]).read_text())
    hosts = {
        name: {"ansible_connection": values["ansible_connection"]} for name, values in source["all"]["hosts"].items()
    }
    for link in ("group_vars", "host_vars"):
        (folder / link).symlink_to(PROJECT / "inventories/testbed" / link)
    path = folder / "hosts.yml"
    path.write_text(
        yaml.safe_dump({"all": {"hosts": hosts, "children": {"rabbitmq": {"hosts": {h: None for h in members()}}}}})
    )
    return path


def force_boot(lost):
    """Run playbooks/force-boot.yml as an operator would; return the run and how long it took."""
    folder = Path(tempfile.mkdtemp(prefix="force-boot-inventory-"))
    try:
        command = [
            "ansible-playbook",
            str(PROJECT / "playbooks/force-boot.yml"),
            "-i",
            str(operator_inventory(folder)),
            "-e",
            f"lost={lost}",
        ]
        env = operator_env()
        env.setdefault("ANSIBLE_VAULT_PASSWORD_FILE", str(PROJECT / "inventories/testbed/vault-password"))
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=FORCE_BOOT_TIMEOUT)
        return done, time.monotonic() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def held(via):
    return {queue["name"]: queue for queue in quorum_queues(via, VHOST) if queue["name"].startswith("held-")}


def test_the_others_boot_without_the_last_node_to_stop_once_it_is_gone(app_user):
    assert LOST in members(), f"{LOST} is not a member: {members()}"
    remaining = [name for name in members() if name != LOST]
    expected = sorted(nodename(name) for name in remaining)
    via = node(remaining[0])
    before = held(via)
    assert sorted(before) == ["held-1", "held-2", "held-3"]
    assert all(queue["messages"] == 10 for queue in before.values()), before
    ram = cluster_status(via)["ram_nodes"]

    # The brokers stop one by one, LOST last: the others will wait for it at their next boot.
    for name in [*remaining, LOST]:
        node(name).check_output("systemctl stop rabbitmq-server")
    subprocess.run(["docker", "stop", LOST], check=True, capture_output=True, text=True, timeout=120)

    logs = {name: f"/var/log/rabbitmq/{nodename(name)}.log" for name in remaining}
    written = {name: int(node(name).check_output(f"stat -c %s {logs[name]}")) for name in remaining}
    for name in remaining:
        node(name).check_output("systemctl start --no-block rabbitmq-server")
    # A disc node waits for the lost node's tables (every boot logs that it waits; only a node still waiting
    # after 30 s logs the error); a RAM node cannot boot without a disc node. None runs.
    for name in remaining:
        if nodename(name) in ram:
            continue
        wait_for(
            lambda name=name: "Error while waiting for Mnesia tables"
            in node(name).check_output(f"tail -c +{written[name] + 1} {logs[name]}"),
            WAIT_SEEN,
            f"{name} to wait for {LOST} at boot",
        )
    for name in remaining:
        assert node(name).run("rabbitmq-diagnostics --quiet check_running").rc != 0, f"{name} booted without {LOST}"

    done, took = force_boot(LOST)
    print(
        f"force-boot.yml -e lost={LOST} on {len(remaining)} remaining nodes {remaining}: rc {done.returncode}, "
        f"{took:.0f} s"
    )
    assert done.returncode == 0, f"force-boot.yml failed:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"

    status = cluster_status(via)
    assert sorted(status["running_nodes"]) == expected, status
    assert sorted(status["disk_nodes"] + status["ram_nodes"]) == expected, status

    # Message counts come from the queues' statistics, which lag a few seconds behind a boot.
    def queues_whole():
        found = held(via)
        return (
            found
            if sorted(found) == sorted(before)
            and all(
                queue["messages"] == 10 and sorted(queue["online"]) == sorted(queue["members"])
                for queue in found.values()
            )
            else None
        )

    after = wait_for(queues_whole, 120, "every held-* queue online with its 10 messages")
    for queue in after.values():
        assert sorted(queue["members"]) == expected, f"{queue['name']} has replicas on {queue['members']}"

    user, password, vhost = app_user
    body, queue = uuid.uuid4().hex.encode(), f"force-boot-{uuid.uuid4().hex[:8]}"
    with amqp(via, user, password, vhost) as connection:
        channel = connection.channel()
        channel.queue_declare(queue=queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.confirm_delivery()
        channel.basic_publish(exchange="", routing_key=queue, body=body)
        got = wait_for(lambda: channel.basic_get(queue, auto_ack=True)[2], 10, "the published message to be got")
        channel.queue_delete(queue)
    assert got == body
