"""Each bad inventory fails the RabbitMQ play with one clear message before any host changes.

Every case builds a temporary inventory from the test bed's (hosts server and laptop, both reaching the
one throwaway container of conftest.py), alters one thing, runs playbooks/rabbitmq.yml for real and checks:
the run fails, one validation task failed with the expected message, the recap shows changed=0 for every
host, and the container is untouched (no rabbitmq-server package, no cluster block in /etc/hosts).
"""

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rejections import assert_rejected

REPO = Path(__file__).resolve().parents[2]

ARG_SPEC_TASK = "rabbitmq : Validating arguments against arg spec 'main'"
VALIDATE_TASKS = [
    f"rabbitmq : {name.strip()}"
    for name in re.findall(r"^- name: (.+)$", (REPO / "roles/rabbitmq/tasks/validate.yml").read_text(), re.MULTILINE)
]


# 1 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("node_type", ["RAM", "memory"])
def test_unknown_node_type_is_rejected_by_argument_spec(target, inventory, playbook, node_type):
    inventory.update_host_vars("laptop", rabbitmq_node_type=node_type)
    run = playbook(inventory)
    assert_rejected(
        run,
        ARG_SPEC_TASK,
        r"rabbitmq_node_type",
        r"must be one of: disc, ram",
        rf"got: {node_type}",
    )


# 2 -------------------------------------------------------------------------------------------------
def test_cluster_without_disc_node(target, inventory, playbook):
    inventory.update_host_vars("server", rabbitmq_node_type="ram")
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that the cluster has at least one disc node",
        r"No disc node in group 'rabbitmq'",
        r"rabbitmq_node_type: disc",
    )


# 3 -------------------------------------------------------------------------------------------------
def test_missing_cookie_without_vault(target, inventory, playbook):
    """main.yml refers to vault_rabbitmq_erlang_cookie but the environment has no vault.yml."""
    inventory.remove_vault()
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that the Erlang cookie is set",
        r"Erlang cookie is missing",
        r"vault_rabbitmq_erlang_cookie",
    )


def test_empty_cookie_in_vault(target, inventory, playbook):
    inventory.vault(vault_rabbitmq_erlang_cookie="")
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that the Erlang cookie is set",
        r"Erlang cookie is missing",
        r"vault_rabbitmq_erlang_cookie",
        r"scripts/new-vault",  # the tool that makes a vault really exists
    )
    assert (REPO / "scripts" / "new-vault").exists(), "the message points at scripts/new-vault, which is gone"


# 4 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cookie", ["short", "ThisCookieIsLongEnough-ButHasPunctuation!"], ids=["short", "punctuation"])
def test_weak_cookie(target, inventory, playbook, cookie):
    inventory.vault(vault_rabbitmq_erlang_cookie=cookie)
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that the Erlang cookie is strong",
        r"Erlang cookie for \w+ is weak",
        r"vault_rabbitmq_erlang_cookie",
    )
    assert cookie not in run.output, "the weak cookie itself was printed in the output"


# 5 -------------------------------------------------------------------------------------------------
def test_missing_user_password_in_vault(target, inventory, playbook):
    """The vault lacks myuser's password (vault_rabbitmq_app_password)."""
    inventory.vault(drop=["vault_rabbitmq_app_password"])
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that every user has a strong password",
        r"users without a password of at least 12 characters: \['myuser'\]",
    )


@pytest.mark.parametrize("password", ["", "tooshort"], ids=["empty", "short"])
def test_weak_user_password_in_vault(target, inventory, playbook, password):
    inventory.vault(vault_rabbitmq_admin_password=password)
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that every user has a strong password",
        r"users without a password of at least 12 characters: \['admin'\]",
    )


# 6 -------------------------------------------------------------------------------------------------
def test_duplicate_node_names(target, inventory, playbook):
    inventory.update_host_vars("server", rabbitmq_nodename="rabbit@shared")
    inventory.update_host_vars("laptop", rabbitmq_nodename="rabbit@shared")
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that node names are unique",
        r"share a node name \(rabbit@shared, rabbit@shared\)",
    )


# 7 -------------------------------------------------------------------------------------------------
def test_unresolvable_member_without_etc_hosts(target, inventory, playbook):
    # server's name resolves in the container (its own hostname); laptop's resolves nowhere.
    inventory.update_host_vars("server", rabbitmq_manage_etc_hosts=False, rabbitmq_nodename=f"rabbit@{target}")
    inventory.update_host_vars("laptop", rabbitmq_manage_etc_hosts=False, rabbitmq_nodename="rabbit@no-such-member-x7")
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that every member's name resolves to one address of its own",
        r"short name must resolve",
        r"unresolved:\s*\['laptop'\]",
    )


# 8 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["10.99.0.7", None], ids=["same-explicit-address", "same-machine-default"])
def test_duplicate_addresses_with_managed_etc_hosts(target, inventory, playbook, address):
    for host in ("server", "laptop"):
        # None: the role's default, this host's default IPv4 address: one container, so the same for both.
        variables = {"rabbitmq_node_type": "disc" if host == "server" else "ram", "rabbitmq_manage_etc_hosts": True}
        if address:
            variables["rabbitmq_node_address"] = address
        inventory.host_vars(host, **variables)
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that every member has a distinct address for /etc/hosts",
        r"Each member needs its own address for /etc/hosts",
        r"'laptop': '([\d.]+)', 'server': '\1'",
    )


# Positive control ----------------------------------------------------------------------------------
def test_good_inventory_passes_validation(target, inventory, playbook):
    """The test bed's own variables pass every validation task; --check leaves the container untouched."""
    run = playbook(inventory, "--check")
    ran = [name for name, _ in run.tasks()]
    failed = run.failed_tasks()
    # The play starts by finding out which hosts answer (roles/reach), gathering their facts as it asks.
    assert ran and ran[0] == "reach : Find out whether this host answers", f"the play did not start:\n{run.output}"
    for task in [ARG_SPEC_TASK] + VALIDATE_TASKS:
        assert any(name.startswith(task) for name in ran), f"validation task {task!r} did not run:\n{run.output}"
        assert not any(name.startswith(task) for name in failed), f"validation task {task!r} failed:\n{run.output}"
    # Past validation: the install step ran (anything failing after it is not about the inventory).
    assert "rabbitmq : Read this node's packages, service, cookie, name lookups and cluster" in ran, (
        f"the play stopped before the install step although validation passed; failing tasks {failed}:\n{run.output}"
    )
    assert not run.container_findings, f"a --check run changed container {run.container}: {run.container_findings}"
    # Debian 13's RabbitMQ 4.0 deprecates RAM nodes, and laptop is one: the play says so once, and goes on.
    assert len(re.findall(r"WARNING: RAM nodes on\s+RabbitMQ\s+4\.0", run.output)) == 1, run.output


# Occasional nodes and replicas ---------------------------------------------------------------------
def test_a_cluster_whose_only_disc_node_is_occasional_is_rejected(target, inventory, playbook):
    inventory.update_host_vars("server", rabbitmq_node_occasional=True)
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that the cluster has a dependable disc node",
        r"Every disc node of 'rabbitmq' is occasional",
        r"rabbitmq_node_occasional: false",
    )


def test_more_replicas_than_dependable_nodes_is_rejected(target, inventory, playbook):
    inventory.update_host_vars("server", rabbitmq_quorum_replicas=3)
    inventory.update_host_vars("laptop", rabbitmq_quorum_replicas=3, rabbitmq_node_occasional=True)
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check the replica count",
        r"rabbitmq_quorum_replicas is 3, but 'rabbitmq' has\s+1 dependable node",
    )


# RabbitMQ versions ---------------------------------------------------------------------------------
def test_members_of_different_release_series_are_refused(target, inventory, playbook):
    inventory.update_host_vars("server", rabbitmq_packages=["rabbitmq-server=3.13.7-1"])
    inventory.update_host_vars("laptop", rabbitmq_packages=["rabbitmq-server=4.0.5-1"])
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Refuse members of different RabbitMQ release series",
        r"would run different RabbitMQ\s+release series",
        r"server\s+3\.13\.7",
        r"laptop\s+4\.0\.5",
        r"one\s+series\s+at\s+a\s+time",
    )


def test_a_ram_node_is_refused_where_the_broker_has_none(target, inventory, playbook):
    for host in ("server", "laptop"):
        inventory.update_host_vars(host, rabbitmq_packages=["rabbitmq-server=4.3.0-1"])
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Refuse a RAM node where the broker has none any more",
        r"laptop is a RAM\s+node",
        r"but\s+RabbitMQ\s+4\.3\.0",
        r"rabbitmq_node_type:\s+disc",
    )


# Names the role does not know ---------------------------------------------------------------------
def test_a_misspelt_variable_is_refused_with_the_name_it_resembles(target, inventory, playbook):
    """`rabbitmq_nod_type: ram` used to leave the node a disc node without a word."""
    inventory.update_host_vars("laptop", rabbitmq_nod_type="ram")
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that every rabbitmq_ variable of this host is one the role knows",
        r"laptop: rabbitmq_nod_type \(did you mean rabbitmq_node_type\?\): not a variable of the rabbitmq\s+role",
        r"Correct its name in the inventory",
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("rabbitmq_disk_free_limit_relative", 0), ("rabbitmq_disk_free_limit_absolute", "5 gigabytes")],
)
def test_a_disk_free_limit_that_is_no_size_is_refused(target, inventory, playbook, variable, value):
    inventory.update_host_vars("server", **{variable: value})
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check the disk-free limit",
        r"server: rabbitmq_disk_free_limit_relative",
        r"a number followed by\s+kB, MB, GB",
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("rabbitmq_firewall_amqp_clients", ["192.0.2.300"]),
        ("rabbitmq_firewall_amqp_clients", ["client.example.org"]),
        ("rabbitmq_firewall_http_clients", ["198.51.100.0/33"]),
    ],
)
def test_a_firewall_client_that_is_no_address_or_network_is_refused(target, inventory, playbook, variable, value):
    inventory.update_host_vars("server", **{variable: value})
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check the firewall's client addresses",
        rf"server: {variable}\s+has\s+{re.escape(value[0])},\s+which\s+is\s+no\s+address\s+or\s+network",
        r"in\s+CIDR\s+form",
    )


@pytest.mark.parametrize(("passphrase", "problem"), [("", "empty"), ("short", r"shorter\s+than\s+8\s+characters")])
def test_tls_without_a_passphrase_for_its_ca_is_refused(target, inventory, playbook, passphrase, problem):
    inventory.update_host_vars("laptop", rabbitmq_tls=True, rabbitmq_tls_ca_passphrase=passphrase)
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that TLS has the passphrase of its certificate authority",
        rf"laptop: rabbitmq_tls\s+is\s+on\s+but\s+rabbitmq_tls_ca_passphrase\s+is\s+{problem}",
        r"vault_rabbitmq_tls_ca_passphrase",
    )


def test_a_ca_key_the_passphrase_does_not_open_is_refused_and_kept(target, inventory, playbook, tmp_path):
    # The CA's key as an earlier run made it, but with another passphrase than the vault's now: a new CA would
    # leave every client distrusting the cluster, so the run stops before any change and keeps the key.
    folder = tmp_path / "pki"
    folder.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"the passphrase it was made with"),
    )
    (folder / "ca.key").write_bytes(key)
    for host in ("server", "laptop"):
        inventory.update_host_vars(host, rabbitmq_tls=True, rabbitmq_tls_dir=str(folder))
    run = playbook(inventory)
    assert_rejected(
        run,
        "rabbitmq : Check that the passphrase opens the key of the cluster's certificate authority",
        r"does\s+not\s+open\s+with\s+rabbitmq_tls_ca_passphrase",
        r"the\s+key\s+is\s+never\s+replaced",
    )
    assert (folder / "ca.key").read_bytes() == key
