"""scripts/new-vault: a new environment's vault, with strong random secrets, encrypted with the operator's password."""

import os
import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NEW_VAULT = REPO / "scripts" / "new-vault"
ANSIBLE_VAULT = REPO / ".venv" / "bin" / "ansible-vault"


def new_vault(tmp_path, name="vault.yml"):
    password_file = tmp_path / "vault-pass"
    password_file.write_text("an operator's vault password\n")
    dest = tmp_path / "group_vars" / "all" / name
    done = subprocess.run(
        [str(NEW_VAULT), str(dest), "--vault-password-file", str(password_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, ANSIBLE_VAULT=str(ANSIBLE_VAULT)),
    )
    return done, dest, password_file


def decrypt(dest, password_file):
    plain = subprocess.run(
        [str(ANSIBLE_VAULT), "view", "--vault-password-file", str(password_file), str(dest)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return yaml.safe_load(plain)


def test_new_vault_is_encrypted_and_holds_strong_random_secrets(tmp_path):
    done, dest, password_file = new_vault(tmp_path)
    assert done.returncode == 0, done.stderr
    text = dest.read_text()
    assert text.startswith("$ANSIBLE_VAULT;"), "the vault must be encrypted on disk"
    assert dest.stat().st_mode & 0o077 == 0, "only its owner may read the vault file"
    values = decrypt(dest, password_file)
    # What the roles' checks require: the cookie 20-255 letters and digits, passwords of 12 characters or more.
    assert re.fullmatch(r"[A-Za-z0-9]{64}", values["vault_rabbitmq_erlang_cookie"])
    for key in (
        "vault_rabbitmq_app_password",
        "vault_rabbitmq_admin_password",
        "vault_rabbitmq_tls_ca_passphrase",
        "vault_celery_flower_password",
    ):
        assert len(values[key]) >= 24, key
        assert values[key] not in text
    assert values["vault_fetcher_api_tokens"] == {}
    assert values["vault_rabbitmq_erlang_cookie"] not in done.stdout + done.stderr, "no secret is printed"


def test_two_vaults_never_share_a_secret(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    values = [decrypt(*new_vault(folder)[1:]) for folder in (first, second)]
    for key in ("vault_rabbitmq_erlang_cookie", "vault_rabbitmq_app_password", "vault_rabbitmq_tls_ca_passphrase"):
        assert values[0][key] != values[1][key], key


def test_new_vault_never_overwrites_an_existing_vault(tmp_path):
    done, dest, _ = new_vault(tmp_path)
    assert done.returncode == 0
    before = dest.read_text()
    again, _, _ = new_vault(tmp_path)
    assert again.returncode != 0 and "exists" in again.stderr
    assert dest.read_text() == before
