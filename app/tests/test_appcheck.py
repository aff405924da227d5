"""fetcher.appcheck: what a play runs before any host switches to a new release."""

import json
import sys

import pytest
from fetcher import appcheck

PROJECT = '''
from celery import Celery

app = Celery("{name}", broker="memory://")


@app.task(name="{name}.tasks.crawl")
def crawl(url):
    return url
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A small app of the operator's own, in the layout of a Django project's proj/celery.py."""
    package = tmp_path / "harvestproj"
    package.mkdir()
    (package / "__init__.py").write_text("from .celery import app\n")
    (package / "celery.py").write_text(PROJECT.format(name="harvestproj"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "harvestproj"
    for name in [name for name in sys.modules if name.startswith("harvestproj")]:
        del sys.modules[name]


def test_it_names_the_apps_tasks_and_leaves_celerys_own_out(project, capsys):
    appcheck.main([project])
    found = json.loads(capsys.readouterr().out)
    assert found == {"app": "harvestproj", "tasks": ["harvestproj.tasks.crawl"]}


def test_a_module_attribute_is_taken_as_celery_takes_it(project):
    assert appcheck.check(f"{project}.celery:app")["tasks"] == ["harvestproj.tasks.crawl"]


def test_an_app_that_does_not_import_fails(tmp_path, monkeypatch):
    (tmp_path / "brokenproj.py").write_text("import a_module_nobody_has\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_module_nobody_has"):
        appcheck.check("brokenproj")


def test_without_exactly_one_module_it_says_how_to_call_it():
    with pytest.raises(SystemExit, match="usage: python -m fetcher.appcheck MODULE"):
        appcheck.main([])
