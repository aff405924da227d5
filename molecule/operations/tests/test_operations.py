"""Day-two operations on a cluster that keeps processing: password rotation, cookie rotation, rolling restart.

Each operation runs as an operator runs it (ansible-playbook, the new secrets in an ansible-vault file)
while a publisher on one server sends tasks to every server's queue; then every task the broker confirmed
must be executed (counted in the workers' logs, duplicates reported). The tests run in file order, each on
the cluster the previous one left; the last looks for every secret, old and new, where none should be.
Every playbook runs at full verbosity with diffs (-vvv --diff), where a secret would show if any task let it.
"""

import collections
import json
import os
import re
import secrets
import subprocess
import uuid

import pika
from conftest import FETCHER, PROJECT, amqp, cluster_status, group, host_var, node, operator_env, wait_for

testinfra_hosts = group("rabbitmq")
HOSTS = group("rabbitmq")
PUBLISHER = PROJECT / "molecule/resources/load/publish.py"
VAULT_PASSWORD_FILE = os.environ["ANSIBLE_VAULT_PASSWORD_FILE"]

# The secrets as converged (the test bed's vault), and what the rotations below replace them with.
OLD = {
    name: host_var(HOSTS[0], name)
    for name in (
        "vault_rabbitmq_app_password",
        "vault_rabbitmq_admin_password",
        "vault_rabbitmq_erlang_cookie",
        "vault_rabbitmq_tls_ca_passphrase",
    )
}
NEW = {}
# Everything ansible-playbook printed in this module, at -vvv with diffs: no secret may be in it.
OUTPUTS = []


def all_secrets():
    tokens = list(host_var(HOSTS[0], "vault_fetcher_api_tokens", {}).values())
    return [value for value in [*OLD.values(), *NEW.values(), *tokens] if value]


def vault_file(tmp_path):
    """The new secrets as the operator keeps them: an ansible-vault file (here passed with -e @FILE)."""
    path = tmp_path / "rotated-vault.yml"
    path.write_text(json.dumps(NEW))
    path.chmod(0o600)
    subprocess.run(["ansible-vault", "encrypt", str(path)], check=True, capture_output=True)
    return path


def playbook(name, tmp_path, *args):
    """Run one of playbooks/ (or ../site.yml) against the scenario's hosts, as an operator would, at full
    verbosity with diffs; return its output."""
    command = [
        "ansible-playbook",
        str(PROJECT / "playbooks" / name),
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        "-vvv",
        "--diff",
    ]
    if NEW:
        command += ["-e", f"@{vault_file(tmp_path)}"]
    env = operator_env(ANSIBLE_VAULT_PASSWORD_FILE=VAULT_PASSWORD_FILE)
    done = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=900)
    OUTPUTS.append(done.stdout + done.stderr)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def recap(output):
    """{host: {"changed": N, ...}} from a play recap."""
    return {
        match[1]: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match[2])}
        for match in re.finditer(r"^(\S+)\s*:\s*(ok=.*)$", output, re.MULTILINE)
    }


def main_pid(name, unit):
    return node(name).check_output(f"systemctl show -p MainPID --value {unit}")


def worker_pids():
    return {name: main_pid(name, "fetcher-worker") for name in group("celery_workers")}


class Load:
    """The publisher (molecule/resources/load/publish.py) on one server, sending to every server's queue."""

    def __init__(self, name):
        self.host, self.run = node(name), f"load-{uuid.uuid4().hex[:8]}"
        self.folder = f"/tmp/{self.run}"
        self.host.check_output(f"mkdir -p {self.folder}")
        self.host.ansible("copy", f"src={PUBLISHER} dest={self.folder}/publish.py mode=0644", check=False)
        self.host.check_output(
            f"setsid -f sh -c '{FETCHER}/python {self.folder}/publish.py {self.run} {self.folder} {' '.join(HOSTS)} "
            f">{self.folder}/out 2>&1'"
        )

    def sent(self):
        sent = self.host.file(f"{self.folder}/sent")
        return sent.content_string.split() if sent.exists else []

    def __enter__(self):
        wait_for(lambda: len(self.sent()) >= 10, 60, "the publisher to get going")
        return self

    def __exit__(self, *exc):
        self.host.check_output(f"touch {self.folder}/stop")
        wait_for(lambda: self.host.file(f"{self.folder}/done").exists, 120, "the publisher to stop")

    def executed(self):
        """How many times each task id of this run succeeded, over every worker's log."""
        counts = collections.Counter()
        for name in HOSTS:
            found = (
                node(name)
                .run(f"grep -ho 'fetcher.tasks.add\\[{self.run}-[0-9]*\\] succeeded' /var/log/fetcher/worker.log")
                .stdout
            )
            counts.update(re.findall(rf"\[({self.run}-\d+)\]", found))
        return counts

    def report(self):
        """Wait until every confirmed task ran; return (sent, duplicates, publish errors)."""
        sent = self.sent()
        wait_for(
            lambda: not set(sent) - set(self.executed()),
            300,
            f"all {len(sent)} confirmed tasks of {self.run} to be executed",
        )
        executed = self.executed()
        duplicates = {task: n for task, n in executed.items() if n > 1}
        errors = self.host.file(f"{self.folder}/errors").content_string.splitlines()
        print(
            f"{self.run}: {len(sent)} sent and executed, {len(duplicates)} executed twice, "
            f"{len(errors)} publish attempts retried"
        )
        return sent, duplicates, errors


def refused(user, password, vhost):
    try:
        amqp(node(HOSTS[0]), user, password, vhost).close()
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError):
        return True
    except pika.exceptions.AMQPConnectionError as exc:
        return "ACCESS_REFUSED" in repr(exc)
    return False


def worker_restarts(since):
    """[(host, stopping, started)] of each worker's restart after `since` (epoch seconds), by the journal."""
    restarts = []
    for name in group("celery_workers"):
        lines = (
            node(name)
            .check_output(f"journalctl -u fetcher-worker --since @{since} -o short-unix --no-pager")
            .splitlines()
        )
        stopping = [float(line.split()[0]) for line in lines if "systemd[1]: Stopping " in line]
        started = [float(line.split()[0]) for line in lines if "systemd[1]: Started " in line]
        assert len(stopping) == len(started) == 1, f"{name} restarted {len(started)} times:\n" + "\n".join(lines)
        restarts.append((name, stopping[0], started[0]))
    return sorted(restarts, key=lambda restart: restart[1])


def test_a_password_rotation_under_load_refuses_the_old_password_and_loses_no_task(app_user, tmp_path):
    user, old_password, vhost = app_user
    NEW.update(
        vault_rabbitmq_app_password=secrets.token_urlsafe(24), vault_rabbitmq_admin_password=secrets.token_urlsafe(24)
    )
    since = float(node(HOSTS[0]).check_output("date +%s.%N"))
    workers = worker_pids()
    [beat_host] = group("celery_beat")
    beat = main_pid(beat_host, "fetcher-beat")
    with Load(HOSTS[1]) as load:
        playbook("rotate-credentials.yml", tmp_path)
    sent, duplicates, _ = load.report()
    assert sent and not duplicates, f"executed twice: {duplicates}"

    assert refused(user, old_password, vhost), "the old password still opens a connection"
    assert not refused(user, NEW["vault_rabbitmq_app_password"], vhost), "the new password is refused"
    assert all(main_pid(name, "fetcher-worker") != pid for name, pid in workers.items()), "every worker restarted"
    assert main_pid(beat_host, "fetcher-beat") not in (beat, "0"), "beat restarted with the new password"
    # One host at a time: each worker was back before the next one stopped.
    restarts = worker_restarts(since)
    for (first, _, started), (then, stopping, _) in zip(restarts, restarts[1:], strict=False):
        assert started < stopping, f"{then} stopped before {first} was back: {restarts}"


def test_a_cookie_rotation_under_load_keeps_queued_messages_and_loses_no_task(app_user, tmp_path):
    user, _, vhost = app_user
    password = NEW["vault_rabbitmq_app_password"]
    NEW["vault_rabbitmq_erlang_cookie"] = secrets.token_hex(32)
    # Messages waiting in a quorum queue nobody consumes must be there after the whole cluster restarted.
    kept = f"ops.kept-{uuid.uuid4().hex[:8]}"
    with amqp(node(HOSTS[0]), user, password, vhost) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(kept, durable=True, arguments={"x-queue-type": "quorum"})
        for number in range(50):
            channel.basic_publish("", kept, str(number), pika.BasicProperties(delivery_mode=2))

    workers = worker_pids()
    with Load(HOSTS[2]) as load:
        output = playbook("rotate-cookie.yml", tmp_path)
    sent, duplicates, errors = load.report()
    # The workers were neither restarted nor crashed: they reconnected by themselves.
    assert worker_pids() == workers
    assert sent and errors, "the publisher should have seen the cluster down and waited"
    print(f"cookie rotation: {len(duplicates)} tasks executed twice (at-least-once): {sorted(duplicates)[:10]}")
    downtime = re.search(r"RabbitMQ was unavailable for (\d+) s", output)
    assert downtime, output[-3000:]
    print(f"cookie rotation: RabbitMQ unavailable for {downtime[1]} s")

    cookie = NEW["vault_rabbitmq_erlang_cookie"]
    for name in HOSTS:
        file = node(name).file("/var/lib/rabbitmq/.erlang.cookie")
        assert (file.user, file.mode, file.content_string) == ("rabbitmq", 0o400, cookie), name
        assert sorted(cluster_status(node(name))["running_nodes"]) == sorted(f"rabbit@{host}" for host in HOSTS)
    with amqp(node(HOSTS[1]), user, password, vhost) as connection:
        channel = connection.channel()
        assert channel.queue_declare(kept, passive=True).method.message_count == 50
        channel.queue_delete(kept)

    # Run again with the same cookie: nothing to do, nothing stopped.
    brokers = {name: main_pid(name, "rabbitmq-server") for name in HOSTS}
    again = playbook("rotate-cookie.yml", tmp_path)
    assert all(counts["changed"] == 0 for counts in recap(again).values()), again[-2000:]
    assert {name: main_pid(name, "rabbitmq-server") for name in HOSTS} == brokers


def test_a_rolling_restart_under_load_drains_each_node_and_loses_no_task(tmp_path):
    brokers = {name: main_pid(name, "rabbitmq-server") for name in HOSTS}
    workers = worker_pids()
    with Load(HOSTS[0]) as load:
        output = playbook("rolling-restart.yml", tmp_path)
    sent, duplicates, _ = load.report()
    assert sent
    # Each worker failed over to another node when its own drained; none was restarted or crashed.
    assert worker_pids() == workers
    print(f"rolling restart: {len(duplicates)} tasks executed twice: {sorted(duplicates)[:10]}")
    assert all(main_pid(name, "rabbitmq-server") != pid for name, pid in brokers.items()), "every broker restarted"
    drained = re.findall(r"^TASK \[rabbitmq : Drain the node \(maintenance mode\)", output, re.MULTILINE)
    assert len(drained) == len(HOSTS), output[-3000:]
    status = cluster_status(node(HOSTS[0]))
    assert sorted(status["running_nodes"]) == sorted(f"rabbit@{host}" for host in HOSTS)
    assert set(status["maintenance_status"].values()) == {"not under maintenance"}, status


def test_site_yml_in_check_mode_after_the_rotations_finds_nothing_to_change(tmp_path):
    """The operator's next run, with the rotated secrets, first in --check: it reports no change and changes
    nothing (and, at -vvv with diffs, prints no secret: the last test reads its output too)."""
    before = worker_pids()
    output = playbook("../site.yml", tmp_path, "--check")
    counts = recap(output)
    assert set(HOSTS) <= set(counts) and all(
        (host["changed"], host["failed"], host["unreachable"]) == (0, 0, 0) for host in counts.values()
    ), counts
    assert worker_pids() == before, "a check-mode run restarted a worker"


def test_no_secret_is_in_any_log_file_process_list_or_playbook_output(host, tmp_path):
    """Every secret, old and new, only where it belongs: fetcher.toml (0640) and the cookie file (0400)."""
    local, patterns = tmp_path / "patterns", "/run/leak-check-patterns"
    local.write_text("\n".join(all_secrets()) + "\n")
    local.chmod(0o600)
    # Copied as a file (on /run, which the search skips), so no secret is on a command line.
    host.ansible("copy", f"src={local} dest={patterns} mode=0600", check=False)
    try:
        found = host.run(
            f"grep -rlaF -f {patterns} /etc /var /tmp /root /home /opt /srv /usr/local 2>/dev/null"
        ).stdout.split()
        # Which unit or program wrote each such line, and its first words, never the secret itself.
        journal = host.run(
            f"journalctl --no-pager -o json | grep -aF -f {patterns}"
            " | python3 -c 'import json, sys; [print(e.get(\"_SYSTEMD_UNIT\"), e.get(\"SYSLOG_IDENTIFIER\"),"
            " str(e.get(\"MESSAGE\"))[:60]) for e in map(json.loads, sys.stdin)]'"
        ).stdout.strip()
        processes = host.run(f"ps -eo args | grep -caF -f {patterns}").stdout.strip()
    finally:
        host.run(f"rm -f {patterns}")
    allowed = {"/etc/fetcher/fetcher.toml", "/var/lib/rabbitmq/.erlang.cookie"}
    # The search works: it finds the secrets where they belong (the current password, the current cookie).
    assert allowed <= set(found), f"the search missed {sorted(allowed - set(found))}"
    assert set(found) <= allowed, f"secrets in {sorted(set(found) - allowed)}"
    for secret in all_secrets():
        journal = journal.replace(secret, "<secret>")
    assert journal == "", f"journal lines hold a secret (unit, program, start):\n{journal}"
    assert processes == "0", f"{processes} process command lines hold a secret"
    config = host.file("/etc/fetcher/fetcher.toml")
    assert (config.user, config.group, config.mode) == ("root", "fetcher", 0o640)
    for output in OUTPUTS:
        for secret in all_secrets():
            assert secret not in output, "a playbook printed a secret"
