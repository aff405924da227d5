"""Helpers shared by every scenario's testinfra tests: the Molecule inventory and a real AMQP client."""
import functools
import json
import os

import pika
import pytest
import testinfra.utils.ansible_runner



@functools.cache
def inventory():
    return testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])


def group(name):
    return inventory().get_hosts(name)


def members():
    """Cluster members once side_effect ran: rabbitmq_joining hosts join, rabbitmq_leaving ones leave."""
    hosts = set(group("rabbitmq")) | set(group("rabbitmq_joining"))
    found = sorted(hosts - set(group("rabbitmq_leaving")))
    assert found, "no RabbitMQ hosts in the Molecule inventory"
    return found


def host_var(name, var, default=None):
    return inventory().get_variables(name).get(var, default)


def nodename(name):
    return host_var(name, "rabbitmq_nodename", f"rabbit@{name}")


def cluster_status(host):
    return json.loads(host.check_output("rabbitmqctl cluster_status --formatter json"))


def address(host):
    return host.check_output("hostname -i").split()[0]


def amqp(host, user, password, vhost):
    """Open a real AMQP connection from this machine to the broker in the container."""
    params = pika.ConnectionParameters(
        host=address(host),
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password),
        connection_attempts=3,
        retry_delay=2,
        socket_timeout=10,
    )
    return pika.BlockingConnection(params)


@pytest.fixture(scope="session")
def app_user():
    """The application user from the test bed's vault (decrypted by ansible-inventory)."""
    user = next(u for u in host_var(members()[0], "rabbitmq_users") if u["name"] == "myuser")
    password = host_var(members()[0], "vault_rabbitmq_app_password")
    return user["name"], password, user["permissions"][0]["vhost"]
