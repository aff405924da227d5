#!/usr/bin/python
"""Place every quorum queue's replicas on the dependable nodes, up to a target count.

DOCUMENTATION is below; the why: a quorum queue keeps the members it was declared with, so a node that
joins later holds no replica of the older queues, and a node that may be switched off (the write-up's
laptop) can hold a replica whose absence costs a majority. This module reads every quorum queue of the
given virtual hosts once (`rabbitmqctl list_queues`), and with RabbitMQ's own commands adds the missing
replicas first (`rabbitmq-queues grow` when a node needs a replica of every queue lacking one, else
`add_member` per queue), then removes the replicas on any node that is not eligible (`rabbitmq-queues shrink`
when every replica that node holds, in any vhost, is to go, else `delete_member` per queue), so a queue never
has fewer voting members than before at any step. Each command starts a CLI of its own (half a second of
CPU), hence one command per node wherever one does it all. A dependable node that is only stopped keeps
its replicas (counted offline): it is not leaving, and the plan is refused if that leaves a queue without a
majority online. It then reads the queues again and fails,
naming each queue, if one is still off its target. In check mode it only reports what it would change.
"""

import collections
import json
import re

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: rabbitmq_quorum_replicas
short_description: Grow and shrink quorum queues so their replicas are on the eligible nodes.
options:
  vhosts: {type: list, elements: str, required: true, description: Virtual hosts whose quorum queues to place.}
  nodes: {type: list, elements: str, required: true, description: Eligible nodes, running, in order of preference.}
  target: {type: int, required: true, description: Replicas per queue (capped at the number of eligible nodes).}
  stopped: {type: list, elements: str, default: [], description: Eligible nodes not running now (their replicas stay).}
  timeout: {type: int, default: 120, description: Seconds each RabbitMQ command may take.}
  queues:
    type: list
    elements: dict
    description: >-
      The quorum queues of every vhost as the caller read them just before (vhost, name, members), with
      `running`, the running nodes: then the module lists the queues itself only after changing them.
  running: {type: list, elements: str, default: [], description: The running nodes, with `queues`.}
"""


def list_quorum_queues(module, vhost):
    rc, out, err = module.run_command(
        [
            "rabbitmqctl",
            "list_queues",
            "-p",
            vhost,
            "name",
            "type",
            "members",
            "online",
            "--quiet",
            "--formatter",
            "json",
        ],
        check_rc=False,
    )
    if rc != 0:
        module.fail_json(msg=f"Could not list the queues of vhost {vhost}: {err.strip() or out.strip()}")
    return sorted((row for row in json.loads(out or "[]") if row.get("type") == "quorum"), key=lambda r: r["name"])


def given_quorum_queues(queues, running, vhost):
    """The caller's read of one vhost's quorum queues, in list_queues' form (online: members that run)."""
    return sorted(
        (
            {
                "name": q["name"],
                "type": "quorum",
                "members": list(q["members"]),
                "online": [n for n in q["members"] if n in running],
            }
            for q in queues
            if q["vhost"] == vhost
        ),
        key=lambda r: r["name"],
    )


def plan(queues, nodes, target, stopped=()):
    """(additions {node: [queue]}, removals [(queue, node)]): what puts each queue on its target. Replicas on
    the stopped nodes stay and count towards it; none is added there."""
    want = min(target, len(nodes) + len(stopped))
    load = collections.Counter(node for queue in queues for node in queue["members"] if node in nodes)
    additions, removals = collections.defaultdict(list), []
    for queue in queues:
        members = set(queue["members"])
        kept = [node for node in [*nodes, *stopped] if node in members]
        candidates = sorted((n for n in nodes if n not in members), key=lambda n: (load[n], nodes.index(n)))
        added = candidates[: max(0, want - len(kept))]
        for node in added:
            additions[node].append(queue["name"])
            load[node] += 1
        # Never the last replica: a queue with no eligible member keeps the one it has.
        if kept or added:
            removals += [(queue["name"], node) for node in sorted(members - set(nodes) - set(stopped))]
    return dict(additions), removals


def without_majority(queues, additions, removals):
    """Queues that would be left without a majority of their members online once the plan is carried out."""
    at_risk = []
    for queue in queues:
        added = {node for node, names in additions.items() if queue["name"] in names}
        removed = {node for name, node in removals if name == queue["name"]}
        after = (set(queue["members"]) - removed) | added
        online = after & (set(queue.get("online", [])) | added)
        if (added or removed) and 2 * len(online) <= len(after):
            at_risk.append(
                f"{queue['name']} (members after: {', '.join(sorted(after))}; online: "
                f"{', '.join(sorted(online)) or 'none'})"
            )
    return at_risk


def rabbitmq(module, timeout, *args):
    rc, out, err = module.run_command(["rabbitmq-queues", "--timeout", str(timeout), *args], check_rc=False)
    if rc != 0:
        module.fail_json(msg=f"rabbitmq-queues {' '.join(args)} failed: {(err or out).strip()}")


def add(module, vhost, queues, additions, timeout):
    lacking = {node: sorted(q["name"] for q in queues if node not in q["members"]) for node in additions}
    for node, names in additions.items():
        if sorted(names) == lacking[node]:
            # Every queue lacking this node gets a replica there: one command for all of them.
            rabbitmq(
                module,
                timeout,
                "grow",
                node,
                "all",
                "--vhost-pattern",
                f"^{re.escape(vhost)}$",
                "--queue-pattern",
                ".*",
                "--errors-only",
            )
        else:
            for name in names:
                rabbitmq(module, timeout, "add_member", "-p", vhost, name, node)


def shrinkable(removals, every_queue):
    """The nodes whose every replica, in any vhost, is among removals ({node: {(vhost, queue)}}): those
    `rabbitmq-queues shrink` empties in one command. every_queue is the read of all vhosts (None: unknown)."""
    if every_queue is None:
        return set()
    held = collections.defaultdict(set)
    for queue in every_queue:
        for node in queue["members"]:
            held[node].add((queue["vhost"], queue["name"]))
    return {node for node, pairs in removals.items() if pairs == held[node]}


def remove(module, removals, every_queue, timeout):
    whole = shrinkable(removals, every_queue)
    for node, pairs in sorted(removals.items()):
        if node in whole:
            rabbitmq(module, timeout, "shrink", node, "--errors-only")
        else:
            for vhost, name in sorted(pairs):
                rabbitmq(module, timeout, "delete_member", "-p", vhost, name, node)


def main():
    module = AnsibleModule(
        argument_spec={
            "vhosts": {"type": "list", "elements": "str", "required": True},
            "nodes": {"type": "list", "elements": "str", "required": True},
            "target": {"type": "int", "required": True},
            "stopped": {"type": "list", "elements": "str", "default": []},
            "timeout": {"type": "int", "default": 120},
            "queues": {"type": "list", "elements": "dict"},
            "running": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    vhosts, nodes, target = module.params["vhosts"], module.params["nodes"], module.params["target"]
    stopped = [node for node in module.params["stopped"] if node not in nodes]
    if not nodes or target < 1:
        module.fail_json(msg=f"No eligible node ({nodes}) or a target below 1 ({target}): nothing can hold a replica.")
    added, removed, summary, short, plans = [], [], [], [], {}
    for vhost in vhosts:
        if module.params["queues"] is None:
            queues = list_quorum_queues(module, vhost)
        else:
            queues = given_quorum_queues(module.params["queues"], module.params["running"], vhost)
        plans[vhost] = (queues, *plan(queues, nodes, target, stopped))
        at_risk = without_majority(*plans[vhost])
        if at_risk:
            module.fail_json(
                msg=f"Nothing was changed: moving the replicas as asked would leave these quorum queues "
                f"of vhost {vhost} without a majority of their members online: {'; '.join(at_risk)}. "
                f"Bring their other members' nodes back first."
            )
    leaving = collections.defaultdict(set)
    for vhost in vhosts:
        queues, additions, removals = plans[vhost]
        added += [{"vhost": vhost, "queue": q, "node": n} for n, names in additions.items() for q in names]
        removed += [{"vhost": vhost, "queue": q, "node": n} for q, n in removals]
        for name, node in removals:
            leaving[node].add((vhost, name))
        if additions and not module.check_mode:
            add(module, vhost, queues, additions, module.params["timeout"])
    if leaving and not module.check_mode:
        every_queue = module.params["queues"]
        remove(module, leaving, every_queue, module.params["timeout"])
    for vhost in vhosts:
        queues, additions, removals = plans[vhost]
        if (additions or removals) and not module.check_mode:
            queues = list_quorum_queues(module, vhost)
            left = plan(queues, nodes, target, stopped)
            short += [f"{vhost}/{q} needs a replica on {n}" for n, names in left[0].items() for q in names]
            short += [f"{vhost}/{q} still has a replica on {n}" for q, n in left[1]]
        summary.append(
            f"{vhost}: {len(queues)} quorum queue(s), {min(target, len(nodes))} replica(s) each, "
            f"among {', '.join(sorted(nodes))}"
        )
    if short:
        module.fail_json(
            msg="Quorum queues off their replica target after the change: " + "; ".join(short),
            added=added,
            removed=removed,
        )
    module.exit_json(changed=bool(added or removed), added=added, removed=removed, summary=summary)


if __name__ == "__main__":
    main()
