"""`fetcher-quota`: this host's API allowance as an operator wants to see it.

Prints the allowance, the calls used and remaining in the current window, when the window resets, and
whether the worker is consuming its quota queues (as its governor last recorded it). It reads the shared
counter read-only, so it works whether or not the worker runs, and changes nothing. Run it as root or as
the service user (the configuration file is theirs only). `--json` prints one object instead.
"""

import argparse
import json
import sqlite3
import sys
import time

from fetcher.config_reader import ConfigError
from fetcher.quota import QuotaCounter, utc_time
from fetcher.settings import config_path, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetcher-quota", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args(argv)
    try:
        settings = load_settings(config_path())
    except ConfigError as exc:
        print(f"fetcher-quota: {exc}", file=sys.stderr)
        return 2
    if settings.quota is None:
        print(f"fetcher-quota: no API allowance on {settings.node} ([quota] in {settings.source})", file=sys.stderr)
        return 2
    quota = settings.quota
    counter = QuotaCounter(quota.state_file, quota.allowance, quota.window, read_only=True)
    start = counter.window_start()
    try:
        status = counter.status()
    except sqlite3.OperationalError:
        # No call made on this host yet: the worker creates the file with its first.
        used, consuming, since = 0, None, None
    else:
        used, consuming, since = status.used, status.consuming, status.consuming_since
        if consuming and not status.worker_consuming():
            consuming, since = False, None
    report = {
        "node": settings.node,
        "allowance": quota.allowance,
        "window": quota.window,
        "used": used,
        "remaining": max(quota.allowance - used, 0),
        "window_start": start,
        "reset_at": start + quota.window,
        "queues": list(quota.queues),
        "consuming": consuming,
        "consuming_since": since,
    }
    print(json.dumps(report) if options.json else _text(report))
    return 0


def _text(report: dict) -> str:
    state = {True: "yes", False: "no", None: "unknown (no worker has started)"}[report["consuming"]]
    if report["consuming_since"] is not None:
        state += f" (since {utc_time(report['consuming_since'])})"
    resets_in = max(report["reset_at"] - time.time(), 0)
    return (
        f"{report['node']}: {report['used']} of {report['allowance']} API calls used,"
        f" {report['remaining']} remaining in this {report['window']} s window;"
        f" resets at {utc_time(report['reset_at'])} (in {resets_in:.0f} s);"
        f" consuming {', '.join(report['queues'])}: {state}"
    )


if __name__ == "__main__":
    sys.exit(main())
