#!/usr/bin/python
"""Virtual hosts, users, passwords, tags and permissions, from one read of the broker's definitions.

DOCUMENTATION is below; the why: a re-run that changes nothing should cost one `rabbitmqctl` call, not one
per user and per check. This module reads the definitions once (`rabbitmqctl export_definitions`), checks
each password against its stored salted hash locally, and applies what differs: every virtual host, user,
password, tag and permission to add or change in one `rabbitmqctl import_definitions` (passwords as salted
hashes, the definitions on standard input), and only removals as commands of their own. No password is ever
an argument (an argument is visible to every user of the host in the process list). A user's permissions are exactly the listed ones: permissions on other
virtual hosts are cleared. In check mode it only reports what it would change. It returns names, never a
password or a hash.
"""

import base64
import hashlib
import hmac
import json
import os
import pwd
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: rabbitmq_access
short_description: Make RabbitMQ's virtual hosts, users and permissions match a list, in one read.
options:
  vhosts: {type: list, elements: str, default: [], description: Virtual hosts that must exist.}
  users:
    type: list
    elements: dict
    default: []
    description: Users that must exist with this password, these tags and exactly these permissions.
    suboptions:
      name: {type: str, required: true}
      password: {type: str, required: true, no_log: true}
      tags: {type: list, elements: str, default: []}
      permissions: {type: list, elements: dict, default: [], description: "vhost, configure_priv, write_priv, read_priv"}
  absent_users: {type: list, elements: str, default: [], description: Users that must not exist.}
  timeout: {type: int, default: 60, description: Seconds each rabbitmqctl command may take.}
"""

HASHES = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}


def password_matches(password, password_hash, algorithm):
    """Whether RabbitMQ's stored hash (base64 of a 4-byte salt and hash(salt + password)) is this password's.
    None when the algorithm is one this module does not know: the broker must be asked."""
    digest = HASHES.get(algorithm)
    if digest is None:
        return None
    try:
        salted = base64.b64decode(password_hash or "", validate=True)
    except ValueError:
        return None
    if len(salted) <= 4:
        return False  # a user without a password
    salt, stored = salted[:4], salted[4:]
    return hmac.compare_digest(digest(salt + password.encode("utf-8")).digest(), stored)


def password_hash(password, salt=None):
    """RabbitMQ's default stored form: base64 of a 4-byte salt and SHA-256(salt + password)."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode()


def import_document(definitions, steps, users):
    """The definitions to import for the additions and changes among `steps` (removals are left out): virtual
    hosts, users (a new or changed password as a fresh salted hash, else the stored one) and permissions."""
    have_users = {user["name"]: user for user in definitions.get("users", [])}
    wanted = {user["name"]: user for user in users}
    document = {"vhosts": [], "users": [], "permissions": []}
    for name in dict.fromkeys(
        subject for action, subject, _ in steps if action in ("add_user", "change_password", "set_user_tags")
    ):
        new_password = any(a in ("add_user", "change_password") and s == name for a, s, _ in steps)
        current = have_users.get(name, {})
        document["users"].append(
            {
                "name": name,
                "password_hash": password_hash(wanted[name]["password"]) if new_password else current["password_hash"],
                "hashing_algorithm": (
                    "rabbit_password_hashing_sha256"
                    if new_password
                    else current.get("hashing_algorithm", "rabbit_password_hashing_sha256")
                ),
                "tags": ",".join(sorted(set(wanted[name].get("tags") or []))),
            }
        )
    for action, subject, detail in steps:
        if action == "add_vhost":
            document["vhosts"].append({"name": subject})
        elif action == "set_permissions":
            vhost, configure, write, read = detail
            document["permissions"].append(
                {"user": subject, "vhost": vhost, "configure": configure, "write": write, "read": read}
            )
    return document


def permission_triples(permissions):
    """{vhost: (configure, write, read)} from the role's list (configure_priv, ...) with RabbitMQ's defaults."""
    return {
        entry["vhost"]: (entry.get("configure_priv", "^$"), entry.get("write_priv", "^$"), entry.get("read_priv", "^$"))
        for entry in permissions
    }


def plan(definitions, vhosts, users, absent_users):
    """What differs, as a list of (action, subject, detail) in the order to apply; password checks that need
    the broker are ('authenticate', user, None)."""
    have_vhosts = {vhost["name"] for vhost in definitions.get("vhosts", [])}
    have_users = {user["name"]: user for user in definitions.get("users", [])}
    have_permissions = {}
    for entry in definitions.get("permissions", []):
        have_permissions.setdefault(entry["user"], {})[entry["vhost"]] = (
            entry["configure"],
            entry["write"],
            entry["read"],
        )

    steps = [("add_vhost", name, None) for name in vhosts if name not in have_vhosts]
    for user in users:
        name, current = user["name"], have_users.get(user["name"])
        if current is None:
            steps.append(("add_user", name, None))
        else:
            matches = password_matches(user["password"], current.get("password_hash"), current.get("hashing_algorithm"))
            if matches is None:
                steps.append(("authenticate", name, None))
            elif not matches:
                steps.append(("change_password", name, None))
        current_tags = current.get("tags", []) if current else []
        if isinstance(current_tags, str):  # older brokers export tags as one comma-separated string
            current_tags = [tag for tag in current_tags.split(",") if tag]
        if sorted(set(user.get("tags") or [])) != sorted(set(current_tags)):
            steps.append(("set_user_tags", name, sorted(set(user.get("tags") or []))))
        want, have = permission_triples(user.get("permissions") or []), have_permissions.get(name, {})
        for vhost, triple in sorted(want.items()):
            if have.get(vhost) != triple:
                steps.append(("set_permissions", name, (vhost, *triple)))
        for vhost in sorted(set(have) - set(want)):
            steps.append(("clear_permissions", name, vhost))
    steps += [("delete_user", name, None) for name in absent_users if name in have_users]
    return steps


def describe(steps):
    """{action: [subject or 'user on vhost']} for the result: names only."""
    report = {}
    for action, subject, detail in steps:
        if action == "set_permissions":
            subject = f"{subject} on {detail[0]}"
        elif action == "clear_permissions":
            subject = f"{subject} on {detail}"
        report.setdefault(action, []).append(subject)
    return report


def import_definitions(rabbitmqctl, document):
    """`rabbitmqctl import_definitions` from a file: RabbitMQ 4.0's CLI never finishes reading standard input.

    The file holds salted hashes only; it lives in a folder of its own that only the broker's user (the CLI
    runs as it) can read, and is removed at once.
    """
    folder = tempfile.mkdtemp(prefix="rabbitmq-access-")
    try:
        path = os.path.join(folder, "definitions.json")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            json.dump(document, out)
        try:
            broker = pwd.getpwnam("rabbitmq")
        except KeyError:
            broker = None
        if broker is not None and os.geteuid() == 0:
            for owned in (folder, path):
                os.chown(owned, broker.pw_uid, broker.pw_gid)
        return rabbitmqctl("import_definitions", path, "--format", "json")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            vhosts=dict(type="list", elements="str", default=[]),
            users=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    name=dict(type="str", required=True),
                    password=dict(type="str", required=True, no_log=True),
                    tags=dict(type="list", elements="str", default=[]),
                    permissions=dict(type="list", elements="dict", default=[]),
                ),
            ),
            absent_users=dict(type="list", elements="str", default=[]),
            timeout=dict(type="int", default=60),
        ),
        supports_check_mode=True,
    )
    params = module.params
    timeout = str(params["timeout"])

    def rabbitmqctl(*args, stdin=None):
        rc, out, err = module.run_command(
            ["rabbitmqctl", "--timeout", timeout, *args], data=stdin, binary_data=stdin is None, check_rc=False
        )
        return rc, out, err

    def read_definitions():
        rc, out, err = rabbitmqctl("export_definitions", "-", "--format", "json", "--silent")
        if rc != 0:
            module.fail_json(
                msg=f"Could not read the broker's definitions (rabbitmqctl export_definitions): {(err or out).strip()}"
            )
        try:
            return json.loads(out)
        except ValueError:
            module.fail_json(msg="rabbitmqctl export_definitions did not print JSON")

    definitions = read_definitions()
    passwords = {user["name"]: user["password"] for user in params["users"]}

    steps = plan(definitions, params["vhosts"], params["users"], params["absent_users"])
    # A password the module cannot check locally is checked by the broker (read-only, so in --check too).
    checked = []
    for action, name, detail in steps:
        if action == "authenticate":
            rc, _, _ = rabbitmqctl("authenticate_user", name, stdin=passwords[name])
            if rc != 0:
                checked.append(("change_password", name, None))
        else:
            checked.append((action, name, detail))
    steps = checked

    if not module.check_mode and steps:
        document = import_document(definitions, steps, params["users"])
        # Nothing secret in an error message: the document holds only salted hashes, and it is never shown.
        module.no_log_values.update(user["password_hash"] for user in document["users"])
        if any(document.values()):
            rc, out, err = import_definitions(rabbitmqctl, document)
            if rc != 0:
                module.fail_json(msg=f"rabbitmqctl import_definitions failed: {(err or out).strip()}")
            # The broker calls an import asynchronous: read again, and fail if anything it should add is missing.
            left = [
                step
                for step in plan(read_definitions(), params["vhosts"], params["users"], [])
                if step[0] not in ("clear_permissions", "authenticate")
            ]
            if left:
                module.fail_json(
                    msg="After rabbitmqctl import_definitions these still differ: "
                    + "; ".join(f"{a}: {', '.join(n)}" for a, n in describe(left).items())
                )
        removals = [
            (action, name, detail) for action, name, detail in steps if action in ("clear_permissions", "delete_user")
        ]
        for action, name, detail in removals:
            args = ["clear_permissions", "-p", detail, name] if action == "clear_permissions" else ["delete_user", name]
            rc, out, err = rabbitmqctl(*args)
            if rc != 0:
                module.fail_json(
                    msg=f"rabbitmqctl {args[0]} for {name} failed: {(err or out).strip()}",
                    done=describe(
                        [step for step in steps if step not in removals]
                        + removals[: removals.index((action, name, detail))]
                    ),
                )

    report = describe(steps)
    summary = (
        "; ".join(f"{action}: {', '.join(subjects)}" for action, subjects in report.items()) or "nothing to change"
    )
    module.exit_json(changed=bool(steps), changes=report, summary=summary)


if __name__ == "__main__":
    main()
