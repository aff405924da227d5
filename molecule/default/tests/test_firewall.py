"""Only the inventory's hosts reach the broker's ports: a container on the same network that is in no group of
the inventory reaches none of them (its packets are dropped, not refused), while a member reaches them all."""

import json
import re
import subprocess

import pytest
from conftest import address, group, node, playbook

NETWORK = "queue-default"
IMAGE = "queue-testbed:trixie"
# epmd, the inter-node port, the CLI range's first port, AMQP (plain and TLS), management, metrics.
BROKER_PORTS = [4369, 25672, 35672, 5672, 5671, 15672, 15692]
# A port nothing listens on and the firewall leaves alone: refused, which shows the outsider reaches the host.
CONTROL_PORT = 9

# Run in the probing container: connect to every (address, port) at once, 3 s each, and say what happened.
PROBE = """
import concurrent.futures, json, socket, sys
def probe(target):
    try:
        socket.create_connection(tuple(target), timeout=3).close()
        return "open"
    except socket.timeout:
        return "dropped"
    except ConnectionRefusedError:
        return "refused"
    except OSError as error:
        return type(error).__name__
targets = json.loads(sys.argv[1])
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""


def probe_from_outside(targets):
    """What a throwaway container on the scenario's network, in no inventory group, gets from each target."""
    done = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            NETWORK,
            "--entrypoint",
            "python3",
            IMAGE,
            "-c",
            PROBE,
            json.dumps(targets),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return dict(zip([f"{host}:{port}" for host, port in targets], json.loads(done.stdout), strict=True))


@pytest.fixture(scope="module")
def brokers():
    return {name: address(node(name)) for name in group("rabbitmq")}


def test_a_host_outside_the_inventory_reaches_no_broker_port(brokers):
    targets = [[ip, port] for ip in brokers.values() for port in BROKER_PORTS + [CONTROL_PORT]]
    found = probe_from_outside(targets)
    print(json.dumps(found, indent=1))
    for ip in brokers.values():
        assert found[f"{ip}:{CONTROL_PORT}"] == "refused", f"the outsider does not reach {ip} at all: {found}"
        for port in BROKER_PORTS:
            assert found[f"{ip}:{port}"] == "dropped", f"{ip}:{port} answered a host outside the inventory: {found}"


def test_members_reach_each_other_s_epmd_inter_node_and_amqp_ports(brokers):
    for name in brokers:
        for other, ip in brokers.items():
            if other == name:
                continue
            # AMQP over TLS: this scenario's clients use it (plain AMQP listens on loopback only).
            for port in (4369, 25672, 5671):
                check = node(name).run(
                    f"python3 -c 'import socket; socket.create_connection((\"{ip}\", {port}), timeout=3).close()'"
                )
                assert check.rc == 0, f"{name} cannot reach {other} ({ip}) on {port}: {check.stderr}"


def test_the_firewall_is_loaded_at_boot_before_the_broker_and_names_every_member(brokers):
    for name in brokers:
        host = node(name)
        assert host.service("rabbitmq-firewall").is_enabled
        assert host.service("rabbitmq-firewall").is_running
        order = host.check_output("systemctl show -p Before --value rabbitmq-firewall")
        assert "rabbitmq-server.service" in order.split()
        for ip in brokers.values():
            # The set merges neighbouring addresses into ranges: ask whether it holds the address.
            held = host.run(f"nft get element inet rabbitmq_firewall members4 '{{ {ip} }}'")
            assert held.rc == 0, f"{name}'s firewall does not let the member {ip} in: {held.stderr}"


def test_switched_off_the_firewall_is_removed_and_switched_on_again_it_is_back(brokers):
    """rabbitmq_firewall: false takes the role's table, file and unit away (the host's firewall is the operator's
    again); the next run with it on puts them back; each second run changes nothing."""
    server = brokers["server"]
    for setting, table in (("false", False), ("true", True)):
        for attempt in ("first", "second"):
            code, output = playbook("site.yml", "-e", f"rabbitmq_firewall={setting}")
            assert code == 0, output[-3000:]
            changed = {
                host: int(count) for host, count in re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", output, re.M)
            }
            if attempt == "second":
                assert set(changed.values()) == {0}, f"a second run with rabbitmq_firewall={setting} changed {changed}"
        for name in brokers:
            host = node(name)
            tables = host.check_output("nft list tables")
            assert ("inet rabbitmq_firewall" in tables) == table, f"{name} with rabbitmq_firewall={setting}: {tables}"
            assert host.file("/etc/nftables.d/rabbitmq.nft").exists == table
        found = probe_from_outside([[server, 4369]])
        assert found[f"{server}:4369"] == ("dropped" if table else "open"), f"rabbitmq_firewall={setting}: {found}"
