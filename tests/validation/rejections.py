"""What every validation test asserts of a refused run: it failed in the one task named, saying what it must, and
changed nothing, neither in the recap nor in the container (the run object: conftest.py's playbook fixture)."""

import re


def assert_nothing_changed(run, hosts=("server", "laptop")):
    recap = run.recap()
    assert set(recap) == set(hosts), f"PLAY RECAP should list {', '.join(hosts)}, got {recap}:\n{run.output}"
    changed = {host: counts.get("changed") for host, counts in recap.items() if counts.get("changed") != 0}
    assert not changed, f"hosts reported changes before validation stopped the play: {changed}\n{run.output}"
    assert not run.container_findings, (
        f"the run changed container {run.container} although validation should have stopped it: {run.container_findings}"
    )


def assert_rejected(run, task, *messages, hosts=("server", "laptop")):
    """The run failed in `task` alone, its output matches every regex in `messages`, and nothing changed
    on `hosts` (the hosts of the play)."""
    assert run.rc != 0, f"ansible-playbook succeeded although the inventory is bad:\n{run.output}"
    assert_nothing_changed(run, hosts)
    failed = run.failed_tasks()
    assert len(failed) == 1 and failed[0].startswith(task), (
        f"expected exactly one failing task, {task!r}; failing tasks: {failed}\n{run.output}"
    )
    for message in messages:
        assert re.search(message, run.output), f"the failure does not say {message!r}:\n{run.output}"
