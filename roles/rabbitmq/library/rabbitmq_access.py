#!/usr/bin/python
"""Virtual hosts, users, passwords, tags and permissions, from one read of the broker's definitions.

DOCUMENTATION is below; the why: a re-run that changes nothing should cost one `rabbitmqctl` call, not one
per user and per check. This module reads the definitions once (`rabbitmqctl export_definitions`), checks
each password against its stored salted hash locally, and calls `rabbitmqctl` only for what differs.
Passwords go to `rabbitmqctl` on standard input, never as arguments (an argument is visible to every user
of the host in the process list). A user's permissions are exactly the listed ones: permissions on other
virtual hosts are cleared. In check mode it only reports what it would change. It returns names, never a
password or a hash.
"""

import base64
import hashlib
import hmac
import json

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
        have_permissions.setdefault(entry["user"], {})[entry["vhost"]] = (entry["configure"], entry["write"], entry["read"])

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


def main():
    module = AnsibleModule(
        argument_spec=dict(
            vhosts=dict(type="list", elements="str", default=[]),
            users=dict(
                type="list", elements="dict", default=[],
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
        rc, out, err = module.run_command(["rabbitmqctl", "--timeout", timeout, *args], data=stdin,
                                          binary_data=stdin is None, check_rc=False)
        return rc, out, err

    rc, out, err = rabbitmqctl("export_definitions", "-", "--format", "json", "--silent")
    if rc != 0:
        module.fail_json(msg=f"Could not read the broker's definitions (rabbitmqctl export_definitions): {(err or out).strip()}")
    try:
        definitions = json.loads(out)
    except ValueError:
        module.fail_json(msg="rabbitmqctl export_definitions did not print JSON")
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

    if not module.check_mode:
        for action, name, detail in steps:
            if action == "add_vhost":
                args, stdin = ["add_vhost", name], None
            elif action in ("add_user", "change_password"):
                args, stdin = [action, name], passwords[name]
            elif action == "set_user_tags":
                args, stdin = ["set_user_tags", name, *detail], None
            elif action == "set_permissions":
                args, stdin = ["set_permissions", "-p", detail[0], name, *detail[1:]], None
            elif action == "clear_permissions":
                args, stdin = ["clear_permissions", "-p", detail, name], None
            else:
                args, stdin = ["delete_user", name], None
            rc, out, err = rabbitmqctl(*args, stdin=stdin)
            if rc != 0:
                module.fail_json(msg=f"rabbitmqctl {args[0]} for {name} failed: {(err or out).strip()}",
                                 done=describe(steps[: steps.index((action, name, detail))]))

    report = describe(steps)
    summary = "; ".join(f"{action}: {', '.join(subjects)}" for action, subjects in report.items()) or "nothing to change"
    module.exit_json(changed=bool(steps), changes=report, summary=summary)


if __name__ == "__main__":
    main()
