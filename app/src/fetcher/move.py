"""`fetcher-move`: move what waits in an old cluster's queues to the cluster this host's configuration names.

Usage: fetcher-move OLD_HOST:PORT [OLD_HOST:PORT ...] [--idle SECONDS] [--timeout SECONDS] [--json]

playbooks/move-cluster.yml runs it on one worker once every worker and beat use the new cluster and the old
one takes no more tasks. Every queue of the system (each host's queue of `[routing]` and the dead-letter
queue) is declared on the new cluster with the app's own arguments, then emptied on the old one, a message
at a time: each is published into the queue of the same name on the new cluster (the default exchange, so a
task waits where it waited and a dead task stays dead), as it came, with a publisher confirm, and only then
acknowledged on the old cluster. Nothing is lost: a move cut short between the two leaves the message in
both queues, so it runs twice at worst (at-least-once, as everywhere in this system). Both clusters have the
same user, password and vhost (the vault's), read from this host's configuration; no secret is on the
command line. It ends once every old queue has stayed empty for --idle seconds, and prints what it moved.
"""

import argparse
import json
import sys
import time
from dataclasses import replace

from kombu import Connection, Producer, Queue

from fetcher.broker import broker_tls, broker_urls, publish_again
from fetcher.config_reader import ConfigError
from fetcher.queues import dead_letter_queue, declare_all
from fetcher.settings import Settings, config_path, load_settings


def move(
    settings: Settings,
    old: Connection,
    new: Connection,
    idle: float,
    timeout: float,
    clock=time.monotonic,
    sleep=time.sleep,
) -> dict[str, int]:
    """Move every message of the system's queues from `old` to `new`; {queue: messages moved}."""
    names = [queue.name for queue in settings.routing.queues] + [dead_letter_queue(settings.routing).name]
    declare_all(new, settings.routing)
    moved = dict.fromkeys(names, 0)
    producer = Producer(new.default_channel)
    deadline, empty_since = clock() + timeout, None
    while True:
        found = 0
        for name in names:
            # Not declared here: the old cluster has these queues with the app's arguments already.
            source = Queue(name, no_declare=True).bind(old.default_channel)
            while (message := source.get(no_ack=False)) is not None:
                publish_again(producer, message, "", name)
                message.ack()
                moved[name] += 1
                found += 1
        now = clock()
        if found:
            empty_since = None
        elif empty_since is None:
            empty_since = now
        if empty_since is not None and now - empty_since >= idle:
            return moved
        if now >= deadline:
            raise TimeoutError(f"the old queues were still taking messages after {timeout:.0f} s: {moved}")
        sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetcher-move", description=__doc__.splitlines()[0])
    parser.add_argument("old", nargs="+", metavar="OLD_HOST:PORT", help="the old cluster's nodes")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds every old queue stays empty at the end")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args(argv)
    try:
        settings = load_settings(config_path())
    except ConfigError as exc:
        print(f"fetcher-move: {exc}", file=sys.stderr)
        return 2
    old_broker = replace(settings.broker, hosts=tuple(options.old))
    started = time.monotonic()
    options_for = {
        "transport_options": {"confirm_publish": True},
        "heartbeat": settings.broker.heartbeat,
        "connect_timeout": settings.broker.connect_timeout,
    }
    with (
        Connection(broker_urls(old_broker), ssl=broker_tls(old_broker), **options_for) as old,
        Connection(broker_urls(settings.broker), ssl=broker_tls(settings.broker), **options_for) as new,
    ):
        moved = move(settings, old, new, options.idle, options.timeout)
    report = {
        "moved": moved,
        "total": sum(moved.values()),
        "seconds": round(time.monotonic() - started, 1),
        "from": list(options.old),
        "to": list(settings.broker.hosts),
    }
    if options.json:
        print(json.dumps(report))
    else:
        print(
            f"Moved {report['total']} messages from {', '.join(report['from'])} to {', '.join(report['to'])} "
            f"in {report['seconds']} s: " + ", ".join(f"{name} {count}" for name, count in moved.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
