"""A server added to a running cluster joined it; a removed one was reset and forgotten."""
from conftest import cluster_status, group, members, nodename

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
