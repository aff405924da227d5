"""roles/host_files/library/host_files.py: a role's files and folders written in one step, run for real.

The module runs as a script against a temporary folder, as Ansible runs it on a host: it writes only what
differs, says which paths changed (the handlers decide from that), tells the truth in check mode, and never
shows a secret file's content.
"""

import grp
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "roles" / "host_files" / "library" / "host_files.py"
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


# The host's journal, as the module sees it: Ansible logs each module's invocation there through
# systemd.journal; this stand-in writes what it is sent to the file named in JOURNAL_FILE.
JOURNAL = """
import os
def send(MESSAGE, **fields):
    with open(os.environ["JOURNAL_FILE"], "a") as out:
        out.write(" ".join([MESSAGE] + [str(value) for value in fields.values()]) + "\\n")
def sendv(*fields):
    with open(os.environ["JOURNAL_FILE"], "a") as out:
        out.write(" ".join(fields) + "\\n")
"""


def run(args, check_mode=False, journal=None):
    """The module's result, given its arguments as Ansible hands them over (JSON on standard input);
    with `journal` (a folder), what the module logs to the host's journal goes to journal/lines."""
    payload = {
        "ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode, _ansible_diff=True, _ansible_no_log=False)
    }
    env = dict(os.environ)
    if journal:
        (journal / "systemd").mkdir(parents=True, exist_ok=True)
        (journal / "systemd" / "__init__.py").write_text("")
        (journal / "systemd" / "journal.py").write_text(JOURNAL)
        (journal / "systemd" / "daemon.py").write_text("def booted():\n    return True\n")
        env.update(PYTHONPATH=str(journal), JOURNAL_FILE=str(journal / "lines"))
    done = subprocess.run(
        [sys.executable, str(MODULE)], input=json.dumps(payload), capture_output=True, text=True, check=False, env=env
    )
    return json.loads(done.stdout)


def spec(path, content, mode="0644", **extra):
    return dict(path=str(path), content=content, owner=OWNER, group=GROUP, mode=mode, **extra)


def test_only_what_differs_is_written_and_named(tmp_path):
    files = [spec(tmp_path / "a.conf", "a = 1\n"), spec(tmp_path / "b.conf", "b = 1\n")]
    first = run(
        {"directories": [dict(path=str(tmp_path / "d"), owner=OWNER, group=GROUP, mode="0750")], "files": files}
    )
    assert first["changed"] and sorted(first["paths"]) == sorted([str(tmp_path / n) for n in ("d", "a.conf", "b.conf")])
    assert (tmp_path / "a.conf").read_text() == "a = 1\n"
    assert oct((tmp_path / "d").stat().st_mode & 0o777) == "0o750"
    again = run({"files": files})
    assert not again["changed"] and again["paths"] == []
    files[1]["content"] = "b = 2\n"
    assert run({"files": files})["paths"] == [str(tmp_path / "b.conf")]


def test_a_mode_change_alone_is_a_change(tmp_path):
    run({"files": [spec(tmp_path / "a.conf", "x\n")]})
    again = run({"files": [spec(tmp_path / "a.conf", "x\n", mode="0600")]})
    assert again["paths"] == [str(tmp_path / "a.conf")]
    assert (tmp_path / "a.conf").stat().st_mode & 0o777 == 0o600


def test_check_mode_says_what_would_change_and_changes_nothing(tmp_path):
    result = run({"files": [spec(tmp_path / "new.conf", "x\n")]}, check_mode=True)
    assert result["changed"] and result["paths"] == [str(tmp_path / "new.conf")]
    assert not (tmp_path / "new.conf").exists()


def test_a_secret_file_is_written_but_never_shown(tmp_path):
    secret = "password = 'hunter2-very-secret'\n"
    result = run(
        {
            "secret_files": [spec(tmp_path / "s.toml", secret, mode="0640")],
            "files": [spec(tmp_path / "p.conf", "plain\n")],
        }
    )
    assert (tmp_path / "s.toml").read_text() == secret
    shown = json.dumps(result)
    assert "hunter2-very-secret" not in shown
    assert "plain" in shown  # the other file's diff is shown
    # Only the content is hidden: the paths the handlers look for are shown as they are.
    assert sorted(result["paths"]) == sorted([str(tmp_path / "s.toml"), str(tmp_path / "p.conf")])


def test_a_secret_file_is_in_no_journal_line(tmp_path):
    # A multi-line content is not masked in the printed list Ansible would log as the invocation.
    secret = "[broker]\npassword = 'hunter2-very-secret'\n"
    run({"secret_files": [spec(tmp_path / "s.toml", secret, mode="0640")]}, journal=tmp_path / "journal")
    assert (tmp_path / "s.toml").read_text() == secret
    logged = (tmp_path / "journal" / "lines").read_text() if (tmp_path / "journal" / "lines").exists() else ""
    assert "Invoked with" in logged, "the stand-in journal got the module's invocation line"
    assert "hunter2-very-secret" not in logged


def test_an_unknown_owner_fails_with_its_name_unless_in_check_mode(tmp_path):
    wrong = dict(spec(tmp_path / "a.conf", "x\n"), owner="no-such-user-here")
    assert "no-such-user-here" in run({"files": [wrong]})["msg"]
    assert run({"files": [wrong]}, check_mode=True)["changed"]
