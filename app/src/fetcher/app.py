"""The Celery application of this host: `celery -A fetcher.app worker` and `celery -A fetcher.app beat`.

Importing this module reads the host's configuration file (`FETCHER_CONFIG`, default
`/etc/fetcher/fetcher.toml`) and stops with a ConfigError naming the bad key if it is invalid, so a wrong
file is found when the unit starts, not on the first message. Beat's unit also sets FETCHER_BEAT_CONFIG,
the file holding the periodic tasks.
"""

from celery import Celery

from fetcher import runtime

app = Celery("fetcher", include=["fetcher.tasks"])
# Exactly what an operator's own app does (fetcher.runtime).
settings = runtime.configure(app)
