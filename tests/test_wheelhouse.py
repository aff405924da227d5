"""roles/celery_worker/files/wheelhouse.py: the controller's wheelhouse, built once per release and reused.

The build itself (python -m build, pip download) runs in every scenario's converge; these tests replace it
with one that writes a wheel, and pin what decides a rebuild, what is reused and what is kept.
"""

import importlib.util
import os
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "roles" / "celery_worker" / "files" / "wheelhouse.py"
spec = importlib.util.spec_from_file_location("wheelhouse", SCRIPT)
wheelhouse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheelhouse)

PLATFORMS = ["manylinux2014_x86_64", "any"]


@pytest.fixture
def builds(monkeypatch):
    """Every build as (source, python version, platforms); each writes a wheel holding the app's version."""
    done = []

    def build(runtime, app, python_version, platforms, into):
        into.mkdir()
        version = (runtime / "VERSION").read_text().strip()
        (into / f"fetcher-{version}-py3-none-any.whl").write_bytes(f"wheel {version}".encode())
        (into / "celery-5.7.0-py3-none-any.whl").write_bytes(b"celery")
        done.append((runtime, python_version, platforms))

    monkeypatch.setattr(wheelhouse, "build", build)
    return done


@pytest.fixture
def source(tmp_path):
    app = tmp_path / "app"
    (app / "src" / "fetcher").mkdir(parents=True)
    (app / "src" / "fetcher" / "tasks.py").write_text("def add(x, y):\n    return x + y\n")
    (app / "requirements.txt").write_text("celery==5.7.0\n")
    (app / "VERSION").write_text("0.1.0\n")
    (app / "pyproject.toml").write_text('[project]\nname = "fetcher"\nversion = "0.1.0"\n')
    return app


def test_an_unchanged_release_is_built_once_and_then_reused(tmp_path, source, builds):
    first = wheelhouse.main(tmp_path / "cache", source, source, "3.11", PLATFORMS)
    again = wheelhouse.main(tmp_path / "cache", source, source, "3.11", PLATFORMS)
    assert first["built"] and not again["built"]
    assert len(builds) == 1
    assert {key: again[key] for key in ("path", "release", "checksum")} == {
        key: first[key] for key in ("path", "release", "checksum")
    }
    assert first["release"].startswith("fetcher-0.1.0-")


@pytest.mark.parametrize(
    "change",
    [
        lambda app: (app / "src" / "fetcher" / "tasks.py").write_text("def add(x, y):\n    return y + x\n"),
        lambda app: (app / "requirements.txt").write_text("celery==5.7.1\n"),
        lambda app: (app / "src" / "fetcher" / "new.py").write_text(""),
    ],
    ids=["code", "requirements", "new file"],
)
def test_a_changed_source_is_a_new_release(tmp_path, source, builds, change):
    first = wheelhouse.main(tmp_path / "cache", source, source, "3.11", PLATFORMS)
    change(source)
    second = wheelhouse.main(tmp_path / "cache", source, source, "3.11", PLATFORMS)
    assert second["built"] and second["path"] != first["path"]


def test_another_python_or_platform_is_a_new_release(tmp_path, source, builds):
    base = wheelhouse.main(tmp_path / "cache", source, source, "3.11", PLATFORMS)["path"]
    assert wheelhouse.main(tmp_path / "cache", source, source, "3.13", PLATFORMS)["path"] != base
    assert wheelhouse.main(tmp_path / "cache", source, source, "3.11", ["manylinux2014_aarch64"])["path"] != base
    assert [python for _, python, _ in builds] == ["3.11", "3.13", "3.11"]


def test_build_output_and_caches_do_not_make_a_new_release(tmp_path, source, builds):
    first = wheelhouse.main(tmp_path / "cache", source, source, "3.11", PLATFORMS)
    for folder in ("build", "dist", "__pycache__", "src/fetcher.egg-info", ".pytest_cache"):
        (source / folder).mkdir(parents=True, exist_ok=True)
        (source / folder / "junk").write_text("anything")
    assert not wheelhouse.main(tmp_path / "cache", source, source, "3.11", PLATFORMS)["built"]
    assert len(builds) == 1, first


def test_the_newest_releases_are_kept_three_for_each_of_two_pythons(tmp_path, source, builds):
    cache = tmp_path / "cache"
    paths = []
    for number in range(5):
        (source / "src" / "fetcher" / "tasks.py").write_text(f"RELEASE = {number}\n")
        for step, python in enumerate(("3.11", "3.13")):
            paths.append(wheelhouse.main(cache, source, source, python, PLATFORMS)["path"])
            # File times may be coarse: make each release visibly newer than the one before.
            os.utime(paths[-1], (1_000_000 + 2 * number + step, 1_000_000 + 2 * number + step))
    kept = sorted(str(path) for path in cache.iterdir())
    assert kept == sorted(paths[-6:])


def test_a_build_cut_short_is_never_reused(tmp_path, source, monkeypatch):
    def broken(runtime, app, python_version, platforms, into):
        into.mkdir()
        (into / "fetcher-0.1.0-py3-none-any.whl").write_bytes(b"half")
        raise RuntimeError("pip download failed")

    monkeypatch.setattr(wheelhouse, "build", broken)
    with pytest.raises(RuntimeError):
        wheelhouse.main(tmp_path / "cache", source, source, "3.11", PLATFORMS)
    assert list((tmp_path / "cache").iterdir()) == []


def test_two_runs_building_the_same_release_at_once_both_succeed(tmp_path, source, monkeypatch):
    """The other run renames its folder into place first; this one's rename fails, and it uses that one."""
    cache = tmp_path / "cache"
    release = cache / wheelhouse.digest([source], "3.11", PLATFORMS)

    def build_while_another_finishes(runtime, app, python_version, platforms, into):
        into.mkdir()
        (into / "fetcher-0.1.0-py3-none-any.whl").write_bytes(b"wheel 0.1.0")
        release.mkdir()
        (release / "fetcher-0.1.0-py3-none-any.whl").write_bytes(b"wheel 0.1.0")

    monkeypatch.setattr(wheelhouse, "build", build_while_another_finishes)
    result = wheelhouse.main(cache, source, source, "3.11", PLATFORMS)
    assert result["path"] == str(release) and result["release"].startswith("fetcher-0.1.0-")
    assert [path.name for path in cache.iterdir()] == [release.name]


def test_a_release_arrives_as_one_archive_of_its_wheels_and_pinned_requirements(tmp_path, source, builds):
    first = wheelhouse.main(tmp_path / "cache", source, source, "3.11", PLATFORMS)
    with tarfile.open(first["archive"]) as tar:
        assert sorted(tar.getnames()) == [
            "celery-5.7.0-py3-none-any.whl",
            "fetcher-0.1.0-py3-none-any.whl",
            "requirements.txt",
        ]
        assert tar.extractfile("requirements.txt").read() == b"celery==5.7.0\nfetcher==0.1.0\n"
    # A release folder from before archives existed gets its archive on the next run, without a rebuild.
    os.unlink(first["archive"])
    again = wheelhouse.main(tmp_path / "cache", source, source, "3.11", PLATFORMS)
    assert not again["built"] and again["archive"] == first["archive"] and os.path.isfile(again["archive"])


@pytest.fixture
def django_project(tmp_path):
    """An operator's Django project as startproject makes it: no pyproject.toml, a requirements.txt."""
    project = tmp_path / "harvestsite"
    (project / "harvestsite").mkdir(parents=True)
    (project / "manage.py").write_text("# manage.py\n")
    (project / "harvestsite" / "settings.py").write_text("DEBUG = False\n")
    (project / "requirements.txt").write_text("django>=5.2\n")
    (project / "db.sqlite3").write_bytes(b"local data")
    return project


def test_a_project_without_a_wheel_ships_as_its_source_tree_under_one_release_name(
    tmp_path, source, django_project, builds
):
    first = wheelhouse.main(tmp_path / "cache", source, django_project, "3.11", PLATFORMS)
    other_python = wheelhouse.main(tmp_path / "cache", source, django_project, "3.13", PLATFORMS)
    assert first["release"].startswith("harvestsite-source-")
    assert other_python["release"] == first["release"], "one release name whatever Python a host runs"
    assert other_python["path"] != first["path"]
    with tarfile.open(first["archive"]) as tar:
        names = tar.getnames()
    assert {"source/manage.py", "source/harvestsite/settings.py", "source/requirements.txt"} <= set(names)
    assert "source/db.sqlite3" not in names, "a local database is not part of a release"


def test_a_change_in_the_operators_project_is_a_new_release(tmp_path, source, django_project, builds):
    first = wheelhouse.main(tmp_path / "cache", source, django_project, "3.11", PLATFORMS)
    (django_project / "harvestsite" / "settings.py").write_text("DEBUG = True\n")
    second = wheelhouse.main(tmp_path / "cache", source, django_project, "3.11", PLATFORMS)
    assert second["built"] and second["release"] != first["release"] and second["checksum"] != first["checksum"]


def test_a_project_with_a_pyproject_is_named_by_it(tmp_path, source, builds):
    project = tmp_path / "crawler"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "crawler-app"\nversion = "2.1.0"\n')
    result = wheelhouse.main(tmp_path / "cache", source, project, "3.11", PLATFORMS)
    assert result["release"].startswith("crawler_app-2.1.0-")
    with tarfile.open(result["archive"]) as tar:
        assert not [name for name in tar.getnames() if name.startswith("source/")], "it arrives as a wheel"
