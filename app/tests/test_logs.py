"""Logging: the write-up's format, into the file Celery passes (reopened after rotation), else stderr."""

import logging
import re

from celery.signals import setup_logging
from fetcher.logs import configure
from fetcher.settings import LoggingSettings

SETTINGS = LoggingSettings(
    level="INFO",
    format="[%(levelname)-5s] %(asctime)-8s %(name)-10s %(message)s",
    datefmt="%Y-%m-%d %H:%M:%S",
)
LINE = re.compile(r"^\[INFO \] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d fetcher.tasks Received 1 and 2$")


def test_lines_have_the_write_ups_format(tmp_path, root_logging):
    logfile = tmp_path / "worker.log"
    configure(SETTINGS, str(logfile))

    logging.getLogger("fetcher.tasks").info("Received %s and %s", 1, 2)
    logging.getLogger("fetcher.tasks").debug("below the configured level")

    [line] = logfile.read_text().splitlines()
    assert LINE.match(line), line
    assert re.match(r"^\[WARNING\] \S+ \S+ celery\s+x$", _format("WARNING", "celery", "x"))


def _format(level, name, message):
    record = logging.LogRecord(name, getattr(logging, level), __file__, 1, message, None, None)
    return logging.Formatter(SETTINGS.format, SETTINGS.datefmt).format(record)


def test_the_file_is_reopened_after_logrotate_moved_it(tmp_path, root_logging):
    logfile = tmp_path / "worker.log"
    configure(SETTINGS, str(logfile))
    logger = logging.getLogger("fetcher.tasks")
    logger.info("Received %s and %s", 1, 2)

    logfile.rename(tmp_path / "worker.log.1")
    logger.info("Received %s and %s", 1, 2)

    assert len(logfile.read_text().splitlines()) == 1
    assert len((tmp_path / "worker.log.1").read_text().splitlines()) == 1


def test_without_a_logfile_lines_go_to_stderr(capsys, root_logging):
    configure(SETTINGS, None)

    logging.getLogger("fetcher.tasks").info("Received %s and %s", 1, 2)

    assert LINE.match(capsys.readouterr().err.strip())


def test_the_app_takes_over_celerys_logging_setup(fetcher_app, tmp_path, root_logging):
    logfile = tmp_path / "beat.log"

    setup_logging.send(sender=None, loglevel="DEBUG", logfile=str(logfile), format="%(message)s", colorize=False)
    logging.getLogger("fetcher.tasks").info("Received %s and %s", 1, 2)

    assert LINE.match(logfile.read_text().strip()), "the [logging] settings win over Celery's arguments"
