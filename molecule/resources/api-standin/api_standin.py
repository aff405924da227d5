#!/usr/bin/python3
"""The API stand-in: a small HTTP service that behaves like a rate-limited REST API. Test tooling only.

It imitates the per-token quotas of APIs such as GitHub's or Twitter's: every caller presents a bearer token,
each token has its own allowance per fixed window, and every answer says where the caller stands in
`X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (epoch seconds). A call past the
allowance gets HTTP 429 with `Retry-After`. Windows are aligned to the Unix epoch: the window of time `t`
starts at `floor(t / window) * window` and resets `window` seconds later, so whoever looks at the clock
can tell which window a call fell in. Rejected calls do not use up the allowance.

It also records every call, so tests can check afterwards that the callers stayed within their quotas:

    GET /items/{item}      Authorization: Bearer <token>  -> 200 {"item", "caller", "window"}, 429 or 401
    GET /calls[?since=t]   every /items call in order: {"t", "caller", "item", "status", "window"} (no 401s)
    GET /stats             per caller, per window: {"ok", "limited", "first", "last"}
    GET /health            {"ok": true}

Run it as `python3 api_standin.py --config /etc/api-standin/config.json` (standard library only, so
Debian's python3 runs it on a bare host); `--check-config FILE` only validates a configuration file. The
configuration (JSON):

    {"listen": "0.0.0.0", "port": 8080, "window": 20, "latency_ms": 0,
     "tokens": [{"name": "server", "token": "<secret>", "allowance": 20}, ...]}

The tokens are secrets: they are never logged, never echoed in an answer, and an invalid configuration is
reported by key, never by value. A caller is known by its token's name. Everything lives in memory (the
record of calls grows for as long as the process runs), which suits a test run and nothing longer.

In tests, `StandIn` holds the configuration and the counters with an injectable clock, and
`make_server(standin, "127.0.0.1", 0)` serves it from a `ThreadingHTTPServer` on a free port.
"""

import argparse
import json
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

CONFIG_KEYS = {"listen", "port", "window", "latency_ms", "tokens"}
TOKEN_KEYS = {"name", "token", "allowance"}


class ConfigError(Exception):
    """An invalid configuration; the message names the key, never a value."""


@dataclass(frozen=True)
class Caller:
    name: str
    token: str
    allowance: int

    def __repr__(self) -> str:  # the token stays out of any repr
        return f"Caller(name={self.name!r}, allowance={self.allowance})"


@dataclass(frozen=True)
class Config:
    listen: str
    port: int
    window: int
    latency_ms: float
    callers: tuple[Caller, ...]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_config(data: Any) -> Config:
    """The configuration as read from JSON, validated. Raises ConfigError naming the offending key."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a JSON object")
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(unknown)}")
    listen = data.get("listen", "0.0.0.0")
    if not isinstance(listen, str) or not listen:
        raise ConfigError("listen must be a host address")
    port = data.get("port", 8080)
    if not _is_int(port) or not 0 <= port <= 65535:
        raise ConfigError("port must be an integer from 0 to 65535")
    window = data.get("window")
    if not _is_int(window) or window < 1:
        raise ConfigError("window must be an integer number of seconds, at least 1")
    latency_ms = data.get("latency_ms", 0)
    if not isinstance(latency_ms, int | float) or isinstance(latency_ms, bool) or not 0 <= latency_ms < math.inf:
        raise ConfigError("latency_ms must be a number of milliseconds, at least 0")
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ConfigError("tokens must be a non-empty list")
    callers: list[Caller] = []
    for index, entry in enumerate(tokens):
        where = f"tokens[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be an object with name, token and allowance")
        unknown = sorted(set(entry) - TOKEN_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s): {', '.join(unknown)}")
        name, token, allowance = entry.get("name"), entry.get("token"), entry.get("allowance")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name must be a non-empty string")
        if not isinstance(token, str) or not token or token != token.strip() or " " in token:
            raise ConfigError(f"{where}.token (of {name}) must be a non-empty string without spaces")
        if not _is_int(allowance) or allowance < 0:
            raise ConfigError(f"{where}.allowance (of {name}) must be an integer, at least 0")
        callers.append(Caller(name, token, allowance))
    names = [caller.name for caller in callers]
    if len(set(names)) != len(names):
        raise ConfigError("tokens: two entries have the same name")
    if len({caller.token for caller in callers}) != len(callers):
        raise ConfigError("tokens: two entries have the same token")
    return Config(listen, port, window, float(latency_ms), tuple(callers))


def load_config(path: str) -> Config:
    """Read and validate the configuration file at `path`."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        # The position only: the message of a decode error may quote the text, which holds the tokens.
        raise ConfigError(f"not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    return parse_config(data)


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, extra headers and a JSON-serialisable body."""

    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


def _stdout_line(line: str) -> None:
    print(line, flush=True)


class StandIn:
    """The stand-in's state: the callers, their counters per window and the record of every call.

    `clock` returns the current Unix time in seconds (default `time.time`); tests pass a fake one. `log`
    receives one line per /items call (default: stdout). Counting and the decision happen under one lock,
    so concurrent calls never get more than the allowance between them.
    """

    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] = _stdout_line,
    ) -> None:
        self.config = config
        self._clock = clock
        self._log = log
        self._by_token = {caller.token: caller for caller in config.callers}
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []
        # caller name -> window start -> {"ok", "limited", "first", "last"}
        self._windows: dict[str, dict[int, dict[str, Any]]] = {caller.name: {} for caller in config.callers}

    def window_start(self, now: float) -> int:
        """Start of the fixed, epoch-aligned window that contains `now`."""
        return math.floor(now / self.config.window) * self.config.window

    def _caller(self, authorization: str | None) -> Caller | None:
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._by_token.get(token.strip())

    def get_item(self, authorization: str | None, item: str) -> Reply:
        """Answer `GET /items/{item}` for the given Authorization header (None when there is none)."""
        caller = self._caller(authorization)
        if caller is None:
            error = "missing bearer token" if not authorization else "unknown token"
            self._log(f"caller=- item={json.dumps(item)} status=401 ({error})")
            return Reply(401, {"error": error}, (("WWW-Authenticate", 'Bearer realm="api-standin"'),))
        with self._lock:
            now = self._clock()
            start = self.window_start(now)
            reset = start + self.config.window
            counts = self._windows[caller.name].setdefault(start, {"ok": 0, "limited": 0, "first": now, "last": now})
            counts["last"] = now
            allowed = counts["ok"] < caller.allowance
            counts["ok" if allowed else "limited"] += 1
            remaining = caller.allowance - counts["ok"]
            status = 200 if allowed else 429
            self._calls.append({"t": now, "caller": caller.name, "item": item, "status": status, "window": start})
        headers = [
            ("X-RateLimit-Limit", str(caller.allowance)),
            ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", str(reset)),
        ]
        self._log(f"caller={caller.name} item={json.dumps(item)} status={status} remaining={remaining}")
        if allowed:
            return Reply(200, {"item": item, "caller": caller.name, "window": start}, tuple(headers))
        headers.append(("Retry-After", str(max(1, math.ceil(reset - now)))))
        return Reply(429, {"error": "rate limit exceeded"}, tuple(headers))

    def calls(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every /items call that got a 200 or a 429, in order; only those at or after `since` if given."""
        with self._lock:
            return [dict(call) for call in self._calls if since is None or call["t"] >= since]

    def stats(self) -> dict[str, Any]:
        """Per caller, per window: calls allowed, calls limited, and the time of the first and last."""
        with self._lock:
            return {
                "window": self.config.window,
                "callers": {
                    caller.name: {
                        "allowance": caller.allowance,
                        "windows": {
                            str(start): dict(counts) for start, counts in sorted(self._windows[caller.name].items())
                        },
                    }
                    for caller in self.config.callers
                },
            }


class Handler(BaseHTTPRequestHandler):
    """Routes GET requests to the server's `StandIn`; anything else is 404 or 405, always as JSON."""

    server: "StandInServer"
    server_version = "api-standin/1"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server looks for)
        standin = self.server.standin
        url = urlsplit(self.path)
        path = url.path
        item = path.removeprefix("/items/") if path.startswith("/items/") else ""
        if item and "/" not in item:
            reply = standin.get_item(self.headers.get("Authorization"), unquote(item))
            if standin.config.latency_ms:
                time.sleep(standin.config.latency_ms / 1000)
        elif path == "/calls":
            query = parse_qs(url.query)
            since = None
            if "since" in query:
                try:
                    since = float(query["since"][-1])
                except ValueError:
                    since = math.nan
                if not math.isfinite(since):
                    self._send(Reply(400, {"error": "since must be a number of seconds since the epoch"}))
                    return
            reply = Reply(200, standin.calls(since))
        elif path == "/stats":
            reply = Reply(200, standin.stats())
        elif path == "/health":
            reply = Reply(200, {"ok": True})
        else:
            reply = Reply(404, {"error": "not found"})
        self._send(reply)

    def _not_allowed(self) -> None:
        self._send(Reply(405, {"error": "method not allowed"}, (("Allow", "GET"),)))

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed  # noqa: N815

    def _send(self, reply: Reply) -> None:
        body = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
        """No access log: the stand-in logs its own line per /items call, without the token."""


class StandInServer(ThreadingHTTPServer):
    """A thread per request; a deep listen backlog, so a burst of concurrent callers is not held back."""

    request_queue_size = 128
    daemon_threads = True

    def __init__(self, address: tuple[str, int], standin: StandIn) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.standin = standin


def make_server(standin: StandIn, host: str, port: int) -> StandInServer:
    """A server for `standin` bound to host:port (port 0: any free port, see `server_address`)."""
    return StandInServer((host, port), standin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A rate-limited REST API stand-in (test tooling).")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", help="configuration file (JSON) to serve")
    group.add_argument("--check-config", metavar="FILE", help="only validate a configuration file")
    args = parser.parse_args(argv)
    path = args.config or args.check_config
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"api-standin: {path}: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.check_config:
        return 0
    standin = StandIn(config)
    try:
        server = make_server(standin, config.listen, config.port)
    except OSError as exc:
        print(
            f"api-standin: cannot listen on {config.listen}:{config.port}: {exc.strerror}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    # systemd stops the service with SIGTERM: leave serve_forever and close the socket.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    callers = ", ".join(f"{caller.name} ({caller.allowance})" for caller in config.callers)
    host, port = server.server_address[:2]
    _stdout_line(f"api-standin listening on {host}:{port}, window {config.window} s, allowances: {callers}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
