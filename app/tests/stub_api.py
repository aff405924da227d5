"""A real HTTP server on 127.0.0.1 standing in for the API: each item name asks for one kind of answer.

It records every request (path and Authorization header) so tests can count requests exactly.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# item -> (status, extra headers, body)
ANSWERS = {
    "ok": (200, {"Content-Type": "application/json"}, json.dumps({"item": "ok", "value": 42})),
    "missing": (404, {}, "no such item"),
    "limited": (429, {"Retry-After": "7"}, "slow down"),
    "limited-long": (429, {"Retry-After": "3600"}, "slow down"),
    "limited-date": (429, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, "slow down"),
    # 2026-10-21 07:28:00 UTC as epoch seconds, the way GitHub and Twitter report a reset.
    "limited-reset": (429, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1792567680"}, "slow down"),
    "forbidden-limit": (403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1792567680"}, "rate limit"),
    "forbidden": (403, {"X-RateLimit-Remaining": "17"}, "not yours"),
    "down": (503, {}, "maintenance"),
    "moved": (302, {"Location": "/items/ok"}, ""),
    "text": (200, {"Content-Type": "text/plain"}, "not json"),
}
SLOW_SECONDS = 1.0


class StubApi:
    """The server, its base URL and the requests it has received."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.requests.append((self.path, self.headers.get("Authorization")))
                item = self.path.removeprefix("/items/")
                if item == "slow":
                    time.sleep(SLOW_SECONDS)
                    status, headers, body = ANSWERS["ok"]
                else:
                    status, headers, body = ANSWERS.get(
                        item, (200, {"Content-Type": "application/json"}, json.dumps({"item": item}))
                    )
                data = body.encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                """Keep the test output quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
