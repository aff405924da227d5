"""The container side of bench/app-throughput, run as root by the app's virtualenv python on a test-bed host.

  describe               this host's node, vhost, consumed queues and worker concurrency, as JSON
  declare --leader HOST  declare the raw queue bench.raw through HOST's broker (its leader then sits where
  --like QUEUE           the Celery queue's does), with that Celery queue's arguments, on the same exchange
  consume --processes C  C raw consumer processes on this host (one connection each, prefetch 1, a reply and
                         then the ack per message), until each receives a stop message
  measure                warm-up, then Celery and raw runs interleaved; progress on stderr, JSON on stdout
  delete                 delete bench.raw (a consumer still running is cancelled and exits)

Both sides go through the same broker, vhost, exchange and durability: persistent messages with publisher
confirms (awaited per message, as Celery's confirm_publish does) into a quorum queue, consumed at prefetch 1
with the ack after the work and the reply; the reply is non-persistent and confirmed, sent to a reply queue
declared like the rpc:// backend's and read by the sender on a second connection. Uses only the stdlib and
the app's virtualenv (app/requirements.txt: celery 5.7.0, kombu 5.7.0).
"""

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import sys
import time
import uuid
from collections import Counter

from amqp.exceptions import ConsumerCancelled
from celery.exceptions import TimeoutError as CeleryTimeout
from fetcher.broker import broker_tls, broker_urls
from fetcher.queues import task_queues
from fetcher.routing import queue_for
from fetcher.settings import config_path, load_settings
from kombu import Connection, Consumer, Exchange, Producer, Queue

# A run fails when nothing comes back for this long, so a measurement whose other half is gone ends soon.
STALL_SECONDS = 60
RAW_QUEUE = "bench.raw"
RAW_KEY = "bench.raw"
STOP_HEADER = "x-bench-stop"


def say(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def settings():
    return load_settings(config_path())


def connection(conf, first_host=None):
    """Like the app's: every node for failover, the local one (or `first_host`) first, publisher confirms."""
    hosts = list(conf.broker.hosts)
    if first_host:
        hosts.sort(key=lambda host: host.rpartition(":")[0] != first_host)
    urls = broker_urls(dataclasses.replace(conf.broker, hosts=tuple(hosts)))
    return Connection(
        urls,
        ssl=broker_tls(conf.broker),
        connect_timeout=conf.broker.connect_timeout,
        transport_options={"confirm_publish": True},
    )


def raw_queue(conf, like):
    """bench.raw: the arguments of the Celery queue `like`, bound to the same exchange."""
    model = next(queue for queue in task_queues(conf.routing) if queue.name == like)
    return Queue(
        RAW_QUEUE, model.exchange, routing_key=RAW_KEY, durable=True, queue_arguments=dict(model.queue_arguments)
    )


def reply_queue(conf, name):
    """A reply queue declared as the rpc:// backend declares its own (celery.backends.rpc binding)."""
    return Queue(name, Exchange(None), name, durable=True, auto_delete=True, expires=conf.result.expires)


# --- describe, declare, delete ------------------------------------------------------------------------


def describe(_args):
    import celery
    import kombu

    conf = settings()
    print(
        json.dumps(
            {
                "node": conf.node,
                "vhost": conf.broker.vhost,
                "consume": list(conf.routing.consume),
                "concurrency": conf.worker.concurrency,
                "queues": {queue.routing_key: queue.name for queue in conf.routing.queues},
                "celery": celery.__version__,
                "kombu": kombu.__version__,
            }
        )
    )
    return 0


def declare(args):
    conf = settings()
    with connection(conf, first_host=args.leader) as conn:
        raw_queue(conf, args.like)(conn.default_channel).declare()
        say(
            f"declared {RAW_QUEUE} through {conn.as_uri().rpartition('@')[2]} "
            f"(arguments of the Celery queue {args.like!r})"
        )
    return 0


def delete(_args):
    conf = settings()
    with connection(conf) as conn:
        Queue(RAW_QUEUE)(conn.default_channel).delete()
    return 0


# --- consume --------------------------------------------------------------------------------------------


def consumer_process(index, idle_timeout):
    """One raw consumer: like one worker process with prefetch 1 and acks_late, minus Celery."""
    conf = settings()
    handled = 0
    stop = False
    with connection(conf) as conn:
        channel = conn.channel()
        channel.basic_qos(0, 1, False)
        replies = Producer(conn.channel(), auto_declare=False)

        def on_message(body, message):
            nonlocal handled, stop
            if message.headers.get(STOP_HEADER):
                # Cancel before the ack, so no further message (another consumer's stop) is delivered here.
                consumer.cancel()
                message.ack()
                stop = True
                return
            x, y = body
            replies.publish(
                {"result": x + y, "host": conf.node},
                exchange="",
                routing_key=message.properties["reply_to"],
                correlation_id=message.properties["correlation_id"],
                delivery_mode=1,
                serializer="json",
            )
            message.ack()
            handled += 1

        consumer = Consumer(channel, [Queue(RAW_QUEUE, no_declare=True)], callbacks=[on_message], accept=["json"])
        consumer.consume()
        while not stop:
            try:
                conn.drain_events(timeout=idle_timeout)
            except TimeoutError:
                say(f"raw consumer {conf.node}/{index}: nothing for {idle_timeout:g} s, stopping")
                return 1
    say(f"raw consumer {conf.node}/{index}: {handled} messages, stopped")
    return 0


def _child(index, idle_timeout):
    try:
        sys.exit(consumer_process(index, idle_timeout))
    except ConsumerCancelled:
        say(f"raw consumer {index}: cancelled by the broker ({RAW_QUEUE} deleted), stopping")
        sys.exit(1)
    except Exception as exc:  # a lost connection ends the bench's consumer
        say(f"raw consumer {index}: {type(exc).__name__}: {exc}")
        sys.exit(1)


def consume(args):
    children = [
        multiprocessing.Process(target=_child, args=(index, args.idle_timeout))
        for index in range(1, args.processes + 1)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()
    return int(any(child.exitcode != 0 for child in children))


# --- measure --------------------------------------------------------------------------------------------


def wait_for_consumers(conn, expected, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        _, messages, consumers = Queue(RAW_QUEUE)(conn.default_channel).queue_declare(passive=True)
        if consumers == expected and messages == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"bench: {RAW_QUEUE} has {consumers} consumers and {messages} messages after "
                f"{timeout} s; expected {expected} consumers and an empty queue"
            )
        time.sleep(0.5)


def cpu_times():
    """The machine's CPU counters (/proc/stat is not per container): user .. steal, in clock ticks."""
    with open("/proc/stat", encoding="ascii") as stat:
        return [int(value) for value in stat.readline().split()[1:9]]


def steal_share(before, after):
    """The share of CPU time the hypervisor gave to other guests between two cpu_times() readings."""
    delta = [b - a for a, b in zip(before, after, strict=False)]
    return delta[7] / max(sum(delta), 1)


def timed(run, *args):
    before = cpu_times()
    result = run(*args)
    return {**result, "steal": steal_share(before, cpu_times())}


def host_of(worker_name):
    return (worker_name or "unknown").rpartition("@")[2]


def celery_run(n, queue, timeout):
    """n `add` tasks over one pooled producer, as fetcher.demo sends; every result read back in send order."""
    from fetcher.app import app
    from fetcher.tasks import add

    started = time.monotonic()
    with app.producer_or_acquire() as producer:
        results = [add.apply_async((i, i), queue=queue, producer=producer) for i in range(n)]
    sent = time.monotonic()
    deadline = started + timeout
    for i, result in enumerate(results):
        try:
            value = result.get(timeout=max(min(deadline - time.monotonic(), STALL_SECONDS), 0.1))
        except CeleryTimeout:
            raise SystemExit(
                f"bench: Celery run: no result for add({i}, {i}) in time (is the {queue} queue's worker running?)"
            ) from None
        if value != 2 * i:
            raise SystemExit(f"bench: add({i}, {i}) returned {value!r}")
    done = time.monotonic()
    hosts = Counter(host_of(result.worker) for result in results)
    for result in results:
        result.forget()
    return {"seconds": done - started, "send_seconds": sent - started, "hosts": dict(hosts)}


def raw_run(conf, n, exchange, timeout):
    """n persistent confirmed messages to bench.raw; every reply read back on a second connection."""
    name = f"bench.reply.{uuid.uuid4()}"
    replies = {}
    with connection(conf) as publish_conn, connection(conf) as reply_conn:
        reply_channel = reply_conn.channel()
        queue = reply_queue(conf, name)(reply_channel)
        producer = Producer(publish_conn.channel(), auto_declare=False)
        try:
            Queue(RAW_QUEUE)(publish_conn.channel()).queue_declare(passive=True)
        except publish_conn.channel_errors:
            raise SystemExit(f"bench: {RAW_QUEUE} is gone (deleted by an interrupted bench?)") from None
        started = time.monotonic()
        queue.declare()
        for i in range(n):
            producer.publish(
                [i, i],
                exchange=exchange,
                routing_key=RAW_KEY,
                delivery_mode=2,
                serializer="json",
                reply_to=name,
                correlation_id=str(i),
            )
        sent = time.monotonic()

        def on_reply(body, message):
            replies[int(message.properties["correlation_id"])] = body

        with Consumer(reply_channel, [queue], callbacks=[on_reply], no_ack=True, accept=["json"]):
            deadline = started + timeout
            while len(replies) < n:
                try:
                    reply_conn.drain_events(timeout=max(min(deadline - time.monotonic(), STALL_SECONDS), 0.1))
                except TimeoutError:
                    raise SystemExit(
                        f"bench: raw run: only {len(replies)} of {n} replies, none for a while "
                        f"(is {RAW_QUEUE} gone, or its consumers?)"
                    ) from None
        done = time.monotonic()
        queue.delete()
    for i in range(n):
        if replies[i]["result"] != 2 * i:
            raise SystemExit(f"bench: raw reply {i} is {replies[i]!r}")
    hosts = Counter(reply["host"] for reply in replies.values())
    return {"seconds": done - started, "send_seconds": sent - started, "hosts": dict(hosts)}


def summary(side, run, n):
    hosts = ", ".join(f"{host} {count}" for host, count in sorted(run["hosts"].items()))
    return (
        f"{side:<6} {n} in {run['seconds']:6.2f} s = {n / run['seconds']:7.1f}/s "
        f"(sending {run['send_seconds']:.2f} s; served by {hosts}; CPU steal {run['steal']:.0%})"
    )


def measure(args):
    conf = settings()
    queue = queue_for(conf.routing, args.routing_key)
    exchange = conf.routing.exchange
    with connection(conf) as conn:
        conn.connect()
        server = conn.connection.server_properties
        broker = f"{server.get('product', '?')} {server.get('version', '?')}"
        _, backlog, _ = Queue(queue, no_declare=True)(conn.default_channel).queue_declare(passive=True)
        say(f"waiting for {args.consumers} raw consumers on {RAW_QUEUE}")
        wait_for_consumers(conn, args.consumers)
    if backlog:
        say(f"note: {queue} already holds {backlog} messages; the first Celery run waits behind them")
    say(f"warm-up: {args.warmup} Celery tasks and {args.warmup} raw messages (not counted)")
    celery_run(args.warmup, queue, args.timeout)
    raw_run(conf, args.warmup, exchange, args.timeout)
    runs = []
    for number in range(1, args.runs + 1):
        # Alternate which side goes first, so a slow drift of the machine does not favour one of them.
        order = ("celery", "raw") if number % 2 else ("raw", "celery")
        row = {}
        for side in order:
            row[side] = (
                timed(celery_run, args.tasks, queue, args.timeout)
                if side == "celery"
                else timed(raw_run, conf, args.tasks, exchange, args.timeout)
            )
            say(f"run {number}/{args.runs}: {summary(side, row[side], args.tasks)}")
        runs.append(row)
    with connection(conf) as conn:
        producer = Producer(conn.channel(), auto_declare=False)
        for _ in range(args.consumers):
            producer.publish(
                "stop",
                exchange=exchange,
                routing_key=RAW_KEY,
                delivery_mode=2,
                serializer="json",
                headers={STOP_HEADER: True},
            )
    rates = {side: [args.tasks / row[side]["seconds"] for row in runs] for side in ("celery", "raw")}
    steal = {side: [row[side]["steal"] for row in runs] for side in ("celery", "raw")}
    # Each run's ratio compares two neighbouring measurements, so a drift of the machine cancels out.
    ratios = [celery / raw for celery, raw in zip(rates["celery"], rates["raw"], strict=False)]
    print(
        json.dumps(
            {
                "routing_key": args.routing_key,
                "queue": queue,
                "tasks": args.tasks,
                "broker": broker,
                "runs": runs,
                "rates": rates,
                "ratios": ratios,
                "steal": steal,
                "median": {
                    **{side: statistics.median(values) for side, values in rates.items()},
                    "ratio": statistics.median(ratios),
                },
            }
        )
    )
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("describe").set_defaults(func=describe)
    commands.add_parser("delete").set_defaults(func=delete)
    command = commands.add_parser("declare")
    command.add_argument("--leader", required=True, help="inventory name of the node to declare through")
    command.add_argument("--like", required=True, help="the Celery queue whose arguments to copy")
    command.set_defaults(func=declare)
    command = commands.add_parser("consume")
    command.add_argument("--processes", type=int, required=True)
    command.add_argument("--idle-timeout", type=float, default=600.0)
    command.set_defaults(func=consume)
    command = commands.add_parser("measure")
    command.add_argument("--routing-key", required=True)
    command.add_argument("--consumers", type=int, required=True, help="raw consumer processes to wait for")
    command.add_argument("--tasks", type=int, default=2000)
    command.add_argument("--warmup", type=int, default=500)
    command.add_argument("--runs", type=int, default=3)
    command.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take")
    command.set_defaults(func=measure)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
