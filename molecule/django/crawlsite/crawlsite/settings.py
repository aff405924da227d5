"""crawlsite's settings (the write-up's local_settings.py): the secret comes from the app's environment
(celery_worker_app_environment, from the vault)."""

import os

SECRET_KEY = os.environ["CRAWLSITE_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["django.contrib.contenttypes", "harvester"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/var/lib/fetcher/crawlsite.sqlite3"}}
USE_TZ = True
TIME_ZONE = "UTC"
