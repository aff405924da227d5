"""`fetcher-metrics`: this host's app metrics for Prometheus, on `[metrics] address:port`, path `/metrics`.

A service of its own beside the worker, rather than an HTTP server inside it: the worker is many processes
(prefork), and each writes its metrics into a file of its own (`fetcher.metrics`). This process adds them up at
each scrape, those of the worker's processes (`<directory>/worker`) and of beat's (`<directory>/beat`), with
prometheus_client's own merge, and adds the host's API allowance read from the quota's SQLite file, the shared
truth with nothing to add up. It needs no PROMETHEUS_MULTIPROC_DIR of its own: it is told where to read. It runs as
the app's service user, which can read the configuration file, the quota file and the metrics files, and it
creates the two directories if they are missing, so it can start before the worker (which then writes there).

Who may read: loopback, and the addresses, networks and host names of `[metrics] allow`; anyone else gets 403
and nothing more. A host name is looked up when an address that nothing else admits asks (so a scraper that
moved is found again), at most every `RESOLVE_INTERVAL` seconds. Standard library HTTP (ThreadingHTTPServer):
one GET per scrape needs no more. It logs one line at start, and after that only failures and refused clients
(the first request of each).
"""

import argparse
import glob
import ipaddress
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from fetcher import logs
from fetcher.config_reader import ConfigError
from fetcher.quota import QuotaCounter, QuotaStatus
from fetcher.settings import QuotaSettings, Settings, config_path, load_settings

logger = logging.getLogger("fetcher.metrics")

PATH = "/metrics"
# Seconds between two look-ups of allow's host names (each made for an address nothing else admits).
RESOLVE_INTERVAL = 10.0
# The header of a multiprocess file (prometheus_client's MmapedDict: bytes used, padding): a shorter one is new.
FILE_HEADER = 8
# Refused addresses logged (the first request of each), at most.
MAX_LOGGED_REFUSALS = 256

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProcessFiles:
    """What the worker's and beat's processes recorded: the multiprocess files of both directories, merged.

    The same merge as prometheus_client's MultiProcessCollector, over the files of both directories at once, so a
    metric written under both (an embedded beat, `worker -B`) is still one family, as Prometheus requires.
    """

    def __init__(self, directories: Iterable[Path]) -> None:
        self.directories = tuple(directories)

    def collect(self) -> Iterable[Metric]:
        try:
            return MultiProcessCollector.merge(self._files(), accumulate=True)
        except FileNotFoundError:
            # A unit emptied its directory (at its start) between the listing and the reading: list again.
            return MultiProcessCollector.merge(self._files(), accumulate=True)

    def _files(self) -> list[str]:
        # prometheus_client creates a file empty and only then gives it its size and header: a file read in between,
        # or left so by a process killed in between, holds nothing yet and would fail the whole merge.
        files = []
        for directory in self.directories:
            for name in glob.glob(str(directory / "*.db")):
                try:
                    if os.stat(name).st_size >= FILE_HEADER:
                        files.append(name)
                except FileNotFoundError:
                    pass
        return sorted(files)


class QuotaCollector:
    """The host's API allowance, read at each scrape from the quota's file (read-only; none yet: nothing used)."""

    def __init__(self, quota: QuotaSettings, clock: Callable[[], float] = time.time) -> None:
        self.quota = quota
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        quota = self.quota
        # A counter per scrape: a SQLite connection must stay in its thread, and each scrape has a thread.
        counter = QuotaCounter(quota.state_file, quota.allowance, quota.window, self.clock, read_only=True)
        try:
            status = counter.status() if quota.state_file.exists() else None
        finally:
            counter.close()
        if status is None:  # no call made on this host yet: the worker creates the file with its first
            start = counter.window_start()
            status = QuotaStatus(quota.allowance, 0, start, start + quota.window, None, None, None)
        consuming = status.worker_consuming()
        paused = 0.0
        if status.consuming is False and status.consuming_since is not None:
            paused = max(self.clock() - status.consuming_since, 0.0)
        for name, documentation, value in (
            (
                "fetcher_api_allowance_calls",
                "API calls this host may make per window ([quota] allowance)",
                quota.allowance,
            ),
            ("fetcher_api_window_seconds", "Length of the API allowance's window in seconds", quota.window),
            ("fetcher_api_calls_used", "API calls taken from the allowance in the current window", status.used),
            ("fetcher_api_calls_remaining", "API calls left in the current window", status.remaining),
            (
                "fetcher_api_window_reset_timestamp_seconds",
                "When the current window ends, in Unix time",
                status.reset_at,
            ),
            (
                "fetcher_api_quota_consuming",
                "1 while the worker consumes its quota queues, else 0 (allowance spent, or no worker)",
                int(consuming),
            ),
            (
                "fetcher_api_quota_paused_seconds",
                "Seconds since the worker stopped consuming its quota queues; 0 while it consumes or unknown",
                paused,
            ),
        ):
            yield GaugeMetricFamily(name, documentation, value=value)
        # Per quota queue: a queue whose every host has spent its allowance waits for a reset, not for a worker
        # (the rule QueueWithoutConsumers leaves it alone).
        spent = GaugeMetricFamily(
            "fetcher_api_allowance_spent",
            "1 while this host's allowance is spent: it does not consume this quota queue until the reset",
            labels=["queue"],
        )
        for queue in quota.queues:
            spent.add_metric([queue], int(status.remaining == 0))
        yield spent


def registry_for(settings: Settings, clock: Callable[[], float] = time.time) -> CollectorRegistry:
    """Everything `/metrics` shows: the processes' files, and the allowance on a host with `[quota]`.

    The two directories are created if missing (a warning if they cannot be: the worker creates its own too).
    """
    metrics = settings.metrics
    directories = (metrics.worker_directory, metrics.beat_directory)
    for directory in directories:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.warning("Cannot create %s (%s): its metrics appear once a process creates it", directory, exc)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProcessFiles(directories))
    if settings.quota is not None:
        registry.register(QuotaCollector(settings.quota, clock))
    return registry


def client_address(address: str) -> Address | None:
    """A client's address as the socket gives it, an IPv4 client of a dual-stack socket as IPv4; None if not one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_allowed(address: str, networks: Iterable[Network]) -> bool:
    """Whether `address` may read: loopback always, else only within one of `networks`."""
    ip = client_address(address)
    return ip is not None and (ip.is_loopback or any(ip in network for network in networks))


def resolve(name: str) -> set[Address]:
    """The addresses a host name has (the system's resolver: /etc/hosts, DNS)."""
    found = set()
    for *_, sockaddr in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
        ip = client_address(str(sockaddr[0]))
        if ip is not None:
            found.add(ip)
    return found


class Access:
    """Who may read: loopback, `networks`, and the addresses `host_names` had when they were last looked up."""

    def __init__(
        self,
        networks: Iterable[Network],
        host_names: Iterable[str] = (),
        resolver: Callable[[str], set[Address]] = resolve,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.networks = tuple(networks)
        self.host_names = tuple(host_names)
        self._resolver = resolver
        self._clock = clock
        self._lock = threading.Lock()
        self._resolved: set[Address] = set()
        self._looked_up: float | None = None
        self._unresolved: set[str] = set()

    def permits(self, address: str) -> bool:
        if address_allowed(address, self.networks):
            return True
        ip = client_address(address)
        if ip is None or not self.host_names:
            return False
        with self._lock:
            if ip in self._resolved:
                return True
            now = self._clock()
            if self._looked_up is not None and now - self._looked_up < RESOLVE_INTERVAL:
                return False
            self._looked_up = now
            self._resolved = self._look_up()
            return ip in self._resolved

    def _look_up(self) -> set[Address]:
        found: set[Address] = set()
        for name in self.host_names:
            try:
                found |= self._resolver(name)
            except OSError as exc:
                if name not in self._unresolved:
                    logger.warning("[metrics] allow: cannot look up %s (%s)", name, exc)
                self._unresolved.add(name)
            else:
                self._unresolved.discard(name)
        return found


class MetricsServer(ThreadingHTTPServer):
    """`/metrics` to the clients `access` permits, over IPv4 or IPv6 as the listen address is."""

    daemon_threads = True

    def __init__(self, address: str, port: int, registry: CollectorRegistry, access: Access) -> None:
        self.address_family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        self.registry = registry
        self.access = access
        self._refused: set[str] = set()
        super().__init__((address, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own looks up the listen address's FQDN, which can hang on DNS; nothing here needs it.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 clients too
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def refused(self, address: str) -> None:
        if address not in self._refused and len(self._refused) < MAX_LOGGED_REFUSALS:
            self._refused.add(address)
            logger.warning("Refused %s: not loopback, nor in [metrics] allow (403; logged once per address)", address)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def version_string(self) -> str:
        return "fetcher-metrics"

    def parse_request(self) -> bool:
        # Before any method is dispatched: a client that may not read gets a bare 403, whatever it asked.
        if not super().parse_request():
            return False
        address = self.client_address[0]
        if self.server.access.permits(address):
            return True
        self.server.refused(address)
        self._reply(HTTPStatus.FORBIDDEN)
        return False

    def do_GET(self) -> None:
        if urlsplit(self.path).path != PATH:
            self._reply(HTTPStatus.NOT_FOUND, b"Not found: the metrics are at /metrics\n")
            return
        # The format Prometheus asks for (OpenMetrics, or the text format), as prometheus_client's own server does.
        encode, content_type = choose_encoder(self.headers.get("Accept"))
        try:
            body = encode(self.server.registry)
        except Exception:
            logger.exception("Collecting the metrics failed")
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, b"Collecting the metrics failed (see the service's log)\n")
            return
        self._reply(HTTPStatus.OK, body, content_type)

    def _reply(self, status: HTTPStatus, body: bytes = b"", content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        if status != HTTPStatus.FORBIDDEN:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # a line per scrape would fill the journal; refusals and failures are logged where they happen


def make_server(settings: Settings, clock: Callable[[], float] = time.time) -> MetricsServer:
    """The server for the host's `[metrics]` (which must be set), bound and ready to serve."""
    metrics = settings.metrics
    access = Access(metrics.networks, metrics.host_names)
    return MetricsServer(metrics.address, metrics.port, registry_for(settings, clock), access)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetcher-metrics", description=__doc__.splitlines()[0].strip("`"))
    parser.parse_args(argv)
    try:
        settings = load_settings(config_path())
    except ConfigError as exc:
        print(f"fetcher-metrics: {exc}", file=sys.stderr)
        return 2
    metrics = settings.metrics
    if metrics is None:
        print(f"fetcher-metrics: no [metrics] in {settings.source}: nothing to serve", file=sys.stderr)
        return 2
    logs.configure(settings.logging, None)
    try:
        server = make_server(settings)
    except OSError as exc:
        print(f"fetcher-metrics: cannot listen on {metrics.address} port {metrics.port}: {exc}", file=sys.stderr)
        return 1
    # systemd stops it with SIGTERM: leave serve_forever through its finally, closing the socket.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logger.info(
        "fetcher-metrics serving http://%s:%d%s to loopback%s; reading %s and %s%s",
        metrics.address,
        metrics.port,
        PATH,
        "".join(f", {entry}" for entry in metrics.allow),
        metrics.worker_directory,
        metrics.beat_directory,
        f" and the API allowance in {settings.quota.state_file}" if settings.quota is not None else "",
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
