"""Two separate clusters that both hold queues are never merged: the run stops before any host changes."""

import json
import re
import subprocess

from conftest import PROJECT, group, members, node, operator_env

testinfra_hosts = group("rabbitmq_foreign")
TESTBED = PROJECT / "inventories" / "testbed"


def rabbitmq_play(tmp_path, hosts):
    """playbooks/rabbitmq.yml with these hosts as the rabbitmq group, the test bed's settings and vault."""
    (tmp_path / "group_vars").symlink_to(TESTBED / "group_vars")
    (tmp_path / "host_vars").symlink_to(TESTBED / "host_vars")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "vars": {"ansible_connection": "community.docker.docker"},
                    "children": {"rabbitmq": {"hosts": {h: None for h in hosts}}},
                }
            }
        )
    )
    return subprocess.run(
        ["ansible-playbook", str(PROJECT / "playbooks" / "rabbitmq.yml"), "-i", str(inventory)],
        env=operator_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_a_second_cluster_with_data_is_refused_with_nothing_changed(host, tmp_path_factory):
    foreign = host.backend.get_hostname()
    built = rabbitmq_play(tmp_path_factory.mktemp("alone"), [foreign])
    assert built.returncode == 0, built.stdout[-3000:]
    host.check_output(
        "rabbitmqctl eval 'rabbit_amqqueue:declare(rabbit_misc:r(<<\"myvhost\">>, queue, "
        "<<\"foreign-work\">>), true, false, [], none, <<\"test\">>).'"
    )
    before = {name: node(name).check_output("rabbitmqctl cluster_status --formatter json") for name in members()}

    merged = tmp_path_factory.mktemp("merged")
    refused = rabbitmq_play(merged, [*members(), foreign])
    # The message may be folded over lines, and may reach stderr: read both, whitespace made single spaces.
    said = re.sub(r"\s+", " ", refused.stdout + refused.stderr)
    (merged / "output.txt").write_text(said)
    assert refused.returncode != 0, said[-3000:]
    assert "separate RabbitMQ clusters that each have queues" in said, said[-3000:]
    assert "Nothing was changed" in said, said[-3000:]
    assert f"rabbit@{foreign}: 1 queues" in said, said[-3000:]
    recap = dict(re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", refused.stdout, re.MULTILINE))
    assert set(recap.values()) == {"0"}, f"hosts changed before the refusal: {recap}"
    assert "foreign-work" in host.check_output("rabbitmqctl list_queues -p myvhost name --quiet")
    after = {name: node(name).check_output("rabbitmqctl cluster_status --formatter json") for name in members()}
    assert [json.loads(after[n])["disk_nodes"] for n in members()] == [
        json.loads(before[n])["disk_nodes"] for n in members()
    ]
