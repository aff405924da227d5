"""roles/monitoring: the alert rules and the scrape configuration, rendered by Ansible and judged by promtool.

The role renders its rules (templates/fetcher-rules.yml.j2) and their tests (fetcher-rules.test.yml.j2) with the
inventory's settings, and runs `promtool test rules` on the monitoring host. Here the same templates are rendered by
ansible-playbook for a made-up inventory (three brokers, one of them switched off at times; two workers; beat), with
the role's defaults and with other settings, and promtool says whether every alert fires for the series that must
fire it, when it must, and for no other. A rule broken on purpose must fail its tests: they can fail.

promtool comes from Debian's packages (prometheus on Debian 12, promtool on Debian 13): PROMTOOL, else the one on
PATH, else one unpacked from the package the host's apt sources hold, once, into .cache/promtool (no install, no root).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ROLE = REPO / "roles" / "monitoring"
# The ansible-playbook beside this Python (the repository's .venv), else the one on PATH.
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
PLAYBOOK = PLAYBOOK if PLAYBOOK.exists() else Path(shutil.which("ansible-playbook") or "ansible-playbook")

INVENTORY = {
    "all": {
        "children": {
            "rabbitmq": {
                "hosts": {
                    "server": {"ansible_host": "192.0.2.10"},
                    "desktop": {"rabbitmq_node_address": "192.0.2.12", "ansible_host": "desktop.example"},
                    "laptop": {"ansible_host": "192.0.2.11", "rabbitmq_node_occasional": True},
                }
            },
            "celery_workers": {"hosts": {"server": {}, "laptop": {}, "worker": {"celery_worker_metrics_port": 9900}}},
            "celery_beat": {"hosts": {"server": {}}},
            "monitoring": {
                "hosts": {
                    "monitor": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                    }
                }
            },
        }
    }
}

# The role's defaults; the test bed's scrape interval with short alert delays; long ones, a threshold of 0 and a
# fractional beat multiplier; other queue names.
SETTINGS = {
    "defaults": {},
    "short": {
        "monitoring_scrape_interval": "5s",
        "monitoring_node_down_for": "30s",
        "monitoring_alarm_for": "15s",
        "monitoring_queue_without_consumers_for": "45s",
        "monitoring_queue_backlog_window": "30s",
        "monitoring_queue_backlog_for": "0s",
        "monitoring_dead_letter_window": "30s",
        "monitoring_quorum_below_target_for": "10s",
    },
    "long": {
        "monitoring_node_down_for": "1h30m",
        "monitoring_queue_backlog_threshold": 0,
        "monitoring_queue_backlog_window": "1h",
        "monitoring_queue_backlog_for": "2h",
        "monitoring_dead_letter_window": "1h",
        "monitoring_beat_silent_periods": 2.5,
        "monitoring_quorum_replica_target": 1,
    },
    "names": {
        "monitoring_dead_letter_queue_regex": "dlq|.+[.]dead",
        "monitoring_queue_ignore_regex": "celery_delayed_.*",
    },
}


CACHE = Path(__file__).resolve().parents[1] / ".cache" / "promtool"


def unpacked_promtool():
    """promtool unpacked from Debian's package into CACHE (downloaded from the host's apt sources once), or None."""
    tool = CACHE / "usr" / "bin" / "promtool"
    if tool.exists():
        return str(tool)
    CACHE.mkdir(parents=True, exist_ok=True)
    for package in ("promtool", "prometheus"):  # Debian 13 has it on its own, Debian 12 inside prometheus
        done = subprocess.run(["apt-get", "download", package], cwd=CACHE, capture_output=True, text=True, timeout=300)
        debs = sorted(CACHE.glob(f"{package}_*.deb"))
        if done.returncode == 0 and debs:
            subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(CACHE)], check=True, timeout=300)
            for deb in debs:
                deb.unlink()
            if tool.exists():
                return str(tool)
    return None


def promtool():
    found = os.environ.get("PROMTOOL") or shutil.which("promtool") or (shutil.which("apt-get") and unpacked_promtool())
    if not found:
        pytest.skip(
            "no promtool: install Debian's promtool (or prometheus) package, or set PROMTOOL to a promtool "
            "(apt-get download prometheus; dpkg -x prometheus_*.deb /tmp/prometheus; "
            "PROMTOOL=/tmp/prometheus/usr/bin/promtool)"
        )
    return found


def render(tmp_path, settings=None):
    """The role's configuration, rules and rule tests, rendered by Ansible for INVENTORY into tmp_path, laid out
    as on the host (rules/ and tests/ side by side)."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(INVENTORY))
    play = [
        {
            "name": "Render the monitoring role's files",
            "hosts": "monitoring",
            "gather_facts": False,
            # The role's defaults and derived values; the settings come as extra vars, which outrank both.
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": [
                {
                    "name": "Render {{ item.src }}",
                    "ansible.builtin.template": {
                        "src": str(ROLE / "templates") + "/{{ item.src }}",
                        "dest": "{{ item.dest }}",
                    },
                    "loop": [
                        {"src": "prometheus.yml.j2", "dest": str(tmp_path / "prometheus.yml")},
                        {"src": "fetcher-rules.yml.j2", "dest": str(tmp_path / "rules" / "fetcher.yml")},
                        {"src": "fetcher-rules.test.yml.j2", "dest": str(tmp_path / "tests" / "fetcher.test.yml")},
                    ],
                }
            ],
        }
    ]
    (tmp_path / "render.yml").write_text(yaml.safe_dump(play))
    done = subprocess.run(
        [
            str(PLAYBOOK),
            "-i",
            str(tmp_path / "hosts.yml"),
            str(tmp_path / "render.yml"),
            "-e",
            json.dumps(settings or {}),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path


def run_rule_tests(tool, tests):
    return subprocess.run([tool, "test", "rules", str(tests)], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """rendered(name): the files rendered with SETTINGS[name], once per module (a copy to change them)."""
    done = {}

    def get(name, copy_to=None):
        if name not in done:
            done[name] = render(tmp_path_factory.mktemp(name), SETTINGS[name])
        if copy_to is None:
            return done[name]
        shutil.copytree(done[name], copy_to, dirs_exist_ok=True)
        return copy_to

    return get


@pytest.mark.parametrize("name", SETTINGS)
def test_every_alert_fires_when_it_must_and_for_nothing_else(rendered, name):
    tool = promtool()
    out = rendered(name)
    check = subprocess.run(
        [tool, "check", "rules", str(out / "rules" / "fetcher.yml")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    done = run_rule_tests(tool, out / "tests" / "fetcher.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not(rendered):
    out = rendered("defaults")
    rules = yaml.safe_load((out / "rules" / "fetcher.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts >= {
        "RabbitMQNodeDown",
        "QueueWithoutConsumers",
        "QueueBacklogGrowing",
        "DeadLettersAppearing",
        "ApiAllowanceSpentTooLong",
        "BeatSilent",
        "RabbitMQMemoryAlarm",
        "RabbitMQDiskAlarm",
        "QuorumQueueBelowReplicaTarget",
    }
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"], rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    cases = [
        case
        for test in yaml.safe_load((out / "tests" / "fetcher.test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert alerts == fired, f"no test fires {sorted(alerts - fired)}"
    assert alerts == quiet, f"no test checks that these stay quiet: {sorted(alerts - quiet)}"


def test_a_broken_rule_fails_its_tests(rendered, tmp_path):
    """BeatSilent at three periods instead of two: its test must catch it."""
    tool = promtool()
    out = rendered("defaults", copy_to=tmp_path)
    rules = out / "rules" / "fetcher.yml"
    text = rules.read_text()
    assert "> 2 * max by (entry)" in text
    rules.write_text(text.replace("> 2 * max by (entry)", "> 3 * max by (entry)"))
    done = run_rule_tests(tool, out / "tests" / "fetcher.test.yml")
    assert done.returncode != 0 and "BeatSilent" in done.stdout + done.stderr, done.stdout


def test_the_scrape_configuration_names_every_broker_and_worker(rendered):
    out = rendered("defaults")
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"rabbitmq", "rabbitmq_detailed", "fetcher"}

    def targets(job):
        return {
            entry["labels"]["host"]: (entry["targets"], entry["labels"]["occasional"])
            for entry in jobs[job]["static_configs"]
        }

    # rabbitmq_node_address first, then ansible_host, then the inventory name; each host's own port.
    brokers = {
        "desktop": (["192.0.2.12:15692"], "false"),
        "laptop": (["192.0.2.11:15692"], "true"),
        "server": (["192.0.2.10:15692"], "false"),
    }
    assert targets("rabbitmq") == brokers and targets("rabbitmq_detailed") == brokers
    assert jobs["rabbitmq_detailed"]["metrics_path"] == "/metrics/detailed"
    assert jobs["rabbitmq_detailed"]["params"] == {
        "family": ["queue_coarse_metrics", "queue_consumer_count", "ra_metrics"]
    }
    assert targets("fetcher") == {
        "laptop": (["192.0.2.11:9808"], "true"),
        "server": (["192.0.2.10:9808"], "false"),
        "worker": (["worker:9900"], "false"),
    }
    assert config["global"]["scrape_interval"] == "15s"
    # Two dependable brokers (laptop is occasional): the target of 3 members is capped at 2.
    rules = (out / "rules" / "fetcher.yml").read_text()
    assert 'queue!=""})\n          < 2\n' in rules


def test_the_scrape_configuration_passes_promtool(rendered, tmp_path):
    tool = promtool()
    out = rendered("short", copy_to=tmp_path)
    config = out / "prometheus.yml"
    config.write_text(config.read_text().replace("/etc/prometheus/rules/", str(out / "rules") + "/"))
    done = subprocess.run([tool, "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
