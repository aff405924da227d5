"""Releases on the test bed: a new release switches every worker under load and loses nothing, rollback.yml returns
to the previous one, a release that does not import is refused on every host, and the app's environment reaches its
processes without showing up anywhere else."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import Publisher, group, node, playbook, wait_for

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
SECRET = "release-test-secret-0b5e"


def current(name):
    return node(name).check_output("readlink /opt/fetcher/current")


def worker_release(name):
    """The release folder the running worker's Python comes from (its command line names the interpreter)."""
    pid = node(name).check_output("systemctl show -p MainPID --value fetcher-worker")
    found = re.search(
        r"releases/([^/]+)/venv/bin/python", node(name).check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    )
    return found and found[1]


def app_copy(tmp_path, tag, edit):
    """A copy of the bundled app with one change: another source, so another release."""
    source = tmp_path / tag
    shutil.copytree(PROJECT / "app", source, ignore=shutil.ignore_patterns("tests", "__pycache__", "build", "dist"))
    edit(source / "src" / "fetcher")
    return source


def deploy(source, *extra):
    return playbook("site.yml", "-e", f"celery_worker_app_source={source}", *extra)


def answering(name):
    return node(name).run("fetcher-run celery -A fetcher.app inspect ping -t 3").rc == 0


@pytest.fixture(scope="module")
def workers():
    return group("celery_workers")


def test_a_new_release_switches_under_load_and_rollback_returns_to_the_previous_one(tmp_path, workers):
    first = {name: current(name) for name in workers}
    assert all(link.startswith("releases/fetcher-") for link in first.values()), first
    second = app_copy(tmp_path, "second", lambda src: (src / "marker.py").write_text('RELEASE = "second"\n'))
    extra = ["-e", json.dumps({"celery_worker_app_environment": {"FETCHER_RELEASE_TEST": SECRET}})]

    with Publisher(workers[0], workers) as load:
        code, said = deploy(second, *extra)
        assert code == 0, said[-3000:]
        assert SECRET not in said, "the app's environment was shown"
        for name in workers:
            assert current(name) != first[name] and f"{name} runs fetcher-0.1.0-" in said
            assert node(name).check_output("readlink /opt/fetcher/previous") == first[name]
            assert worker_release(name) == current(name).split("/")[1], "the worker runs the new release"
            marker = node(name).check_output("fetcher-run python -c 'import fetcher.marker as m; print(m.RELEASE)'")
            assert marker == "second"

        code, said = playbook("playbooks/rollback.yml")
        assert code == 0, said[-3000:]
        for name in workers:
            assert current(name) == first[name], "rolled back to the release before"
            assert worker_release(name) == first[name].split("/")[1]
            assert f"{name} runs {first[name].split('/')[1]} (rolled back from" in said
    sent, duplicates = load.report("deploy and rollback under load", workers)
    assert sent and not duplicates

    # The environment reached the worker's process, and nowhere else: not its unit, not its arguments.
    for name in workers:
        host = node(name)
        environment = host.file("/etc/fetcher/environment")
        assert (environment.user, environment.group, environment.mode) == ("root", "root", 0o600)
        assert f"FETCHER_RELEASE_TEST={SECRET}" in environment.content_string
        pid = host.check_output("systemctl show -p MainPID --value fetcher-worker")
        assert SECRET in host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        assert SECRET not in host.file("/etc/systemd/system/fetcher-worker.service").content_string
        assert SECRET not in host.check_output("ps -eo args")

    # The inventory's own source again: the release rolled back to is that one, so only the environment changes.
    code, said = playbook("site.yml")
    assert code == 0, said[-3000:]
    assert all(current(name) == first[name] for name in workers)
    assert all(SECRET not in node(name).check_output("cat /etc/fetcher/environment") for name in workers)


def test_a_release_that_does_not_import_is_refused_on_every_host(tmp_path, workers):
    before = {name: current(name) for name in workers}
    broken = app_copy(
        tmp_path,
        "broken",
        lambda src: (src / "app.py").write_text("import a_module_no_release_has\n" + (src / "app.py").read_text()),
    )
    code, said = deploy(broken)
    assert code != 0
    assert "does not import fetcher.app" in said and "a_module_no_release_has" in said, said[-3000:]
    for name in workers:
        assert current(name) == before[name], "a broken release replaced a working one"
        assert worker_release(name) == before[name].split("/")[1]
        wait_for(lambda name=name: answering(name), 60, f"{name}'s worker to answer")


def test_rollback_without_a_previous_release_changes_nothing(workers):
    name = workers[-1]
    host = node(name)
    host.check_output("mv /opt/fetcher/previous /opt/fetcher/previous.kept")
    try:
        code, said = playbook("playbooks/rollback.yml", "--limit", name)
        assert code != 0 and f"{name} has no previous release to return to" in said, said[-3000:]
        assert worker_release(name) == current(name).split("/")[1]
    finally:
        host.check_output("mv /opt/fetcher/previous.kept /opt/fetcher/previous")
