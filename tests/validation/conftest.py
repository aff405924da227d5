"""Fixtures for the inventory validation tests: one throwaway container and temporary inventories.

Every inventory host (server, laptop) reaches the SAME container through ansible_host, so a run that
validates wrongly would change that one machine; each test checks it is still untouched.
"""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTBED = REPO / "inventories" / "testbed"
VAULT_PASSWORD_FILE = TESTBED / "vault-password"
PLAYBOOK = REPO / "playbooks" / "rabbitmq.yml"
VENV_BIN = REPO / ".venv" / "bin"
IMAGE = "queue-testbed:trixie"  # Debian 13: RabbitMQ 4.0
CONTAINER = "queue-validation-target"
HOSTS_MARKER = "RabbitMQ cluster members"


def run(*cmd, check=False, timeout=120, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout, **kwargs)


def ansible_env():
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_VAULT_PASSWORD_FILE=str(VAULT_PASSWORD_FILE),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        PY_COLORS="0",
    )
    return env


# --- the container ---------------------------------------------------------------------------------


def _start_container():
    run("docker", "rm", "-f", CONTAINER)
    if run("docker", "image", "inspect", IMAGE).returncode != 0:
        # The image can never be pulled: build it locally.
        run(str(REPO / "molecule" / "resources" / "image" / "build"), IMAGE.split(":")[1], check=True, timeout=900)
    run(
        "docker",
        "run",
        "-d",
        "--name",
        CONTAINER,
        "--hostname",
        CONTAINER,
        "--cap-add",
        "SYS_ADMIN",
        "--cap-add",
        "NET_ADMIN",
        "--cgroupns=host",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        IMAGE,
        check=True,
    )
    deadline = time.monotonic() + 90
    state = ""
    while time.monotonic() < deadline:
        # Before systemd is up the bus is missing and the command fails at once; retry until it answers.
        state = run("docker", "exec", CONTAINER, "systemctl", "is-system-running", "--wait", timeout=90).stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(1)
    raise RuntimeError(f"systemd in container {CONTAINER} did not come up (last state: {state!r})")


def container_state():
    """What a run of the role would have changed in the container, as a list of findings (empty: untouched)."""
    findings = []
    dpkg = run("docker", "exec", CONTAINER, "dpkg-query", "-W", "rabbitmq-server")
    if dpkg.returncode == 0:
        findings.append(f"rabbitmq-server is installed ({dpkg.stdout.strip()})")
    hosts = run("docker", "exec", CONTAINER, "cat", "/etc/hosts", check=True).stdout
    if HOSTS_MARKER in hosts:
        findings.append(f"/etc/hosts has a {HOSTS_MARKER!r} block:\n{hosts}")
    if run("docker", "exec", CONTAINER, "test", "-e", "/usr/sbin/policy-rc.d").returncode == 0:
        findings.append("/usr/sbin/policy-rc.d exists (the install step started)")
    return findings


@pytest.fixture(scope="session")
def container():
    if shutil.which("docker") is None:
        pytest.fail("docker is not on PATH: the validation tests need a throwaway container")
    _start_container()
    try:
        yield CONTAINER
    finally:
        run("docker", "rm", "-f", CONTAINER)


@pytest.fixture
def target(container):
    """The session container, checked to be untouched before the test (recreated if an earlier test dirtied it)."""
    if container_state():
        _start_container()
    findings = container_state()
    assert not findings, f"container {container} is not pristine before the test: {findings}"
    return container


# --- temporary inventories -------------------------------------------------------------------------


def _yaml_scalar(value):
    # JSON scalars are valid YAML flow scalars; no YAML library needed.
    return json.dumps(value)


@pytest.fixture(scope="session")
def testbed_vault_lines():
    """The test bed's vault, decrypted once, as lines ('key: value'); written back only re-encrypted."""
    view = run(
        "ansible-vault",
        "view",
        str(TESTBED / "group_vars" / "all" / "vault.yml"),
        env=ansible_env(),
        check=True,
    )
    return view.stdout.splitlines()


class Inventory:
    """A temporary inventory: the test bed's group_vars, hosts server (disc) and laptop (ram) on one container."""

    def __init__(self, root: Path, vault_lines):
        self.root = root
        self._vault_lines = vault_lines
        self.group_vars = root / "group_vars" / "all"
        self.group_vars.mkdir(parents=True)
        (root / "host_vars").mkdir()
        shutil.copy(TESTBED / "group_vars" / "all" / "main.yml", self.group_vars / "main.yml")
        shutil.copy(TESTBED / "group_vars" / "all" / "vault.yml", self.group_vars / "vault.yml")
        self.hosts = root / "hosts.yml"
        self.hosts.write_text(
            "---\n"
            "all:\n"
            "  vars:\n"
            "    ansible_connection: community.docker.docker\n"
            f"    ansible_host: {CONTAINER}\n"
            "  children:\n"
            "    rabbitmq:\n"
            "      hosts:\n"
            "        server:\n"
            "        laptop:\n"
        )
        # Both hosts are one container: distinct addresses keep the /etc/hosts check out of the way.
        self.host_vars("server", rabbitmq_node_type="disc", rabbitmq_node_address="10.99.0.1")
        self.host_vars("laptop", rabbitmq_node_type="ram", rabbitmq_node_address="10.99.0.2")

    def celery_groups(self, workers=("server", "laptop"), beat=("server",)):
        """Add the app's groups (workers and beat) to the inventory, as production has them."""
        text = self.hosts.read_text()
        for name, hosts in (("celery_workers", workers), ("celery_beat", beat)):
            text += f"    {name}:\n      hosts:\n" + "".join(f"        {host}:\n" for host in hosts)
            if not hosts:
                text = text.replace(f"    {name}:\n      hosts:\n", f"    {name}:\n      hosts: {{}}\n")
        self.hosts.write_text(text)

    def host_vars(self, host, **variables):
        """Replace a host's host_vars with these variables."""
        lines = ["---"] + [f"{name}: {_yaml_scalar(value)}" for name, value in variables.items()]
        (self.root / "host_vars" / f"{host}.yml").write_text("\n".join(lines) + "\n")

    def update_host_vars(self, host, **variables):
        path = self.root / "host_vars" / f"{host}.yml"
        lines = path.read_text().splitlines() + [f"{name}: {_yaml_scalar(value)}" for name, value in variables.items()]
        path.write_text("\n".join(lines) + "\n")

    def remove_vault(self):
        (self.group_vars / "vault.yml").unlink()

    def vault(self, drop=(), **replace):
        """Rewrite the vault from the test bed's: drop some keys, replace others; encrypted like the real one."""
        lines, key = [], None
        for line in self._vault_lines:
            match = re.match(r"^(\w+):", line)
            # An indented line belongs to the key above it (a mapping such as the API tokens).
            key = match.group(1) if match else (key if line.startswith(" ") else None)
            if key in drop:
                continue
            if key in replace:
                line = f"{key}: {_yaml_scalar(replace.pop(key))}"
            lines.append(line)
        lines += [f"{key}: {_yaml_scalar(value)}" for key, value in replace.items()]
        path = self.group_vars / "vault.yml"
        path.write_text("\n".join(lines) + "\n")
        run("ansible-vault", "encrypt", str(path), env=ansible_env(), check=True)


@pytest.fixture
def inventory(tmp_path, testbed_vault_lines):
    return Inventory(tmp_path / "inventory", testbed_vault_lines)


# --- running the playbook --------------------------------------------------------------------------


class PlaybookRun:
    """One ansible-playbook run and what it left in the container (tests cannot import this conftest
    reliably, molecule/ has one too, so everything they need comes through fixtures and this object)."""

    container = CONTAINER

    def __init__(self, completed):
        self.rc = completed.returncode
        self.output = completed.stdout  # stderr is merged in: [ERROR] lines go there
        self.container_findings = container_state()

    def tasks(self):
        """[(task name, [lines of its section])] in the order they ran."""
        sections = []
        for line in self.output.splitlines():
            header = re.match(r"^TASK \[(.*)\] \**$", line)
            if header:
                sections.append((header.group(1), []))
            elif line.startswith("PLAY RECAP"):
                sections.append(("PLAY RECAP", []))
            elif sections:
                sections[-1][1].append(line)
        return sections

    def failed_tasks(self):
        """Names of the tasks with a failed host, each once, in order."""
        failed = []
        for name, lines in self.tasks():
            if any(re.match(r"^fatal: \[", line) for line in lines) and name not in failed:
                failed.append(name)
        return failed

    def recap(self):
        """{host: {'ok': n, 'changed': n, ...}} from the PLAY RECAP."""
        _, _, tail = self.output.partition("PLAY RECAP")
        return {
            match.group(1): {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(2))}
            for match in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", tail, re.MULTILINE)
        }


@pytest.fixture
def playbook():
    def _run(inventory, *args, path=PLAYBOOK):
        completed = subprocess.run(
            ["ansible-playbook", "-i", str(inventory.hosts), str(path), *args],
            cwd=REPO,
            env=ansible_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=900,
        )
        return PlaybookRun(completed)

    return _run
