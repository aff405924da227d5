"""playbooks/status.yml on the test bed: one table of the whole cluster, and an exit code cron can act on."""

import os
import re
import subprocess
from pathlib import Path

from conftest import node, wait_for

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])


def status():
    """status.yml as an operator runs it, from the repository's root, against the scenario's inventory."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )
    done = subprocess.run(
        ["ansible-playbook", "playbooks/status.yml", "-i", os.environ["MOLECULE_INVENTORY_FILE"]],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    print(output[-4000:])
    return done.returncode, re.sub(r"\s+", " ", output)


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
