"""`fetcher-demo` (or `python -m fetcher.demo`): the write-up's demo against the running cluster.

It sends MyTest (2, 2), (4, 4), (8, 8) and (16, 16) over one pooled connection and producer, waits for
the results and prints `[4, 8, 16, 32]` as the first line of its output. `--count N` sends (1, 1) to
(N, N) instead; `--routing-key` sends to another host's queue.

Which host ran a task (`--show-hosts`, and `hosts` in `--json`): with `result_extended` on, the result
that a worker sends back names the worker, and the rpc:// backend carries that in its reply message (checked
against RabbitMQ 3.10 with a real worker). Workers run as `fetcher@<inventory name>` (the unit's
`--hostname`), so the part after `@` is the host's inventory name.
"""

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celery.exceptions import TimeoutError as ResultTimeout
from celery.result import AsyncResult
from kombu.exceptions import OperationalError

from fetcher.config_reader import ConfigError
from fetcher.routing import UnknownRoutingKey, queue_for

DEMO_NUMBERS = (2, 4, 8, 16)


@dataclass(frozen=True)
class Outcome:
    """What the demo sent and got back, in the order it was sent."""

    pairs: list[tuple[int, int]]
    results: list[int]
    hosts: list[str]
    routing_key: str
    seconds: float


class Unfinished(Exception):
    """Some tasks did not finish in time, or failed; the message lists them."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; the routing key defaults (later) to this host's own queue's key."""
    parser = argparse.ArgumentParser(
        prog="fetcher-demo",
        description="Send MyTest (2,2) (4,4) (8,8) (16,16) through the cluster and print the results.",
    )
    parser.add_argument("--routing-key", metavar="KEY", help="send to this key's queue (default: this host's)")
    parser.add_argument("--count", type=_positive_int, metavar="N", help="send (1,1) .. (N,N) instead")
    parser.add_argument("--show-hosts", action="store_true", help="after the list, print which host ran each task")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"results", "hosts", "routing_key", "seconds"} as one JSON object instead',
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="give up waiting after this long (default: 60)",
    )
    return parser.parse_args(argv)


def pairs_for(count: int | None) -> list[tuple[int, int]]:
    """The argument pairs to send: the write-up's four, or (1, 1) to (count, count)."""
    numbers = DEMO_NUMBERS if count is None else range(1, count + 1)
    return [(number, number) for number in numbers]


def host_of(worker_name: str | None) -> str:
    """The inventory name in a worker node name `fetcher@<host>`; `unknown` if the result had none."""
    if not worker_name:
        return "unknown"
    return worker_name.rpartition("@")[2]


def wait_for(
    pairs: list[tuple[int, int]],
    results: list[AsyncResult],
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[int], list[str]]:
    """Every result value and the host that produced it; Unfinished if any did not succeed in time."""
    deadline = clock() + timeout
    problems = []
    for pair, result in zip(pairs, results, strict=True):
        remaining = deadline - clock()
        if remaining > 0:
            try:
                result.get(timeout=remaining, propagate=False)
            except ResultTimeout:
                pass
        if not result.ready():
            problems.append(f"MyTest{pair} (task {result.id}) did not finish")
        elif result.failed():
            problems.append(f"MyTest{pair} (task {result.id}) failed: {result.result!r}")
    if problems:
        summary = f"after {timeout:g} s, {len(problems)} of {len(pairs)} tasks are not done:"
        raise Unfinished("\n  ".join([summary, *problems]))
    return [result.result for result in results], [host_of(result.worker) for result in results]


def format_text(outcome: Outcome, show_hosts: bool) -> str:
    """The result list (`[4, 8, 16, 32]`), then with `show_hosts` one `(2, 2) -> 4 on server` per task."""
    lines = [repr(outcome.results)]
    if show_hosts:
        lines += [
            f"{pair} -> {result} on {host}"
            for pair, result, host in zip(outcome.pairs, outcome.results, outcome.hosts, strict=True)
        ]
    return "\n".join(lines)


def format_json(outcome: Outcome) -> str:
    """One JSON object, for scripts and tests."""
    return json.dumps(
        {
            "results": outcome.results,
            "hosts": outcome.hosts,
            "routing_key": outcome.routing_key,
            "seconds": round(outcome.seconds, 3),
        }
    )


def run(args: argparse.Namespace) -> Outcome:
    """Send the pairs to the queue of the routing key and wait for them."""
    # Imported here, not at the top: loading the app reads the configuration file, and `--help` or a
    # usage error must not need one.
    from fetcher.app import app, settings
    from fetcher.tasks import my_test

    routing_key = args.routing_key or settings.routing.own_routing_key
    queue = queue_for(settings.routing, routing_key)
    pairs = pairs_for(args.count)
    started = time.monotonic()
    with app.producer_or_acquire() as producer:
        results = [my_test.apply_async(pair, queue=queue, producer=producer) for pair in pairs]
    values, hosts = wait_for(pairs, results, args.timeout)
    return Outcome(pairs, values, hosts, routing_key, time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `fetcher-demo`; exit status 1 if tasks did not finish, 2 on configuration errors."""
    args = parse_args(argv)
    try:
        outcome = run(args)
    except (ConfigError, UnknownRoutingKey) as exc:
        print(f"fetcher-demo: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        print(f"fetcher-demo: cannot publish to the broker: {exc}", file=sys.stderr)
        return 1
    except Unfinished as exc:
        print(f"fetcher-demo: {exc}", file=sys.stderr)
        return 1
    print(format_json(outcome) if args.json else format_text(outcome, args.show_hosts))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


if __name__ == "__main__":
    sys.exit(main())
