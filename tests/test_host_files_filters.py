"""roles/host_files/filter_plugins/host_files.py: a role skips its host_files step only where the module
would change nothing.

The probe runs for real in bash on a temporary folder, as a role's read runs it on a host; host_files_due
judges from its lines. Every case the module writes for (content, owner, group or mode differing, a path
missing, a file where a folder should be) must come out due, and a host that matches must come out clean,
or the skip would leave a drifted file in place or cost a round trip for nothing.
"""

import grp
import importlib.util
import os
import pwd
import subprocess
from pathlib import Path

import pytest

FILTERS = Path(__file__).resolve().parents[1] / "roles" / "host_files" / "filter_plugins" / "host_files.py"
SPEC = importlib.util.spec_from_file_location("host_files_filters", FILTERS)
filters = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(filters)
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def probe(layout):
    """The probe's lines, from a bash run as a role's read step runs it."""
    done = subprocess.run(
        ["bash", "-c", "set -o pipefail\n" + filters.host_files_probe(layout)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


@pytest.fixture
def host(tmp_path):
    """A folder and two files as host_files would have written them, and the layout that describes them."""
    folder = tmp_path / "conf.d"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    plain = folder / "main conf"  # a space in a path must survive the probe
    plain.write_text("listeners.tcp = 5672\n")
    plain.chmod(0o644)
    secret = tmp_path / "app.toml"
    secret.write_text("password = 'é-secret'\n")  # non-ASCII: compared as UTF-8, as the module writes it
    secret.chmod(0o640)
    layout = {
        "directories": [{"path": str(folder), "owner": OWNER, "group": GROUP, "mode": "0755"}],
        "files": [
            {"path": str(plain), "content": "listeners.tcp = 5672\n", "owner": OWNER, "group": GROUP, "mode": "0644"}
        ],
        "secret_files": [
            {"path": str(secret), "content": "password = 'é-secret'\n", "owner": OWNER, "group": GROUP, "mode": "0640"}
        ],
    }
    return layout, folder, plain, secret


def test_a_host_that_matches_the_layout_is_not_due(host):
    layout, *_ = host
    assert filters.host_files_due(layout, probe(layout)) == []


def test_changed_content_is_due(host):
    layout, _, plain, _ = host
    plain.write_text("listeners.tcp = 5673\n")
    assert filters.host_files_due(layout, probe(layout)) == [str(plain)]


def test_a_changed_mode_of_a_file_or_folder_is_due(host):
    layout, folder, _, secret = host
    secret.chmod(0o644)
    folder.chmod(0o700)
    assert sorted(filters.host_files_due(layout, probe(layout))) == sorted([str(folder), str(secret)])


def test_another_owner_or_group_in_the_layout_is_due(host):
    layout, _, plain, _ = host
    layout["files"][0]["group"] = "nogroup-" + GROUP
    assert filters.host_files_due(layout, probe(layout)) == [str(plain)]


def test_a_missing_file_or_folder_is_due(host, tmp_path):
    layout, folder, plain, secret = host
    plain.unlink()
    folder.rmdir()
    assert sorted(filters.host_files_due(layout, probe(layout))) == sorted([str(folder), str(plain)])


def test_a_file_where_the_layout_wants_a_folder_is_due(host):
    layout, folder, plain, _ = host
    layout["directories"].append({"path": str(plain), "owner": OWNER, "group": GROUP, "mode": "0644"})
    assert filters.host_files_due(layout, probe(layout)) == [str(plain)]


def test_the_probe_prints_no_content_only_digests(host):
    layout, *_ = host
    lines = probe(layout)
    assert not any("secret" in line.split(" ", 5)[1] for line in lines)
    assert all("password" not in line for line in lines)


def test_no_read_at_all_means_everything_is_due(host):
    layout, folder, plain, secret = host
    assert sorted(filters.host_files_due(layout, [])) == sorted([str(folder), str(plain), str(secret)])
    assert filters.host_files_probe({}) == ":"
