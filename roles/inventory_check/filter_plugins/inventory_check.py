"""Filters for the roles' validation: an inventory variable a role does not know is refused, not ignored.

A typo in a variable's name (`rabbitmq_nod_type: ram`) used to be ignored without a word: the role went on
with its default. `names | unknown_role_variables(role_path, prefix)` takes the names of a host's variables
with the role's prefix and returns those the role neither documents (meta/argument_specs.yml), defaults
(defaults/main.yml), derives (vars/main.yml) nor sets while it runs (a `register` or `set_fact` of any role
of the repository's: a role may set a fact another's prefix names): each as
"name (did you mean X?)" when one of the documented names is close. It runs on the controller and reads only
the role's own files.
"""

import difflib
import glob
import os

import yaml

_KNOWN = {}


def _keys(path):
    try:
        with open(path) as source:
            data = yaml.safe_load(source)
    except FileNotFoundError:
        return set()
    return set(data) if isinstance(data, dict) else set()


def _set_while_running(node, found):
    """Names a task file registers or sets with set_fact, anywhere in its blocks."""
    if isinstance(node, dict):
        if isinstance(node.get("register"), str):
            found.add(node["register"])
        for module in ("ansible.builtin.set_fact", "set_fact"):
            if isinstance(node.get(module), dict):
                found.update(key for key in node[module] if key != "cacheable")
        for value in node.values():
            _set_while_running(value, found)
    elif isinstance(node, list):
        for item in node:
            _set_while_running(item, found)


def _role_names(role_path):
    """(documented, every known name) of a role, read once per run."""
    if role_path not in _KNOWN:
        documented = set()
        try:
            with open(os.path.join(role_path, "meta", "argument_specs.yml")) as source:
                specs = (yaml.safe_load(source) or {}).get("argument_specs") or {}
        except FileNotFoundError:
            specs = {}
        for entry in specs.values():
            documented.update((entry or {}).get("options") or {})
        known = set(documented)
        known |= _keys(os.path.join(role_path, "defaults", "main.yml"))
        known |= _keys(os.path.join(role_path, "vars", "main.yml"))
        # What any role of the repository sets while it runs: a role may set a fact with another's prefix.
        roles = os.path.dirname(os.path.abspath(role_path))
        for path in glob.glob(os.path.join(roles, "*", "tasks", "*.yml")) + glob.glob(
            os.path.join(roles, "*", "handlers", "*.yml")
        ):
            with open(path) as source:
                _set_while_running(yaml.safe_load(source), known)
        _KNOWN[role_path] = (documented, known)
    return _KNOWN[role_path]


def unknown_role_variables(names, role_path, prefix):
    """The names with the role's prefix that the role does not know, each with a suggestion where one is close."""
    documented, known = _role_names(str(role_path))
    unknown = []
    for name in sorted(set(str(name) for name in names or [])):
        if not name.startswith(prefix) or name in known:
            continue
        close = difflib.get_close_matches(name, sorted(documented), n=1, cutoff=0.75)
        unknown.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return unknown


class FilterModule:
    def filters(self):
        return {"unknown_role_variables": unknown_role_variables}
