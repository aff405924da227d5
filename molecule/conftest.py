"""Helpers shared by every scenario's testinfra tests: the Molecule inventory and a real AMQP client."""

import collections
import functools
import json
import os
import re
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pika
import pytest
import requests
import testinfra
import testinfra.utils.ansible_runner


@functools.cache
def inventory():
    return testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])


def group(name):
    return inventory().get_hosts(name)


def members():
    """Cluster members once side_effect ran: rabbitmq_joining hosts join, rabbitmq_leaving ones leave."""
    hosts = set(group("rabbitmq")) | set(group("rabbitmq_joining"))
    found = sorted(hosts - set(group("rabbitmq_leaving")))
    assert found, "no RabbitMQ hosts in the Molecule inventory"
    return found


@functools.cache
def node(name):
    """A testinfra host for any inventory host, for tests that act on several hosts at once."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def wait_for(check, timeout, what):
    """Poll check() until it returns something truthy; fail saying what did not happen in time."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(1)


PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[1]))


def operator_env(**overrides):
    """The environment an operator's ansible-playbook runs with: the repository's ansible.cfg and roles, no colour
    (the tests read the output), plus `overrides`."""
    return dict(
        os.environ,
        ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        **overrides,
    )


def playbook(path, *args, timeout=900):
    """Run a playbook of the repository as an operator does (from its root, with its ansible.cfg and roles)
    against the scenario's inventory. Returns (exit code, output)."""
    done = subprocess.run(
        ["ansible-playbook", path, "-i", os.environ["MOLECULE_INVENTORY_FILE"], *args],
        cwd=PROJECT,
        env=operator_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


def host_var(name, var, default=None):
    return inventory().get_variables(name).get(var, default)


def nodename(name):
    return host_var(name, "rabbitmq_nodename", f"rabbit@{name}")


def cluster_status(host):
    return json.loads(host.check_output("rabbitmqctl cluster_status --formatter json"))


def quorum_queues(host, vhost):
    """Every quorum queue of a vhost with its members (replicas), as RabbitMQ lists them."""
    rows = json.loads(
        host.check_output(
            f"rabbitmqctl list_queues -p {vhost} name type members online messages --quiet --formatter json"
        )
    )
    return [row for row in rows if row["type"] == "quorum"]


def address(host):
    return host.check_output("hostname -i").split()[0]


# Where the test bed's scenario keeps its throwaway CA, with TLS on (group_vars/rabbitmq_tls: rabbitmq_tls_dir).
TESTBED_CA = (
    Path.home() / ".cache" / "queue-testbed" / os.environ.get("MOLECULE_SCENARIO_NAME", "default") / "pki" / "ca.pem"
)


def tls_options(host, cafile=TESTBED_CA):
    """Pika's TLS options for a broker whose clients use TLS: its certificate checked against the CA, by address."""
    context = ssl.create_default_context(cafile=str(cafile))
    return pika.SSLOptions(context, server_hostname=address(host))


def amqp(host, user, password, vhost):
    """Open a real AMQP connection from this machine to the broker in the container (over TLS where it has it)."""
    tls = host_var(getattr(host.backend.host, "name", host.backend.host), "rabbitmq_tls", True)
    params = pika.ConnectionParameters(
        host=address(host),
        port=5671 if tls else 5672,
        ssl_options=tls_options(host) if tls else None,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password),
        connection_attempts=3,
        retry_delay=2,
        socket_timeout=10,
    )
    return pika.BlockingConnection(params)


@pytest.fixture(scope="session")
def app_user():
    """The application user from the test bed's vault (decrypted by ansible-inventory)."""
    user = next(u for u in host_var(members()[0], "rabbitmq_users") if u["name"] == "myuser")
    password = host_var(members()[0], "vault_rabbitmq_app_password")
    return user["name"], password, user["permissions"][0]["vhost"]


# The fetcher app, run as an operator would on a server: its own virtualenv and configuration file.
FETCHER = "env FETCHER_CONFIG=/etc/fetcher/fetcher.toml /opt/fetcher/venv/bin"


def demo(name, *args):
    """Run the write-up's demo on a host and return its JSON report (results, hosts)."""
    return json.loads(node(name).check_output(f"{FETCHER}/fetcher-demo --json {' '.join(args)}"))


class BackgroundDemo:
    """The demo started in the background on a host, so tasks can be sent while workers or brokers are down."""

    def __init__(self, name, tag, *args):
        self.host, self.path = node(name), f"/tmp/demo-{tag}-{uuid.uuid4().hex[:8]}"
        self.host.check_output(
            f"setsid -f sh -c '{FETCHER}/fetcher-demo --json {' '.join(args)} "
            f">{self.path}.json 2>{self.path}.err; echo $? >{self.path}.rc'"
        )

    def report(self, timeout):
        wait_for(lambda: self.host.file(f"{self.path}.rc").exists, timeout, f"the demo in {self.path} to finish")
        rc = self.host.file(f"{self.path}.rc").content_string.strip()
        assert rc == "0", f"demo failed ({rc}): {self.host.file(f'{self.path}.err').content_string}"
        return json.loads(self.host.file(f"{self.path}.json").content_string)


class Publisher:
    """molecule/resources/load/publish.py on one server, sending `add` tasks round-robin to the given queues
    with the configuration the server has when it starts (so with the broker it names then)."""

    script = Path(__file__).resolve().parent / "resources" / "load" / "publish.py"

    def __init__(self, name, queues):
        self.host, self.run = node(name), f"load-{uuid.uuid4().hex[:8]}"
        self.folder = f"/tmp/{self.run}"
        self.host.check_output(f"mkdir -p {self.folder}")
        self.host.ansible("copy", f"src={self.script} dest={self.folder}/publish.py mode=0644", check=False)
        self.host.check_output(
            f"setsid -f sh -c '{FETCHER}/python {self.folder}/publish.py {self.run} {self.folder} {' '.join(queues)} "
            f">{self.folder}/out 2>&1'"
        )

    def sent(self):
        """The ids of the tasks the broker confirmed."""
        sent = self.host.file(f"{self.folder}/sent")
        return sent.content_string.split() if sent.exists else []

    def __enter__(self):
        wait_for(lambda: len(self.sent()) >= 10, 120, "the publisher to get going")
        return self

    def __exit__(self, *exc):
        self.host.check_output(f"touch {self.folder}/stop")
        wait_for(lambda: self.host.file(f"{self.folder}/done").exists, 180, "the publisher to stop")

    def executed(self, workers):
        """How many times each task id of this run succeeded, over the given workers' logs."""
        counts = collections.Counter()
        for name in workers:
            found = (
                node(name)
                .run(f"grep -ho 'fetcher.tasks.add\\[{self.run}-[0-9]*\\] succeeded' /var/log/fetcher/worker.log")
                .stdout
            )
            counts.update(re.findall(rf"\[({self.run}-\d+)\]", found))
        return counts

    def report(self, what, workers, timeout=300):
        """Wait until every confirmed task ran on one of the workers; return (sent, duplicates)."""
        sent = self.sent()
        wait_for(
            lambda: not set(sent) - set(self.executed(workers)),
            timeout,
            f"all {len(sent)} confirmed tasks of {self.run} to be executed",
        )
        duplicates = {task: n for task, n in self.executed(workers).items() if n > 1}
        errors = self.host.file(f"{self.folder}/errors").content_string.splitlines()
        print(
            f"{what}: {len(sent)} tasks sent and executed ({self.run}), 0 lost, {len(duplicates)} executed "
            f"twice, {len(errors)} publish attempts retried"
        )
        return sent, duplicates


def unit_enabled(host, unit):
    """Whether a systemd unit is enabled; a unit whose file is gone is not (systemd 257, Debian 13, says
    `not-found` with exit code 4 there, which testinfra's is_enabled does not accept)."""
    return host.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"


def queue_depths(host, vhost):
    """Ready plus unacknowledged messages per queue of a vhost."""
    rows = json.loads(host.check_output(f"rabbitmqctl list_queues -p {vhost} name messages --quiet --formatter json"))
    return {row["name"]: row["messages"] for row in rows}


def beat_sends(name, log, entry):
    """Epoch seconds of each send of one schedule entry, from a beat log on a host."""
    lines = node(name).run(f"grep -h 'Sending due task {entry} ' {log}").stdout.splitlines()
    stamps = [re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", line)[1] for line in lines]
    return [int(node(name).check_output(f"date -u -d '{stamp}' +%s")) for stamp in stamps]


def set_workers(state):
    for name in group("celery_workers"):
        node(name).check_output(f"systemctl {state} fetcher-worker")


# The quota scenario's API work: sends COUNT call_api tasks for items RUN-0 .. RUN-(COUNT-1) to the api queue, over
# one pooled connection, from server.
SEND_API_CALLS = (
    f"{FETCHER}/python -c 'import sys; from fetcher.app import app; from fetcher.tasks import call_api\n"
    "with app.producer_or_acquire() as producer:\n"
    "    for i in range(int(sys.argv[2])):\n"
    "        call_api.apply_async((f\"{sys.argv[1]}-{i}\",), queue=\"api\", producer=producer, ignore_result=True)\n"
    "'"
)


def send_api_calls(run, count):
    node("server").check_output(f"{SEND_API_CALLS} {run} {count}")


def stand_in(path):
    """One answer of the API stand-in (on the `api` host): /calls, each call it counted; /stats."""
    response = requests.get(f"http://{address(node('api'))}:8080{path}", timeout=10)
    response.raise_for_status()
    return response.json()
