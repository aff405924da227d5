"""Logging for the worker and beat: the write-up's line format, in the file the unit names.

Left alone, Celery installs its own handlers and format on the root logger. A receiver of its
`setup_logging` signal replaces that entirely, so every logger (Celery's, Kombu's and `fetcher.tasks`)
writes through one handler in the configured format. A WatchedFileHandler reopens the file when logrotate
has moved it, so rotation needs neither `copytruncate` nor a restart. Without `--logfile` (a developer at a
terminal) the lines go to stderr.
"""

import logging
import sys
from logging.handlers import WatchedFileHandler

from celery.signals import setup_logging

from fetcher.settings import LoggingSettings


def configure(settings: LoggingSettings, logfile: str | None) -> None:
    """Make the root logger write to `logfile` (or stderr) in the configured format and level."""
    handler: logging.Handler
    if logfile:
        handler = WatchedFileHandler(logfile, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(settings.format, settings.datefmt))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(settings.level)


def install(settings: LoggingSettings) -> None:
    """Take over logging setup from Celery in the worker and beat processes of this app."""

    def on_setup_logging(logfile: str | None = None, **_: object) -> None:
        configure(settings, logfile)

    setup_logging.connect(on_setup_logging, weak=False)
