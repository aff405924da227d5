"""The project's Celery app, the way Celery's Django guide has it, plus one line: fetcher.runtime takes the
cluster's settings (brokers, this host's queue, routing, retries, dead-lettering, the API allowance) from the
host's /etc/fetcher/fetcher.toml. The worker runs it as `celery -A crawlsite worker`."""

import os

from celery import Celery
from fetcher import runtime

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crawlsite.settings")

app = Celery("crawlsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
runtime.configure(app)
app.autodiscover_tasks()
