"""harvester's tasks: one any host runs (routed to a host's queue by the sender), one that spends the API
allowance of the host that runs it."""

import socket

import requests
from crawlsite.celery import app
from fetcher import runtime


@app.task(name="harvester.tasks.tally")
def tally(x, y):
    """Add two numbers, and say which host did."""
    return {"sum": x + y, "host": socket.gethostname()}


@runtime.api_task(app, name="harvester.tasks.fetch_page")
def fetch_page(item):
    """One call to the API (taken from this host's allowance first)."""
    api = runtime.configured().api
    response = requests.get(
        f"{api.base_url}/items/{item}", headers={"Authorization": f"Bearer {api.token}"}, timeout=api.timeout
    )
    response.raise_for_status()
    return {"item": item, "host": socket.gethostname()}
