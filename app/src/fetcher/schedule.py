"""Beat's periodic tasks, from the `[[beat.schedule]]` entries of the configuration.

Beat publishes each entry like any other task sent from this host, so it goes to this host's own queue
unless the entry's task routes it elsewhere (e.g. `fan_out` with a `routing_key`).
"""

from datetime import timedelta
from typing import Any

from fetcher.settings import ScheduleEntry


def beat_schedule(entries: tuple[ScheduleEntry, ...]) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule` setting: each entry runs its task every `every` seconds."""
    return {
        entry.name: {
            "task": entry.task,
            "schedule": timedelta(seconds=entry.every),
            "args": entry.args,
            "kwargs": dict(entry.kwargs),
        }
        for entry in entries
    }
