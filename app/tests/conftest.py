"""Fixtures: the package from the source tree, a host configuration file, a stub API and the loaded app.

The repository's .venv holds the app's dependencies but not the app (hosts get it as a wheel), so the
tests import `fetcher` from app/src. The app under test is the real `fetcher.app`, loaded from a
configuration file in the template's format, with two substitutions that keep the tests self-contained:
Kombu's in-memory transport for the broker and Celery's in-memory cache for results.
"""

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery.app.trace import reset_worker_optimizations, setup_worker_optimizations
from celery.contrib.testing.worker import start_worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sample_config import EXAMPLE  # noqa: E402
from stub_api import StubApi  # noqa: E402


@pytest.fixture(scope="session")
def stub_api():
    """A real HTTP server on 127.0.0.1 playing the API."""
    server = StubApi()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def config_file(tmp_path_factory, stub_api):
    """The example configuration, with [api] pointing at the stub, as FETCHER_CONFIG for the session."""
    path = tmp_path_factory.mktemp("etc") / "fetcher.toml"
    path.write_text(EXAMPLE.replace("http://api.example:8080", stub_api.base_url))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FETCHER_CONFIG", str(path))
        yield path


@pytest.fixture(scope="session")
def fetcher_app(config_file):
    """The `fetcher.app` module, its broker and result backend swapped for in-memory ones."""
    import fetcher.app

    fetcher.app.app.conf.update(
        broker_url="memory://",
        broker_transport_options={"polling_interval": 0.01},
        result_backend="cache+memory://",
    )
    return fetcher.app


@pytest.fixture(scope="session")
def tasks(fetcher_app):
    """The `fetcher.tasks` module, bound to the in-memory app."""
    import fetcher.tasks

    return fetcher.tasks


@pytest.fixture
def broker(fetcher_app):
    """A connection to the in-memory broker; every task queue is emptied before and after the test."""
    names = [queue.name for queue in fetcher_app.settings.routing.queues]
    names.append(fetcher_app.settings.routing.dead_letter_queue)
    with fetcher_app.app.connection_for_write() as connection:
        _purge(connection, names)
        yield connection
        _purge(connection, names)


def _purge(connection, names):
    channel = connection.default_channel
    for name in names:
        try:
            channel.queue_purge(name)
        except connection.channel_errors:
            pass


@pytest.fixture
def root_logging():
    """Restore the root logger after a test that configures logging."""
    with _restored_root_logger() as root:
        yield root


@pytest.fixture(scope="module")
def worker(fetcher_app, tasks):
    """A real worker in a thread on the in-memory broker, named like the server's (one per module:
    stopping a worker takes seconds).

    `celery worker` sets up its tracer with the node name (setup_worker_optimizations) before it starts;
    Celery's embedded test worker does not, so the fixture does. Starting the worker sets up logging
    through the app's `setup_logging` receiver, so the root logger is restored afterwards.
    """
    app = fetcher_app.app
    with _restored_root_logger():
        setup_worker_optimizations(app, "fetcher@server")
        try:
            with start_worker(app, hostname="fetcher@server", perform_ping_check=False, shutdown_timeout=5):
                yield
        finally:
            reset_worker_optimizations(app)


@contextmanager
def _restored_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
