"""An operator's own app, as test_metrics runs it: `celery -A metrics_worker_app worker --pool prefork`.

Set up by `fetcher.runtime.configure` like any app on the cluster, then moved onto Kombu's filesystem transport in
the folder FETCHER_TEST_BROKER (the test process sends through the same folder): a real worker in processes of its
own, with no broker to run.
"""

import os

from celery import Celery
from fetcher import runtime

app = Celery("harvest")
runtime.configure(app)
_folder = os.environ["FETCHER_TEST_BROKER"]
app.conf.update(
    broker_url="filesystem://",
    broker_transport_options={
        "data_folder_in": _folder,
        "data_folder_out": _folder,
        "control_folder": os.path.join(_folder, "control"),
        "polling_interval": 0.02,
    },
    result_backend=None,
    task_ignore_result=True,
)


@app.task(name="harvest.ok")
def ok():
    return "ok"


@app.task(name="harvest.flaky", bind=True)
def flaky(self):
    """Fails once, then runs: one retry and one success."""
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "ok at last"


@app.task(name="harvest.broken")
def broken():
    raise ValueError("broken for good")
