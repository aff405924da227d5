"""The API stand-in (molecule/resources/api-standin/api_standin.py), served in-process over real HTTP.

Each test runs the stand-in on 127.0.0.1 on a free port in a thread, with a fake clock it moves by hand,
so window arithmetic is exact and nothing waits for real time to pass. Every line the stand-in logs and
every body it answers is checked for the tokens, which must never appear.
"""

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

SCRIPT = Path(__file__).resolve().parents[2] / "molecule" / "resources" / "api-standin" / "api_standin.py"
spec = importlib.util.spec_from_file_location("api_standin", SCRIPT)
api_standin = importlib.util.module_from_spec(spec)
sys.modules["api_standin"] = api_standin
spec.loader.exec_module(api_standin)

WINDOW = 20
# 1_700_000_000 is a multiple of 20: the clock starts 3.5 s into a window that resets 16.5 s later.
START = 1_700_000_000
T0 = START + 3.5
SERVER_TOKEN = "srv-7f3a9c1e5b2d4f60"
LAPTOP_TOKEN = "lap-0d9e8c7b6a5f4e31"
UNKNOWN_TOKEN = "nobody-11223344556677"
TOKENS = (SERVER_TOKEN, LAPTOP_TOKEN, UNKNOWN_TOKEN)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_config(server_allowance=3, laptop_allowance=2, latency_ms=0):
    return api_standin.parse_config(
        {
            "listen": "127.0.0.1",
            "port": 0,
            "window": WINDOW,
            "latency_ms": latency_ms,
            "tokens": [
                {"name": "server", "token": SERVER_TOKEN, "allowance": server_allowance},
                {"name": "laptop", "token": LAPTOP_TOKEN, "allowance": laptop_allowance},
            ],
        }
    )


class Running:
    """A stand-in served in a thread: its base URL, its fake clock and every line it logged."""

    def __init__(self, config):
        self.clock = FakeClock(T0)
        self.log_lines: list[str] = []
        self.bodies: list[str] = []
        self.standin = api_standin.StandIn(config, clock=self.clock, log=self.log_lines.append)
        self.server = api_standin.make_server(self.standin, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def get(self, path, token=None, headers=None):
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = requests.get(self.url + path, headers=headers, timeout=5)
        self.bodies.append(response.text)
        return response

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve():
    """serve(**config options) -> Running; afterwards, no token may appear in any body or log line."""
    running = []

    def start(**options):
        running.append(Running(make_config(**options)))
        return running[-1]

    yield start
    for instance in running:
        instance.stop()
    for instance in running:
        for token in TOKENS:
            assert not [line for line in instance.log_lines if token in line], "a token was logged"
            assert not [body for body in instance.bodies if token in body], "a token was echoed in a body"


def rate_headers(response):
    return {
        name: response.headers.get(name) for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
    }


def test_calls_within_the_allowance_get_200_with_the_rate_limit_headers(serve):
    api = serve(server_allowance=3)
    for remaining in (2, 1, 0):
        response = api.get("/items/42", SERVER_TOKEN)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {"item": "42", "caller": "server", "window": START}
        assert rate_headers(response) == {
            "X-RateLimit-Limit": "3",
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(START + WINDOW),
        }
        assert "Retry-After" not in response.headers
    assert api.log_lines == [f'caller=server item="42" status=200 remaining={n}' for n in (2, 1, 0)]


def test_a_call_past_the_allowance_gets_429_with_retry_after_until_the_reset(serve):
    api = serve(server_allowance=2)
    assert [api.get(f"/items/{n}", SERVER_TOKEN).status_code for n in range(2)] == [200, 200]
    response = api.get("/items/3", SERVER_TOKEN)
    assert response.status_code == 429
    assert response.json() == {"error": "rate limit exceeded"}
    assert rate_headers(response) == {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(START + WINDOW),
    }
    # 16.5 s until the reset, in whole seconds, rounded up.
    assert response.headers["Retry-After"] == "17"
    # Limited calls do not use up anything: still limited, never less than 1 s to wait.
    api.clock.now = START + WINDOW - 0.001
    response = api.get("/items/4", SERVER_TOKEN)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert api.log_lines[-1] == 'caller=server item="4" status=429 remaining=0'


def test_the_next_window_allows_again(serve):
    api = serve(server_allowance=1)
    assert api.get("/items/a", SERVER_TOKEN).status_code == 200
    assert api.get("/items/b", SERVER_TOKEN).status_code == 429
    # Windows are epoch-aligned: the new one starts exactly at the advertised reset.
    api.clock.now = START + WINDOW
    response = api.get("/items/c", SERVER_TOKEN)
    assert response.status_code == 200
    assert response.json()["window"] == START + WINDOW
    assert rate_headers(response) == {
        "X-RateLimit-Limit": "1",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(START + 2 * WINDOW),
    }
    assert api.get("/items/d", SERVER_TOKEN).status_code == 429
    # A gap of several windows: a fresh allowance in whichever window the clock is in.
    api.clock.now = START + 5 * WINDOW + 19.999
    response = api.get("/items/e", SERVER_TOKEN)
    assert response.status_code == 200
    assert response.json()["window"] == START + 5 * WINDOW
    assert response.headers["X-RateLimit-Reset"] == str(START + 6 * WINDOW)


def test_each_token_has_its_own_allowance(serve):
    api = serve(server_allowance=2, laptop_allowance=1)
    assert [api.get("/items/s", SERVER_TOKEN).status_code for _ in range(3)] == [200, 200, 429]
    response = api.get("/items/l", LAPTOP_TOKEN)
    assert response.status_code == 200
    assert response.json() == {"item": "l", "caller": "laptop", "window": START}
    assert rate_headers(response)["X-RateLimit-Limit"] == "1"
    assert rate_headers(response)["X-RateLimit-Remaining"] == "0"
    assert api.get("/items/l", LAPTOP_TOKEN).status_code == 429
    assert api.get("/items/s", SERVER_TOKEN).status_code == 429


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": f"Bearer {UNKNOWN_TOKEN}"}, "unknown token"),
        ({"Authorization": f"Bearer {SERVER_TOKEN}x"}, "unknown token"),
        ({"Authorization": f"Basic {SERVER_TOKEN}"}, "unknown token"),
        ({"Authorization": SERVER_TOKEN}, "unknown token"),
    ],
    ids=["missing", "unknown", "server-token-plus-one-char", "not-bearer", "no-scheme"],
)
def test_a_missing_or_unknown_token_gets_401_and_is_never_echoed(serve, headers, error):
    api = serve(server_allowance=1)
    response = api.get("/items/1", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": error}
    assert "X-RateLimit-Limit" not in response.headers
    assert "Retry-After" not in response.headers
    for token in TOKENS:
        assert token not in json.dumps(dict(response.headers))
    assert api.log_lines == [f'caller=- item="1" status=401 ({error})']
    # Not counted and not recorded: the known caller still has its whole allowance.
    assert api.get("/calls").json() == []
    assert api.get("/stats").json()["callers"]["server"]["windows"] == {}
    assert api.get("/items/1", SERVER_TOKEN).status_code == 200
    # The serve fixture checks every body and log line for the tokens.


def test_calls_lists_every_item_call_in_order_and_since_filters_by_time(serve):
    api = serve(server_allowance=1, laptop_allowance=1)
    api.get("/items/one", SERVER_TOKEN)
    api.clock.now = T0 + 1.25
    api.get("/items/two", SERVER_TOKEN)
    api.get("/items/x", UNKNOWN_TOKEN)
    api.clock.now = T0 + 2.5
    api.get("/items/a%2Fb", LAPTOP_TOKEN)
    api.clock.now = START + WINDOW
    api.get("/items/four", SERVER_TOKEN)
    every = [
        {"t": T0, "caller": "server", "item": "one", "status": 200, "window": START},
        {"t": T0 + 1.25, "caller": "server", "item": "two", "status": 429, "window": START},
        {"t": T0 + 2.5, "caller": "laptop", "item": "a/b", "status": 200, "window": START},
        {"t": START + WINDOW, "caller": "server", "item": "four", "status": 200, "window": START + WINDOW},
    ]
    assert api.get("/calls").json() == every
    # since is inclusive.
    assert api.get(f"/calls?since={T0 + 1.25}").json() == every[1:]
    assert api.get(f"/calls?since={T0 + 1.26}").json() == every[2:]
    assert api.get(f"/calls?since={START + WINDOW + 0.001}").json() == []
    assert api.get("/calls?since=0").json() == every
    response = api.get("/calls?since=yesterday")
    assert response.status_code == 400
    assert "error" in response.json()


def test_stats_sums_up_each_caller_per_window(serve):
    api = serve(server_allowance=2, laptop_allowance=5)
    for offset in (0, 1, 2, 3):
        api.clock.now = T0 + offset
        api.get("/items/s", SERVER_TOKEN)
    api.clock.now = START + WINDOW + 0.5
    api.get("/items/s", SERVER_TOKEN)
    assert api.get("/stats").json() == {
        "window": WINDOW,
        "callers": {
            "server": {
                "allowance": 2,
                "windows": {
                    str(START): {"ok": 2, "limited": 2, "first": T0, "last": T0 + 3},
                    str(START + WINDOW): {
                        "ok": 1,
                        "limited": 0,
                        "first": START + WINDOW + 0.5,
                        "last": START + WINDOW + 0.5,
                    },
                },
            },
            "laptop": {"allowance": 5, "windows": {}},
        },
    }


def test_health_and_unknown_routes(serve):
    api = serve()
    response = api.get("/health")
    assert (response.status_code, response.json()) == (200, {"ok": True})
    for path in ("/", "/items", "/items/", "/items/a/b", "/nothing"):
        response = api.get(path, SERVER_TOKEN)
        assert (response.status_code, response.json()) == (404, {"error": "not found"}), path
    response = requests.post(api.url + "/items/1", headers={"Authorization": f"Bearer {SERVER_TOKEN}"}, timeout=5)
    assert response.status_code == 405
    # None of these were /items calls.
    assert api.get("/calls").json() == []


def test_concurrent_calls_never_exceed_the_allowance(serve):
    api = serve(server_allowance=15)
    callers = 40
    barrier = threading.Barrier(callers)
    responses = [None] * callers

    def call(index):
        barrier.wait()
        responses[index] = requests.get(
            f"{api.url}/items/{index}", headers={"Authorization": f"Bearer {SERVER_TOKEN}"}, timeout=10
        )

    threads = [threading.Thread(target=call, args=(index,)) for index in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert all(response is not None for response in responses)
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 15
    assert statuses.count(429) == 25
    # Every allowed call saw a different count: 14 remaining down to 0, each exactly once.
    remaining = sorted(int(r.headers["X-RateLimit-Remaining"]) for r in responses if r.status_code == 200)
    assert remaining == list(range(15))
    assert all(r.headers["X-RateLimit-Remaining"] == "0" for r in responses if r.status_code == 429)
    calls = api.get("/calls").json()
    assert len(calls) == callers
    assert [call["status"] for call in calls].count(200) == 15
    stats = api.get("/stats").json()["callers"]["server"]["windows"][str(START)]
    assert (stats["ok"], stats["limited"]) == (15, 25)


def test_latency_delays_each_item_call(serve):
    api = serve(latency_ms=150)
    began = time.monotonic()
    assert api.get("/items/1", SERVER_TOKEN).status_code == 200
    assert time.monotonic() - began >= 0.15
    began = time.monotonic()
    api.get("/health")
    assert time.monotonic() - began < 0.15


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"window": 0}, "window must be"),
        ({"window": 2.5}, "window must be"),
        ({"port": 70000}, "port must be"),
        ({"latency_ms": -1}, "latency_ms must be"),
        ({"colour": "blue"}, "unknown key(s): colour"),
        ({"tokens": []}, "tokens must be a non-empty list"),
        ({"tokens": [{"name": "a", "token": SERVER_TOKEN, "allowance": -1}]}, "tokens[0].allowance (of a)"),
        ({"tokens": [{"name": "a", "token": SERVER_TOKEN, "allowance": True}]}, "tokens[0].allowance (of a)"),
        ({"tokens": [{"name": "a", "token": f"{SERVER_TOKEN} x", "allowance": 1}]}, "tokens[0].token (of a)"),
        (
            {"tokens": [{"name": "a", "token": SERVER_TOKEN, "allowance": 1, "secret": UNKNOWN_TOKEN}]},
            "unknown key(s): secret",
        ),
        (
            {
                "tokens": [
                    {"name": "a", "token": SERVER_TOKEN, "allowance": 1},
                    {"name": "b", "token": SERVER_TOKEN, "allowance": 1},
                ]
            },
            "two entries have the same token",
        ),
        (
            {
                "tokens": [
                    {"name": "a", "token": SERVER_TOKEN, "allowance": 1},
                    {"name": "a", "token": LAPTOP_TOKEN, "allowance": 1},
                ]
            },
            "two entries have the same name",
        ),
    ],
)
def test_an_invalid_configuration_is_refused_by_key_never_by_value(change, message):
    data = {"window": WINDOW, "tokens": [{"name": "server", "token": SERVER_TOKEN, "allowance": 1}], **change}
    with pytest.raises(api_standin.ConfigError) as raised:
        api_standin.parse_config(data)
    assert message in str(raised.value)
    for token in TOKENS:
        assert token not in str(raised.value)


def test_the_defaults_and_a_token_free_repr():
    config = api_standin.parse_config(
        {"window": 1, "tokens": [{"name": "server", "token": SERVER_TOKEN, "allowance": 0}]}
    )
    assert (config.listen, config.port, config.latency_ms) == ("0.0.0.0", 8080, 0.0)
    assert SERVER_TOKEN not in repr(config)


def test_check_config_reports_a_bad_file_without_its_content(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text('{"window": 20, "tokens": [{"name": "server", "token": "' + SERVER_TOKEN + '", allowance: 1}]}')
    assert api_standin.main(["--check-config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "not valid JSON" in error
    assert SERVER_TOKEN not in error
    path.write_text(json.dumps({"window": 20, "tokens": [{"name": "server", "token": SERVER_TOKEN, "allowance": 1}]}))
    assert api_standin.main(["--check-config", str(path)]) == 0


def test_the_script_serves_its_configuration_and_stops_on_sigterm(tmp_path):
    """The real entry point, as systemd runs it: a process of its own, stopped with SIGTERM."""
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "listen": "127.0.0.1",
                "port": 0,
                "window": 3600,
                "tokens": [{"name": "server", "token": SERVER_TOKEN, "allowance": 1}],
            }
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        first = process.stdout.readline()
        assert first.startswith("api-standin listening on 127.0.0.1:"), first
        port = int(first.split()[3].rstrip(",").rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}"
        assert requests.get(url + "/health", timeout=5).json() == {"ok": True}
        headers = {"Authorization": f"Bearer {SERVER_TOKEN}"}
        assert [requests.get(url + "/items/1", headers=headers, timeout=5).status_code for _ in range(2)] == [
            200,
            429,
        ]
        window = math.floor(time.time() / 3600) * 3600
        assert requests.get(url + "/calls", timeout=5).json()[0]["window"] in (window, window - 3600)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert err == ""
    assert out.splitlines() == [
        'caller=server item="1" status=200 remaining=0',
        'caller=server item="1" status=429 remaining=0',
    ]
    assert SERVER_TOKEN not in first + out


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "config.json"
        config = {
            "listen": "127.0.0.1",
            "port": port,
            "window": 5,
            "tokens": [{"name": "s", "token": SERVER_TOKEN, "allowance": 1}],
        }
        path.write_text(json.dumps(config))
        assert api_standin.main(["--config", str(path)]) == 1
    assert capsys.readouterr().err == f"api-standin: cannot listen on 127.0.0.1:{port}: Address already in use\n"
