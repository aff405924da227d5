"""playbooks/status.yml on the test bed: one table of the whole cluster, and an exit code cron can act on."""

import re

from conftest import node, playbook, wait_for


def status():
    """status.yml as an operator runs it, from the repository's root, against the scenario's inventory."""
    code, output = playbook("playbooks/status.yml", timeout=600)
    print(output[-4000:])
    return code, re.sub(r"\s+", " ", output)


def healthy():
    """status.yml's output when it exits 0, else None."""
    code, said = status()
    return said if code == 0 else None


def test_a_healthy_test_bed_is_one_table_and_exit_code_0():
    # The laptop's worker may still be coming back from an earlier test: the status is healthy once it is.
    said = wait_for(healthy, 180, "status.yml exiting 0 on the healthy test bed")
    for row in (
        r"rabbit@server running disc",
        r"rabbit@laptop running ram",
        r"server myvhost \d+ \d+ [1-9]\d* 1 of 1",
        r"laptop active fetcher-0\.1\.0-[0-9a-f]{10} ",
        r"BEAT on server: active; last send: .*Sending due task",
        r"All well",
    ):
        assert re.search(row, said), f"the table lacks {row!r}"


def test_a_stopped_broker_is_named_and_the_exit_code_is_not_0():
    laptop = node("laptop")
    laptop.check_output("systemctl stop rabbitmq-server")
    try:
        code, said = status()
        assert code != 0
        assert "rabbit@laptop stopped" in said
        assert re.search(r"Needs attention: .*the broker on laptop is not running", said)
    finally:
        laptop.check_output("systemctl start rabbitmq-server && rabbitmqctl await_startup --timeout 120")
