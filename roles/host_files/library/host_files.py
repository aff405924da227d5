#!/usr/bin/python
"""A role's configuration files and directories, written in one step per host.

DOCUMENTATION is below; the why: each `template` or `copy` task costs a round trip and a module start per
host even when nothing changes, and a role writes half a dozen files. The role renders its templates on the
controller (`lookup('template', ...)`) and hands them all to this module, which compares each with what the
host has (content, owner, group, mode), writes only those that differ (atomically: a temporary file in the
same directory, then a rename) and returns the paths it changed, so that each handler can tell whether a file
it cares about changed. A file given in `secret_files` is never shown: its content is a no_log option, so it
is in no output and no diff, and the invocation line the module writes to the host's journal leaves
secret_files out (Ansible masks a value there only where it appears verbatim, and a multi-line content
does not). Check mode reports what would change; --diff shows the other files' changes.
"""

import grp
import os
import pwd
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: host_files
short_description: Make a set of directories and whole files match the given content, owner, group and mode.
options:
  directories:
    type: list
    elements: dict
    default: []
    description: Directories to create (parents first), each with path, owner, group and mode.
  files:
    type: list
    elements: dict
    default: []
    description: Files, each with path, content, owner, group and mode.
  secret_files:
    type: list
    elements: dict
    default: []
    description: Files as above whose content is secret (the content is no_log; no diff).
"""


def ids(module, owner, group):
    """(uid, gid); in check mode None for a user or group an earlier task of the run would create."""
    try:
        return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError as missing:
        if module.check_mode:
            return None
        module.fail_json(msg=f"Unknown owner or group {missing} (wanted {owner}:{group})")


def metadata_differs(path, owner_ids, mode):
    if owner_ids is None:
        return True
    uid, gid = owner_ids
    info = os.stat(path)
    return (info.st_uid, info.st_gid, info.st_mode & 0o7777) != (uid, gid, mode)


def ensure_directory(module, spec):
    path, mode = spec["path"], int(str(spec["mode"]), 8)
    owner_ids = ids(module, spec["owner"], spec["group"])
    exists = os.path.isdir(path)
    if exists and not metadata_differs(path, owner_ids, mode):
        return None
    if not module.check_mode:
        os.makedirs(path, exist_ok=True)
        os.chown(path, *owner_ids)
        os.chmod(path, mode)
    return {
        "before_header": path,
        "after_header": path,
        "before": "" if exists else "(absent)\n",
        "after": f"directory {spec['owner']}:{spec['group']} {spec['mode']}\n",
    }


def ensure_file(module, spec, secret=False):
    path, content, mode = spec["path"], spec["content"].encode("utf-8"), int(str(spec["mode"]), 8)
    owner_ids = ids(module, spec["owner"], spec["group"])
    before = None
    if os.path.isfile(path):
        with open(path, "rb") as current:
            before = current.read()
        if before == content and not metadata_differs(path, owner_ids, mode):
            return None
    if not module.check_mode:
        directory = os.path.dirname(path)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".host_files.")
        try:
            os.fchown(handle, *owner_ids)
            os.fchmod(handle, mode)
            with os.fdopen(handle, "wb") as out:
                out.write(content)
            os.rename(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
    if secret:
        return {"before_header": path, "after_header": path, "before": "", "after": "(secret: content not shown)\n"}
    return {
        "before_header": path,
        "after_header": path,
        "before": "" if before is None else before.decode("utf-8", "replace"),
        "after": spec["content"],
    }


class HostFilesModule(AnsibleModule):
    """AnsibleModule, but the invocation line it writes to the host's journal leaves `secret_files` out.

    Ansible masks a no_log value in that line only where it appears verbatim, and a multi-line content is
    printed there with escaped newlines, so it would slip through. (A module's own no_log=True does not
    help: the controller's _ansible_no_log overrides it.) Results and diffs are masked as usual.
    """

    def _log_invocation(self):
        secret = self.params.pop("secret_files", None)
        try:
            super()._log_invocation()
        finally:
            if secret is not None:
                self.params["secret_files"] = secret


def main():
    module = HostFilesModule(
        argument_spec={
            "directories": {"type": "list", "elements": "dict", "default": []},
            "files": {"type": "list", "elements": "dict", "default": []},
            # Only the content is no_log: a path, owner or group marked so would be masked in every output.
            "secret_files": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "path": {"type": "str", "required": True},
                    "content": {"type": "str", "required": True, "no_log": True},
                    "owner": {"type": "str", "required": True},
                    "group": {"type": "str", "required": True},
                    "mode": {"type": "str", "required": True},
                },
            },
        },
        supports_check_mode=True,
    )
    for spec in module.params["files"] + module.params["secret_files"]:
        missing = [key for key in ("path", "content", "owner", "group", "mode") if key not in spec]
        if missing:
            module.fail_json(msg=f"host_files: a file entry lacks {', '.join(missing)}: {spec.get('path', '?')}")
    changed, diffs = [], []
    for spec in module.params["directories"]:
        diff = ensure_directory(module, spec)
        if diff:
            changed.append(spec["path"])
            diffs.append(diff)
    for spec, secret in [(spec, False) for spec in module.params["files"]] + [
        (spec, True) for spec in module.params["secret_files"]
    ]:
        diff = ensure_file(module, spec, secret)
        if diff:
            changed.append(spec["path"])
            diffs.append(diff)
    module.exit_json(changed=bool(changed), paths=changed, diff=diffs)


if __name__ == "__main__":
    main()
