"""Keep tasks flowing while an operation runs: publish `add` tasks at a steady rate until told to stop.

Run on a server with the app's virtualenv and configuration, in the background:

    FETCHER_CONFIG=/etc/fetcher/fetcher.toml /opt/fetcher/venv/bin/python publish.py RUN DIR QUEUE...

Task ids are RUN-0, RUN-1, ..., sent round-robin to the queues given (each a host's own). A task counts as
sent once the broker has confirmed it (the app publishes with confirms); it is then written to DIR/sent,
one id a line, and to DIR/confirmed with the time of its confirm (`EPOCH-SECONDS ID`), so a test can
measure how long publishing waited. A publish that fails (every node down, a node drained) is tried again,
with the same id, until it is confirmed or the run is told to stop (DIR/stop exists): then that id goes to
DIR/unconfirmed, since the broker may still have it. Failures go to DIR/errors. DIR/done marks the end.
"""

import itertools
import sys
import time
from pathlib import Path

from fetcher.app import app
from fetcher.tasks import add

# Tasks a second, spread over the queues: enough to see any gap, little enough for a 2-core test bed.
RATE = 5.0


def main(run: str, folder: Path, queues: list[str]) -> None:
    stop = folder / "stop"
    with (
        open(folder / "sent", "a", buffering=1) as sent,
        open(folder / "confirmed", "a", buffering=1) as confirmed,
        open(folder / "errors", "a", buffering=1) as errors,
    ):
        for number, queue in zip(itertools.count(), itertools.cycle(queues)):
            if stop.exists():
                break
            task_id = f"{run}-{number}"
            while True:
                try:
                    # The app's publish retry reconnects (to the next node) a few times; this loop outlasts
                    # a whole-cluster outage.
                    with app.producer_or_acquire() as producer:
                        add.apply_async(
                            (number, 1), task_id=task_id, queue=queue, producer=producer, ignore_result=True
                        )
                    sent.write(f"{task_id}\n")
                    confirmed.write(f"{time.time():.3f} {task_id}\n")
                    break
                except Exception as exc:  # noqa: BLE001 - any failure: note it, try again
                    errors.write(f"{time.time():.1f} {task_id}: {exc!r}\n")
                    if stop.exists():
                        (folder / "unconfirmed").write_text(f"{task_id}\n")
                        break
                    time.sleep(1)
            time.sleep(1 / RATE)
    (folder / "done").touch()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
