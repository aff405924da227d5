"""The host's configuration file, `/etc/fetcher/fetcher.toml`, as a validated, immutable object.

Ansible renders one such file per host (mode 0640): it is the only place the broker password and the API
token live, so they never appear in process arguments or the environment. Everything is validated when
the file is loaded, so a wrong file stops the worker at start with a message naming the key, rather than
failing on the first message. The secrets are excluded from the objects' repr so that logging or printing
the settings cannot disclose them.
"""

import dataclasses
import ipaddress
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetcher.config_reader import ConfigError, Table

DEFAULT_PATH = Path("/etc/fetcher/fetcher.toml")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# A host name as [metrics] allow may name a scraper: RFC 1123 labels, and `_` as inventory names may have it; an
# all-digit last label is refused, so a mistyped IPv4 address (10.0.0.256) is an error, not a name never found.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


@dataclass(frozen=True)
class BrokerSettings:
    """Every RabbitMQ cluster node as `host:port`, in failover order, and how to log in."""

    hosts: tuple[str, ...]
    vhost: str
    user: str
    password: str = field(repr=False)
    heartbeat: int
    connect_timeout: float
    # The CA that signed the nodes' certificates: set, the worker connects over TLS and checks them.
    ca_file: str | None = None


@dataclass(frozen=True)
class ResultSettings:
    """Where task results go and how long they are kept."""

    backend: str
    expires: int


@dataclass(frozen=True)
class QueueSettings:
    """One host's queue and the exact routing key bound to it."""

    name: str
    routing_key: str


@dataclass(frozen=True)
class RoutingSettings:
    """The task exchange, every host's queue, which of them this host consumes, and dead-lettering."""

    exchange: str
    exchange_type: str
    own_queue: str
    consume: tuple[str, ...]
    dead_letter_exchange: str
    dead_letter_queue: str
    delivery_limit: int
    queues: tuple[QueueSettings, ...]

    @property
    def own_routing_key(self) -> str:
        """The routing key of this host's own queue: the default for tasks sent from this host."""
        return next(queue.routing_key for queue in self.queues if queue.name == self.own_queue)


@dataclass(frozen=True)
class WorkerSettings:
    """Worker pool size, prefetch, time limits and the retry policy of tasks that retry."""

    concurrency: int
    prefetch_multiplier: int
    time_limit: int
    soft_time_limit: int
    max_retries: int
    retry_backoff_max: int
    # A pool process is replaced after this many tasks, or above this many KiB after a task; 0: never.
    max_tasks_per_child: int = 0
    max_memory_per_child: int = 0


@dataclass(frozen=True)
class LoggingSettings:
    """Level and `logging` format strings for the worker's and beat's log files."""

    level: str
    format: str
    datefmt: str


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP API that `call_api` reads from."""

    base_url: str
    token: str = field(repr=False)
    timeout: float
    max_reset_wait: int


@dataclass(frozen=True)
class QuotaSettings:
    """This host's API allowance: `allowance` calls per `window` seconds, counted in `state_file`.

    Windows are fixed and aligned to the Unix epoch (hourly windows start on the hour), like the API's own.
    `queues` are the queues whose messages are API calls: the worker stops consuming them while the
    allowance is spent and starts again when the window rolls over.
    """

    allowance: int
    window: int
    queues: tuple[str, ...]
    state_file: Path


@dataclass(frozen=True)
class MetricsSettings:
    """`fetcher-metrics`: where it listens, who may read it, and where the app's processes write their metrics.

    The worker's processes write theirs under `directory/worker`, beat's under `directory/beat` (their units set
    PROMETHEUS_MULTIPROC_DIR to those); the exporter reads both. `allow` holds IPv4/IPv6 addresses, CIDR networks
    and host names (looked up when an address that matches nothing else asks); loopback may always read.
    """

    port: int
    address: str
    allow: tuple[str, ...]
    directory: Path

    @property
    def worker_directory(self) -> Path:
        return self.directory / "worker"

    @property
    def beat_directory(self) -> Path:
        return self.directory / "beat"

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The addresses and networks of `allow` (an address is a network of one)."""
        return tuple(network for entry in self.allow if (network := _network(entry)) is not None)

    @property
    def host_names(self) -> tuple[str, ...]:
        """The host names of `allow`."""
        return tuple(entry for entry in self.allow if _network(entry) is None)


@dataclass(frozen=True)
class ScheduleEntry:
    """One periodic task for beat: run `task` every `every` seconds with these arguments."""

    name: str
    task: str
    every: float
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class Settings:
    """The whole file; `source` is kept so later errors (e.g. a missing [api]) can name it."""

    source: Path
    node: str
    broker: BrokerSettings
    result: ResultSettings
    routing: RoutingSettings
    worker: WorkerSettings
    logging: LoggingSettings
    api: ApiSettings | None
    quota: QuotaSettings | None
    schedule: tuple[ScheduleEntry, ...]
    metrics: MetricsSettings | None = None

    @property
    def worker_name(self) -> str:
        """The Celery node name this host's worker runs under."""
        return f"fetcher@{self.node}"


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """The configuration file: `FETCHER_CONFIG` if set, else the path the Ansible role writes."""
    return Path(environ.get("FETCHER_CONFIG") or DEFAULT_PATH)


def beat_config_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Beat's schedule file, `FETCHER_BEAT_CONFIG`: set only in beat's unit, on the one host that runs beat.

    The schedule lives apart from the main file so that changing it restarts beat, not every worker.
    """
    value = environ.get("FETCHER_BEAT_CONFIG")
    return Path(value) if value else None


def load_settings(path: Path, beat_path: Path | None = None) -> Settings:
    """Read and validate the file, raising ConfigError with a message that names file and key.

    With `beat_path`, the `[[beat.schedule]]` entries come from that file instead.
    """
    settings = parse_settings(_read_table(path, "FETCHER_CONFIG"), path)
    if beat_path is None:
        return settings
    top = _read_table(beat_path, "FETCHER_BEAT_CONFIG")
    schedule = _schedule(top.table("beat")) if top.has("beat") else ()
    top.finish()
    return dataclasses.replace(settings, schedule=schedule)


def _read_table(path: Path, variable: str) -> Table:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (set {variable} to use another path)") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable by this user (it should be group-readable, mode 0640)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return Table(data, "", path)


def parse_settings(top: Table, source: Path) -> Settings:
    """Build the settings from the top-level table, validating every key and refusing unknown ones."""
    settings = Settings(
        source=source,
        node=top.string("node"),
        broker=_broker(top.table("broker")),
        result=_result(top.table("result")),
        routing=_routing(top.table("routing")),
        worker=_worker(top.table("worker")),
        logging=_logging(top.table("logging")),
        api=_api(top.table("api")) if top.has("api") else None,
        quota=None,
        schedule=_schedule(top.table("beat")) if top.has("beat") else (),
        metrics=_metrics(top.table("metrics")) if top.has("metrics") else None,
    )
    if top.has("quota"):
        settings = dataclasses.replace(settings, quota=_quota(top.table("quota"), settings))
    top.finish()
    return settings


def _broker(table: Table) -> BrokerSettings:
    hosts = table.strings("hosts")
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise table.error("hosts", "entries must be host:port, with a port from 1 to 65535")
    broker = BrokerSettings(
        hosts=hosts,
        vhost=table.string("vhost"),
        user=table.string("user"),
        password=table.string("password"),
        heartbeat=table.integer("heartbeat", minimum=0),
        connect_timeout=table.positive_number("connect_timeout"),
        ca_file=table.string("ca_file") if table.has("ca_file") else None,
    )
    table.finish()
    return broker


def _result(table: Table) -> ResultSettings:
    result = ResultSettings(backend=table.string("backend"), expires=table.integer("expires", minimum=1))
    table.finish()
    return result


def _routing(table: Table) -> RoutingSettings:
    queues = tuple(_queue(entry) for entry in table.tables("queues", required=True))
    names = [queue.name for queue in queues]
    keys = [queue.routing_key for queue in queues]
    if len(set(names)) != len(names):
        raise table.error("queues", "must not repeat a queue name")
    if len(set(keys)) != len(keys):
        raise table.error("queues", "must not repeat a routing key")
    routing = RoutingSettings(
        exchange=table.string("exchange"),
        exchange_type=table.choice(
            "exchange_type",
            ("topic",),
            why="quorum queues' delayed delivery (countdown, ETA, retry backoff) needs a topic exchange",
        ),
        own_queue=table.string("own_queue"),
        consume=table.strings("consume"),
        dead_letter_exchange=table.string("dead_letter_exchange"),
        dead_letter_queue=table.string("dead_letter_queue"),
        delivery_limit=table.integer("delivery_limit", minimum=1),
        queues=queues,
    )
    if routing.own_queue not in names:
        raise table.error("own_queue", "is not the name of a [[routing.queues]] entry")
    for index, name in enumerate(routing.consume):
        if name not in names:
            raise table.error(f"consume[{index}]", "is not the name of a [[routing.queues]] entry")
    if routing.dead_letter_queue in names:
        raise table.error("dead_letter_queue", "must not be one of the [[routing.queues]] names")
    if routing.dead_letter_exchange == routing.exchange:
        raise table.error("dead_letter_exchange", "must differ from routing.exchange")
    table.finish()
    return routing


def _queue(table: Table) -> QueueSettings:
    queue = QueueSettings(name=table.string("name"), routing_key=table.string("routing_key"))
    if "*" in queue.routing_key or "#" in queue.routing_key:
        raise table.error("routing_key", "must be an exact key, without the topic wildcards * and #")
    table.finish()
    return queue


def _worker(table: Table) -> WorkerSettings:
    worker = WorkerSettings(
        concurrency=table.integer("concurrency", minimum=1),
        prefetch_multiplier=table.integer("prefetch_multiplier", minimum=1),
        time_limit=table.integer("time_limit", minimum=1),
        soft_time_limit=table.integer("soft_time_limit", minimum=1),
        max_retries=table.integer("max_retries", minimum=0),
        retry_backoff_max=table.integer("retry_backoff_max", minimum=1),
        max_tasks_per_child=table.integer("max_tasks_per_child", minimum=0),
        max_memory_per_child=table.integer("max_memory_per_child", minimum=0),
    )
    if worker.soft_time_limit >= worker.time_limit:
        raise table.error("soft_time_limit", "must be less than worker.time_limit")
    table.finish()
    return worker


def _logging(table: Table) -> LoggingSettings:
    settings = LoggingSettings(
        level=table.choice("level", LOG_LEVELS),
        format=table.string("format"),
        datefmt=table.string("datefmt"),
    )
    try:
        logging.Formatter(settings.format)
    except ValueError:
        raise table.error("format", "is not a valid logging %-style format") from None
    table.finish()
    return settings


def _api(table: Table) -> ApiSettings:
    api = ApiSettings(
        base_url=table.string("base_url").rstrip("/"),
        token=table.string("token"),
        timeout=table.positive_number("timeout"),
        max_reset_wait=table.integer("max_reset_wait", minimum=1),
    )
    if not api.base_url.startswith(("http://", "https://")):
        raise table.error("base_url", "must start with http:// or https://")
    table.finish()
    return api


def _quota(table: Table, settings: Settings) -> QuotaSettings:
    quota = QuotaSettings(
        allowance=table.integer("allowance", minimum=1),
        window=table.integer("window", minimum=1),
        queues=table.strings("queues"),
        state_file=Path(table.string("state_file")),
    )
    if settings.api is None:
        raise table.error("allowance", "limits API calls, but there is no [api] section")
    for index, name in enumerate(quota.queues):
        if name == settings.routing.own_queue:
            raise table.error(f"queues[{index}]", "is this host's own queue, which must keep flowing")
        if name not in settings.routing.consume:
            raise table.error(f"queues[{index}]", "is not one of routing.consume (this host must consume it)")
    if not quota.state_file.is_absolute():
        raise table.error("state_file", "must be an absolute path")
    table.finish()
    return quota


def _metrics(table: Table) -> MetricsSettings:
    metrics = MetricsSettings(
        port=table.integer("port", minimum=1, maximum=65535),
        address=table.string("address"),
        allow=table.strings("allow", empty=True),
        directory=Path(table.string("directory")),
    )
    try:
        ipaddress.ip_address(metrics.address)
    except ValueError:
        raise table.error("address", "must be an IPv4 or IPv6 address to listen on (0.0.0.0 or :: for all)") from None
    for index, entry in enumerate(metrics.allow):
        if _network(entry) is None and not _is_host_name(entry):
            raise table.error(
                f"allow[{index}]", "must be an IPv4 or IPv6 address, a network (CIDR, no host bits set) or a host name"
            )
    if not metrics.directory.is_absolute():
        raise table.error("directory", "must be an absolute path")
    table.finish()
    return metrics


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An address or CIDR network of [metrics] allow, or None for anything else (a host name)."""
    try:
        return ipaddress.ip_network(entry, strict=True)
    except ValueError:
        return None


def _is_host_name(entry: str) -> bool:
    return len(entry) <= 253 and bool(_HOST_NAME.fullmatch(entry)) and not entry.rstrip(".").split(".")[-1].isdigit()


def _schedule(beat: Table) -> tuple[ScheduleEntry, ...]:
    entries = []
    for table in beat.tables("schedule", required=False):
        entries.append(
            ScheduleEntry(
                name=table.string("name"),
                task=table.string("task"),
                every=table.positive_number("every"),
                args=table.array("args"),
                kwargs=table.mapping("kwargs"),
            )
        )
        table.finish()
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise beat.error("schedule", "must not repeat an entry name")
    beat.finish()
    return tuple(entries)
