"""roles/rabbitmq/library/rabbitmq_quorum_replicas.py: placing replicas from the caller's one read.

site.yml reads every node once (roles/rabbitmq/tasks/status.yml) and hands the quorum queues and running nodes
to the module, which then lists nothing itself unless it changes something. These tests pin that the read is
taken as `rabbitmqctl list_queues` would give it, so the plan is the same either way.
"""

import importlib.util
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "roles" / "rabbitmq" / "library" / "rabbitmq_quorum_replicas.py"
spec = importlib.util.spec_from_file_location("rabbitmq_quorum_replicas", MODULE)
replicas = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replicas)

READ = [
    {"vhost": "myvhost", "name": "b", "members": ["rabbit@a", "rabbit@b"]},
    {"vhost": "myvhost", "name": "a", "members": ["rabbit@a", "rabbit@b", "rabbit@c"]},
    {"vhost": "other", "name": "x", "members": ["rabbit@a"]},
]


def test_the_read_becomes_one_vhosts_queues_with_their_online_members():
    queues = replicas.given_quorum_queues(READ, ["rabbit@a", "rabbit@c"], "myvhost")
    assert [q["name"] for q in queues] == ["a", "b"]
    assert queues[0]["online"] == ["rabbit@a", "rabbit@c"] and queues[1]["online"] == ["rabbit@a"]
    assert all(q["type"] == "quorum" for q in queues)


def test_stopped_dependable_nodes_keep_their_replicas_in_a_plan_from_the_read():
    queues = replicas.given_quorum_queues(READ, ["rabbit@a"], "myvhost")
    additions, removals = replicas.plan(queues, ["rabbit@a"], 3, stopped=["rabbit@b", "rabbit@c"])
    assert removals == [] and not any(additions.values())


def test_a_removal_that_would_cost_a_queue_its_majority_is_named():
    queues = replicas.given_quorum_queues(READ, ["rabbit@a", "rabbit@b"], "myvhost")
    at_risk = replicas.without_majority(queues, {}, [("a", "rabbit@a"), ("a", "rabbit@b")])
    assert len(at_risk) == 1 and at_risk[0].startswith("a ")


def test_a_node_losing_every_replica_it_holds_is_shrunk_in_one_command_else_queue_by_queue():
    # rabbit@b holds a replica of myvhost's a and b only: both going, one `shrink` empties it. rabbit@a also
    # holds other/x, which is not in the plan: its replicas go one `delete_member` at a time.
    leaving = {"rabbit@b": {("myvhost", "a"), ("myvhost", "b")}, "rabbit@a": {("myvhost", "a"), ("myvhost", "b")}}
    assert replicas.shrinkable(leaving, READ) == {"rabbit@b"}
    # Without the read of every vhost, no node is known to be emptied by the plan.
    assert replicas.shrinkable(leaving, None) == set()
