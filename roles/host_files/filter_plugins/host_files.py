"""Filters that let a role skip its host_files step where a read it makes anyway shows nothing to change.

A no-change run should not pay a round trip and a module start per host to learn that the files are as they
should be. The role's one read of the host (a shell step it runs first) appends `layout | host_files_probe`,
which prints one line per path of the layout: `host_files DIGEST OWNER GROUP MODE PATH`, DIGEST being the
file's SHA-256 or `directory`. The host_files step then runs only `when: layout | host_files_due(read_lines)`
is not empty: the paths whose content, owner, group or mode differ from the layout, or that are missing. The
comparison is the module's own (content as UTF-8, mode as an octal number), so a skipped step is one the
module would have found unchanged. A secret file's digest is printed, never its content.

layout: {directories: [{path, owner, group, mode}], files: [...], secret_files: [...]}, each file with content.
"""

import hashlib
import shlex


def _entries(layout):
    layout = layout or {}
    return (
        list(layout.get("directories") or []),
        list(layout.get("files") or []) + list(layout.get("secret_files") or []),
    )


def host_files_probe(layout):
    """A shell snippet printing the state of every path of the layout (nothing for a missing one)."""
    directories, files = _entries(layout)
    paths = " ".join(shlex.quote(str(entry["path"])) for entry in directories + files)
    if not paths:
        return ":"
    return (
        f"for path in {paths}; do\n"
        "  if [ -d \"$path\" ]; then digest=directory\n"
        "  elif [ -f \"$path\" ]; then digest=$(sha256sum < \"$path\" | cut -d' ' -f1)\n"
        "  else continue; fi\n"
        "  echo \"host_files $digest $(stat -c '%U %G %a' \"$path\") $path\"\n"
        "done"
    )


def host_files_due(layout, lines):
    """The paths of the layout that host_files would change, judged from host_files_probe's lines."""
    found = {}
    for line in lines or []:
        if line.startswith("host_files "):
            fields = line.split(" ", 5)
            if len(fields) == 6:
                _, digest, owner, group, mode, path = fields
                found[path] = (digest, owner, group, int(mode, 8))
    directories, files = _entries(layout)
    due = []
    for entry in directories:
        want = ("directory", str(entry["owner"]), str(entry["group"]), int(str(entry["mode"]), 8))
        if found.get(str(entry["path"])) != want:
            due.append(str(entry["path"]))
    for entry in files:
        digest = hashlib.sha256(str(entry["content"]).encode("utf-8")).hexdigest()
        want = (digest, str(entry["owner"]), str(entry["group"]), int(str(entry["mode"]), 8))
        if found.get(str(entry["path"])) != want:
            due.append(str(entry["path"]))
    return due


class FilterModule:
    def filters(self):
        return {"host_files_probe": host_files_probe, "host_files_due": host_files_due}
