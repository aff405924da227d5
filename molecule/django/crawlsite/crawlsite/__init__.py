"""crawlsite: a Django project of an operator's own, as the django scenario deploys it (not the bundled app)."""

from .celery import app as celery_app

__all__ = ("celery_app",)
