"""An operator's own Django project (crawlsite, app harvester) deployed by the roles in place of the bundled app:
routed tasks sent from manage.py shell, the API allowance, beat, releases and rollback under load, refusals."""

import json
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from conftest import address, host_var, node, playbook, queue_depths, wait_for

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
SOURCE = PROJECT / "molecule" / "django" / "crawlsite"
WORKERS = ("harvest-a", "harvest-b")
MANAGE = "fetcher-run python /opt/fetcher/current/app/manage.py"
WINDOW = host_var("harvest-b", "celery_worker_quota_window")
ALLOWANCE = host_var("harvest-b", "celery_worker_quota_allowance")

# Sends tally tasks to both hosts' queues until told to stop, writing each id once the broker confirmed it.
LOAD = """
import os, sys, time
import django
django.setup()
from fetcher import runtime
from harvester.tasks import tally
run, folder = sys.argv[1], sys.argv[2]
queues = [runtime.queue_for(key) for key in ("harvest-a_task", "harvest-b_task")]
number = 0
with open(folder + "/sent", "a") as sent:
    while not os.path.exists(folder + "/stop"):
        tally.apply_async((number, number), queue=queues[number % 2], task_id=f"{run}-{number}", ignore_result=True)
        sent.write(f"{run}-{number}\\n")
        sent.flush()
        number += 1
        time.sleep(0.05)
open(folder + "/done", "w").close()
"""


def shell(name, code):
    """`manage.py shell -c CODE` on a host, as the documented wrapper runs it; the last line it prints (Django
    5.2's shell first says what it imported)."""
    return node(name).check_output(f"{MANAGE} shell -c {shlex.quote(code)}").splitlines()[-1]


def vault_value(name, variable):
    """An inline-vaulted variable of the inventory, decrypted as Ansible does."""
    value = host_var(name, variable)
    if isinstance(value, dict) and "__ansible_vault" in value:
        done = subprocess.run(
            ["ansible-vault", "decrypt", "--output", "-", "-"],
            input=value["__ansible_vault"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout
    return value


def current(name):
    return node(name).check_output("readlink /opt/fetcher/current")


def worker_release(name):
    pid = node(name).check_output("systemctl show -p MainPID --value fetcher-worker")
    found = re.search(
        r"releases/([^/]+)/venv/bin/python", node(name).check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    )
    return found and found[1]


def project_copy(tmp_path, tag, edit):
    source = tmp_path / tag
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns("__pycache__"))
    edit(source)
    return source


def stand_in(path):
    return requests.get(f"http://{address(node('harvest-api'))}:8080{path}", timeout=10).json()


def quota(name):
    return json.loads(node(name).check_output("fetcher-run fetcher-quota --json"))


def test_each_worker_runs_the_projects_app_with_its_environment_and_shows_no_secret():
    secret = vault_value("harvest-a", "vault_crawlsite_secret_key")
    assert secret and not secret.startswith("$ANSIBLE_VAULT")
    for name in WORKERS:
        host = node(name)
        unit = host.file("/etc/systemd/system/fetcher-worker.service").content_string
        assert "celery -A crawlsite worker" in unit and secret not in unit
        environment = host.file("/etc/fetcher/environment")
        assert (environment.user, environment.mode) == ("root", 0o600)
        assert "DJANGO_SETTINGS_MODULE=crawlsite.settings" in environment.content_string
        pid = host.check_output("systemctl show -p MainPID --value fetcher-worker")
        assert secret in host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        assert secret not in host.check_output("ps -eo args")
        assert host.file("/opt/fetcher/current/app/manage.py").exists, "the project ships as its source tree"


@pytest.mark.parametrize(("sender", "target"), [("harvest-a", "harvest-b"), ("harvest-b", "harvest-a")])
def test_a_task_sent_from_manage_py_shell_on_one_host_runs_on_the_other(sender, target):
    said = shell(
        sender,
        "from fetcher import runtime; from harvester.tasks import tally; "
        f"print(tally.apply_async((2, 3), queue=runtime.queue_for('{target}_task')).get(timeout=60))",
    )
    assert f"'host': '{target}'" in said and "'sum': 5" in said, said


def test_beat_sends_the_projects_scheduled_task_and_a_worker_runs_it():
    wait_for(
        lambda: "Sending due task tally-every-10s (harvester.tasks.tally)"
        in node("harvest-a").check_output("cat /var/log/fetcher/beat.log"),
        60,
        "beat to send tally-every-10s",
    )
    wait_for(
        lambda: re.search(
            r"harvester\.tasks\.tally\[[^]]+\] succeeded in [^:]+: \{'sum': 42",
            node("harvest-a").check_output("cat /var/log/fetcher/worker.log"),
        ),
        60,
        "a worker to run beat's tally(20, 22)",
    )


def test_the_allowance_stops_the_hosts_consumption_until_the_window_resets(app_user):
    vhost = app_user[2]
    run, count = f"quota-{uuid.uuid4().hex[:8]}", ALLOWANCE + 3
    wait_for(lambda: time.time() % WINDOW < 1.0, WINDOW + 5, "a new window to start")
    shell(
        "harvest-a",
        "from fetcher import runtime; from harvester.tasks import fetch_page; queue = runtime.queue_for('api_task'); "
        f"[fetch_page.apply_async(('{run}-%d' % n,), queue=queue, ignore_result=True) for n in range({count})]",
    )

    def mine():
        return [call for call in stand_in("/calls") if call["item"].startswith(f"{run}-")]

    wait_for(lambda: len(mine()) >= ALLOWANCE, WINDOW, f"harvest-b to spend its {ALLOWANCE} calls")
    paused = wait_for(lambda: (status := quota("harvest-b"))["consuming"] is False and status, WINDOW, "a pause")
    assert paused["remaining"] == 0 and paused["used"] == ALLOWANCE
    # A quorum queue's message count comes from metrics the queue publishes now and then: polled.
    wait_for(lambda: queue_depths(node("harvest-a"), vhost).get("api", 0) >= 1, 10, "the rest to wait in its queue")

    wait_for(lambda: len(mine()) == count, 3 * WINDOW, f"all {count} calls once the window reset")
    calls = mine()
    per_window = {}
    for call in calls:
        per_window[call["window"]] = per_window.get(call["window"], 0) + 1
    assert all(call["status"] == 200 and call["caller"] == "harvest-b" for call in calls), calls
    assert max(per_window.values()) <= ALLOWANCE and len(per_window) >= 2, per_window
    assert len({call["item"] for call in calls}) == count, "each task called the API once"


class Load:
    """LOAD on harvest-a, in the background, for the length of a `with` block; then every task it sent must run,
    once, on one of the workers (by their logs)."""

    def __init__(self, tmp_path):
        self.run = f"load-{uuid.uuid4().hex[:8]}"
        self.folder, self.sender = f"/tmp/{self.run}", node("harvest-a")
        self.script = tmp_path / f"{self.run}.py"
        self.script.write_text(LOAD)

    def sent(self):
        return self.sender.run(f"cat {self.folder}/sent").stdout.split()

    def __enter__(self):
        self.sender.check_output(f"install -d -m 0777 {self.folder}")
        self.sender.ansible("copy", f"src={self.script} dest={self.folder}/load.py mode=0644", check=False)
        self.sender.check_output(
            f"setsid -f sh -c 'fetcher-run python {self.folder}/load.py {self.run} {self.folder} "
            f"> {self.folder}/out 2>&1'"
        )
        wait_for(lambda: len(self.sent()) >= 10, 120, "the load to get going")
        return self

    def __exit__(self, *exc):
        self.sender.check_output(f"touch {self.folder}/stop")
        wait_for(lambda: self.sender.file(f"{self.folder}/done").exists, 60, "the load to stop")

    def executed(self):
        found = []
        for name in WORKERS:
            log = node(name).run(
                f"grep -ho 'harvester.tasks.tally\\[{self.run}-[0-9]*\\] succeeded' /var/log/fetcher/worker.log"
            )
            found += re.findall(rf"\[({self.run}-\d+)\]", log.stdout)
        return found

    def report(self, what):
        sent = self.sent()
        wait_for(lambda: not set(sent) - set(self.executed()), 300, f"all {len(sent)} tasks sent under load to run")
        ran = self.executed()
        assert len(ran) == len(set(ran)), "a task ran twice"
        print(f"{what}: {len(sent)} tasks sent, all executed once")


def test_a_second_release_and_a_rollback_under_load_lose_nothing(tmp_path):
    first = {name: current(name) for name in WORKERS}
    second = project_copy(
        tmp_path, "second", lambda src: (src / "harvester" / "release.py").write_text('RELEASE = "second"\n')
    )
    with Load(tmp_path) as load:
        code, said = playbook("site.yml", "-e", f"celery_worker_app_source={second}")
        assert code == 0, said[-3000:]
        assert vault_value("harvest-a", "vault_crawlsite_secret_key") not in said, "the app's environment was shown"
        for name in WORKERS:
            assert current(name) != first[name] and current(name).startswith("releases/second-source-")
            assert worker_release(name) == current(name).split("/")[1]
            assert shell(name, "from harvester.release import RELEASE; print(RELEASE)") == "second"

        code, said = playbook("playbooks/rollback.yml")
        assert code == 0, said[-3000:]
        for name in WORKERS:
            assert current(name) == first[name] and worker_release(name) == first[name].split("/")[1]
    load.report("deploy and rollback under load")


def test_a_release_that_does_not_import_is_refused_and_every_worker_keeps_its_own(tmp_path):
    before = {name: current(name) for name in WORKERS}
    broken = project_copy(
        tmp_path,
        "broken",
        lambda src: (src / "harvester" / "tasks.py").write_text(
            "import a_module_no_release_has\n" + (src / "harvester" / "tasks.py").read_text()
        ),
    )
    with Load(tmp_path) as load:
        code, said = playbook("playbooks/celery.yml", "-e", f"celery_worker_app_source={broken}")
        assert code != 0 and "does not import crawlsite" in said and "a_module_no_release_has" in said, said[-3000:]
        for name in WORKERS:
            assert current(name) == before[name] and worker_release(name) == before[name].split("/")[1]
    load.report("a refused release under load")


def test_a_schedule_naming_a_task_the_project_lacks_is_refused_naming_it_and_the_host():
    beat_file = node("harvest-a").file("/etc/fetcher/beat.toml").content_string
    schedule = [{"name": "nightly", "task": "harvester.tasks.no_such_task", "every": 60}]
    code, said = playbook("playbooks/celery.yml", "-e", json.dumps({"celery_beat_schedule": schedule}))
    assert code != 0, said[-3000:]
    assert "harvest-a runs beat, and celery_beat_schedule names tasks that crawlsite" in said
    assert "harvester.tasks.no_such_task" in said and "harvester.tasks.tally" in said
    assert node("harvest-a").file("/etc/fetcher/beat.toml").content_string == beat_file
