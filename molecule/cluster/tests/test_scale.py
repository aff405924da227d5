"""A server added to a running cluster joined it; a removed one was reset and forgotten."""

from conftest import cluster_status, group, members, nodename, quorum_queues

testinfra_hosts = members() + group("rabbitmq_leaving")


def test_cluster_knows_exactly_the_current_members(host):
    if host.backend.get_hostname() in group("rabbitmq_leaving"):
        return
    status = cluster_status(host)
    assert sorted(status["disk_nodes"] + status["ram_nodes"]) == sorted(nodename(m) for m in members())
    for joined in group("rabbitmq_joining"):
        assert nodename(joined) in status["running_nodes"]


def test_removed_node_is_stopped_and_disabled(host):
    if host.backend.get_hostname() not in group("rabbitmq_leaving"):
        return
    service = host.service("rabbitmq-server")
    assert not service.is_running
    assert not service.is_enabled


def test_queues_held_their_messages_and_left_the_removed_node(host):
    """The queues declared with one replica grew to the target as the cluster grew, kept every message, and
    the removed node's replicas moved to the remaining nodes before it left."""
    if host.backend.get_hostname() in group("rabbitmq_leaving"):
        return
    leaving = {nodename(name) for name in group("rabbitmq_leaving")}
    held = {q["name"]: q for q in quorum_queues(host, "myvhost") if q["name"].startswith("held-")}
    assert sorted(held) == ["held-1", "held-2", "held-3"]
    for queue in held.values():
        assert queue["messages"] == 10, f"{queue['name']} has {queue['messages']} of its 10 messages"
        assert len(queue["members"]) == 3, f"{queue['name']} has replicas on {queue['members']}, wants 3"
        assert not set(queue["members"]) & leaving
        assert sorted(queue["online"]) == sorted(queue["members"])


def test_removed_node_keeps_no_cookie_or_broker_data(host):
    if host.backend.get_hostname() not in group("rabbitmq_leaving"):
        return
    assert not host.file("/var/lib/rabbitmq/.erlang.cookie").exists
    assert not host.file("/var/lib/rabbitmq/mnesia").exists
