"""Releases on the test bed (the django scenario deploys, rolls back and refuses releases under load): a rollback
with no previous release to return to is refused and changes nothing."""

import re

from conftest import group, node, playbook


def worker_release(name):
    """The release folder the running worker's Python comes from (its command line names the interpreter)."""
    pid = node(name).check_output("systemctl show -p MainPID --value fetcher-worker")
    found = re.search(
        r"releases/([^/]+)/venv/bin/python", node(name).check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    )
    return found and found[1]


def test_each_worker_runs_its_current_release_through_the_documented_paths():
    for name in group("celery_workers"):
        host = node(name)
        current = host.check_output("readlink /opt/fetcher/current")
        assert current.startswith("releases/fetcher-0.1.0-") and worker_release(name) == current.split("/")[1]
        assert host.check_output("readlink -f /opt/fetcher/venv/bin/fetcher-demo").startswith(
            f"/opt/fetcher/{current}/"
        )
        assert host.file(f"/opt/fetcher/{current}/requirements.txt").contains("^celery==")


def test_a_rollback_with_no_previous_release_is_refused_and_changes_nothing():
    name = group("celery_workers")[-1]
    host = node(name)
    assert not host.file("/opt/fetcher/previous").exists, "the test bed has deployed one release only"
    before, pid = worker_release(name), host.check_output("systemctl show -p MainPID --value fetcher-worker")
    code, said = playbook("playbooks/rollback.yml", "--limit", name)
    assert code != 0 and f"{name} has no previous release to return to" in said, said[-3000:]
    assert worker_release(name) == before
    assert host.check_output("systemctl show -p MainPID --value fetcher-worker") == pid, "the worker was restarted"
