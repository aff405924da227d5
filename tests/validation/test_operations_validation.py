"""The operations playbooks refuse what they cannot do safely, with a message, before they touch a node."""

from pathlib import Path

from rejections import assert_rejected

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


def test_a_rolling_restart_of_two_nodes_asks_before_pausing_the_quorum_queues(target, inventory, playbook):
    run = playbook(inventory, path=PLAYBOOKS / "rolling-restart.yml")
    assert_rejected(
        run,
        "Check that the cluster has three nodes or more",
        r"With 2 nodes every quorum queue loses its majority",
        r"-e rolling_restart_accept_unavailable=true",
        hosts=("server", "laptop"),  # both answer and validate; the check runs once, for the cluster
    )


def test_a_cookie_rotation_refuses_a_weak_new_cookie_before_stopping_anything(target, inventory, playbook):
    inventory.vault(vault_rabbitmq_erlang_cookie="short")
    run = playbook(inventory, path=PLAYBOOKS / "rotate-cookie.yml")
    assert_rejected(run, "rabbitmq : Check that the Erlang cookie is strong", r"The Erlang cookie for \w+ is weak")
    assert "short" not in run.output.replace("is weak", "")


def test_a_password_rotation_refuses_a_missing_password_before_changing_anything(target, inventory, playbook):
    inventory.celery_groups()
    inventory.vault(drop=("vault_rabbitmq_app_password",))
    run = playbook(inventory, path=PLAYBOOKS / "rotate-credentials.yml")
    assert run.rc != 0 and "vault_rabbitmq_app_password" in run.output, run.output
    assert "changed=1" not in run.output


def test_removing_the_last_dependable_disc_node_is_refused(target, inventory, playbook):
    run = playbook(inventory, "-e", "node=server", path=PLAYBOOKS / "remove-node.yml")
    assert_rejected(
        run,
        "Check that a dependable disc node remains",
        r"Nothing was changed: removing server would leave no dependable disc node",
    )


def test_removing_a_node_not_in_the_cluster_is_refused(target, inventory, playbook):
    run = playbook(inventory, "-e", "node=elsewhere", path=PLAYBOOKS / "remove-node.yml")
    # Every member gathers its network facts first (the inventory checks compare addresses); the check runs once.
    assert_rejected(run, "Check the node to remove", r"Name the node to remove with -e node=HOST")
