"""The Celery application of this host: `celery -A fetcher.app worker` and `celery -A fetcher.app beat`.

Importing this module reads the host's configuration file (`FETCHER_CONFIG`, default
`/etc/fetcher/fetcher.toml`) and stops with a ConfigError naming the bad key if it is invalid, so a wrong
file is found when the unit starts, not on the first message. Beat's unit also sets FETCHER_BEAT_CONFIG,
the file holding the periodic tasks.
"""

from celery import Celery

from fetcher import logs, worker
from fetcher.celeryconfig import build_config
from fetcher.settings import beat_config_path, config_path, load_settings

settings = load_settings(config_path(), beat_config_path())

app = Celery("fetcher", include=["fetcher.tasks"])
app.conf.update(build_config(settings))
logs.install(settings.logging)
worker.install(app, settings)
