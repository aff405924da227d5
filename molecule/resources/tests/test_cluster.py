"""What an operator relies on from the rabbitmq role, on every member of the cluster."""

import re
import uuid

import pika.exceptions
import pytest
from conftest import amqp, cluster_status, host_var, members, nodename, quorum_queues

testinfra_hosts = members()


def test_broker_is_running_and_enabled(host):
    service = host.service("rabbitmq-server")
    assert service.is_running
    assert service.is_enabled


def test_every_inventory_member_is_a_running_node(host):
    status = cluster_status(host)
    assert sorted(status["running_nodes"]) == sorted(nodename(m) for m in members())
    assert status["partitions"] == {}


def test_node_types_follow_host_vars(host):
    status = cluster_status(host)
    for member in members():
        expected = "disk_nodes" if host_var(member, "rabbitmq_node_type", "disc") == "disc" else "ram_nodes"
        assert nodename(member) in status[expected], f"{member} should be in {expected}"


def test_erlang_cookie_is_private_to_rabbitmq(host):
    cookie = host.file("/var/lib/rabbitmq/.erlang.cookie")
    assert cookie.user == "rabbitmq"
    assert cookie.group == "rabbitmq"
    assert cookie.mode == 0o400


def test_the_disk_alarm_is_set_relative_to_memory_not_at_rabbitmqs_50_mb(host):
    relative = float(host_var(members()[0], "rabbitmq_disk_free_limit_relative", 1.0))
    limit, memory = (
        int(x)
        for x in re.findall(
            r"[0-9]+",
            host.check_output(
                "rabbitmqctl eval '{rabbit_disk_monitor:get_disk_free_limit(), vm_memory_monitor:get_total_memory()}.'"
            ),
        )
    )
    print(f"{host.backend.hostname}: disk-free limit {limit / 1e9:.2f} GB = {relative} x {memory / 1e9:.2f} GB")
    assert abs(limit - relative * memory) <= 1 and limit > 50_000_000


def test_guest_user_is_gone(host):
    users = host.check_output("rabbitmqctl list_users --quiet --formatter json")
    assert '"guest"' not in users


def test_partition_handling_fits_the_cluster_size(host):
    mode = host.check_output("rabbitmqctl eval '{ok, M} = application:get_env(rabbit, cluster_partition_handling), M.'")
    occasional = [m for m in members() if host_var(m, "rabbitmq_node_occasional", False)]
    assert mode == ("pause_minority" if len(members()) >= 3 and not occasional else "autoheal")


def test_every_quorum_queue_has_its_replicas_on_dependable_nodes_only(host, app_user):
    dependable = sorted(nodename(m) for m in members() if not host_var(m, "rabbitmq_node_occasional", False))
    target = min(len(dependable), 5)
    target = target - 1 if target >= 3 and target % 2 == 0 else target
    queues = quorum_queues(host, app_user[2])
    for queue in queues:
        assert len(queue["members"]) >= target, f"{queue['name']} has {queue['members']}, wants {target} replicas"
        assert set(queue["members"]) <= set(dependable), f"{queue['name']} has a replica off {dependable}"


def test_management_listens_on_loopback_only_and_metrics_on_every_address(host):
    assert host.socket("tcp://127.0.0.1:15672").is_listening
    assert not host.socket("tcp://0.0.0.0:15672").is_listening
    # The metrics endpoint (rabbitmq_prometheus) on every node and release, for the monitoring host's
    # Prometheus: the firewall lets in only the members and that host (test_firewall.py, the quota scenario).
    assert host.socket("tcp://0.0.0.0:15692").is_listening
    url = "http://127.0.0.1:15692/metrics"
    metrics = host.check_output(
        f"python3 -c 'import urllib.request; print(urllib.request.urlopen(\"{url}\").read().decode())'"
    )
    assert "rabbitmq_identity_info" in metrics


def test_the_broker_logs_no_deprecated_feature_but_a_ram_nodes_own(host):
    """RabbitMQ 4 logs each deprecated feature a node uses: a node as the role sets it up uses none (the
    management plugin's metrics collection included), a RAM node only its node type."""
    name = host.backend.get_hostname()
    logs = host.check_output("cat /var/log/rabbitmq/*.log")
    used = set(re.findall(r"Deprecated features: `(\w+)`", logs))
    allowed = {"ram_node_type"} if host_var(name, "rabbitmq_node_type", "disc") == "ram" else set()
    assert used <= allowed, f"{name} logs deprecated features in use: {sorted(used - allowed)}"


def test_every_stable_feature_flag_is_enabled(host):
    flags = host.check_output("rabbitmqctl --silent list_feature_flags name state stability").splitlines()
    off = [line.split()[0] for line in flags if line.split()[1:] == ["disabled", "stable"]]
    assert off == [], f"stable feature flags not enabled: {off}"


def test_broker_and_erlang_packages_are_held(host):
    held = host.check_output("apt-mark showhold").split()
    assert {"rabbitmq-server", "erlang-base"} <= set(held), f"held: {held}"


def test_app_user_publishes_and_consumes_on_its_vhost(host, app_user):
    user, password, vhost = app_user
    body = uuid.uuid4().hex.encode()
    with amqp(host, user, password, vhost) as connection:
        channel = connection.channel()
        queue = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.confirm_delivery()
        channel.basic_publish(exchange="", routing_key=queue, body=body)
        method, _, received = channel.basic_get(queue, auto_ack=True)
        assert method is not None and received == body


def test_app_user_is_refused_on_another_vhost(host, app_user):
    user, password, _ = app_user
    host.run("rabbitmqctl add_vhost refusal-check")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        amqp(host, user, password, "refusal-check").close()


def test_wrong_password_is_refused(host, app_user):
    user, _, vhost = app_user
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp(host, user, "not-the-password", vhost).close()
