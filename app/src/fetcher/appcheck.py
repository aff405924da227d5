"""Check that a release imports a Celery app, and name its tasks: `python -m fetcher.appcheck MODULE`.

MODULE is what `celery -A` takes (`fetcher.app`, a Django project's `proj`, or `proj.celery:app`). The
celery_worker role runs this with a new release's virtualenv, as the app's user and with the app's environment,
before any host switches to that release: an app that does not import (a missing dependency, a syntax error,
settings that fail) is refused there, and the units go on running the release they run. It imports what the
worker imports at start (the app, then its task modules, a Django project's apps included) and prints
{"app": main name, "tasks": [task names]} as JSON; Celery's own tasks are left out.
"""

import json
import sys

from celery.app.utils import find_app


def check(module: str) -> dict:
    app = find_app(module)
    app.loader.import_default_modules()
    app.finalize(auto=True)
    return {"app": app.main, "tasks": sorted(name for name in app.tasks if not name.startswith("celery."))}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m fetcher.appcheck MODULE  (what celery -A takes)")
    print(json.dumps(check(args[0])))


if __name__ == "__main__":
    main()
