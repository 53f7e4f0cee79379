"""The openai backend's own HTTP client (:mod:`aios.services.llm.provider`): the ``openai`` client's retry rules,
error texts and kept-alive connections, against a tiny real HTTP server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from aios.services.llm.provider import (
    ProviderClient,
    ProviderConnectionError,
    ProviderStatusError,
    ProviderTimeout,
    retry_delay,
    should_retry,
)

Reply = tuple[int, dict[str, Any], dict[str, str]]


class Server:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.close_after = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def do_POST(self) -> None:  # noqa: N802 - http.server's spelling
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status, reply, headers = outer.replies.pop(0)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                if outer.close_after:  # the server drops the kept-alive connection after answering
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


FAST = {"retry-after-ms": "5"}


def test_posts_json_with_the_key_and_keeps_the_connection(server: Server) -> None:
    server.replies = [(200, {"ok": 1}, {}), (200, {"ok": 2}, {})]
    client = ProviderClient(server.url, "k-123", timeout=5, max_retries=0)
    assert client.base_url == server.url + "/"
    assert client.post("chat/completions", {"model": "m", "x": [1]}) == {"ok": 1}
    assert client.post("chat/completions", {"model": "m"}) == {"ok": 2}
    headers, body = server.requests[0]
    assert headers["authorization"] == "Bearer k-123" and headers["content-type"] == "application/json"
    assert body == {"model": "m", "x": [1]}
    assert len(client._idle) == 1  # one connection, reused
    client.close()


def test_retries_what_the_openai_client_retries(server: Server) -> None:
    server.replies = [(503, {"error": {"message": "busy"}}, FAST), (429, {}, FAST), (200, {"ok": 1}, {})]
    client = ProviderClient(server.url, "k", timeout=5, max_retries=2)
    assert client.post("chat/completions", {}) == {"ok": 1}
    keys = {h["idempotency-key"] for h, _ in server.requests}
    assert len(server.requests) == 3 and len(keys) == 1  # one key for every attempt of one request


def test_a_status_error_says_the_servers_message(server: Server) -> None:
    server.replies = [(400, {"error": {"message": "bad field"}}, {}), (503, {"error": {"message": "down"}}, FAST),
                      (503, {"error": {"message": "down"}}, FAST)]
    client = ProviderClient(server.url, "k", timeout=5, max_retries=1)
    with pytest.raises(ProviderStatusError) as err:
        client.post("chat/completions", {})
    assert err.value.status_code == 400 and err.value.message == "Error code: 400 - bad field"
    assert err.value.body == {"message": "bad field"}
    assert len(server.requests) == 1  # a 400 is not retried
    with pytest.raises(ProviderStatusError, match="Error code: 503 - down"):
        client.post("chat/completions", {})
    assert len(server.requests) == 3  # once, and one retry


def test_a_connection_the_server_closed_is_replaced(server: Server) -> None:
    server.close_after = True
    server.replies = [(200, {"ok": 1}, {}), (200, {"ok": 2}, {})]
    client = ProviderClient(server.url, "k", timeout=5, max_retries=0)
    assert client.post("x", {}) == {"ok": 1}
    assert client.post("x", {}) == {"ok": 2}


def test_unreachable_and_silent_servers() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProviderConnectionError, match=r"Connection error\."):
        ProviderClient(f"http://127.0.0.1:{port}/v1", "k", timeout=2, max_retries=0).post("x", {})
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with pytest.raises(ProviderTimeout, match=r"Request timed out\."):
            ProviderClient(url, "k", timeout=0.3, max_retries=0).post("x", {})


def test_retry_rules() -> None:
    assert should_retry(500, {}) and should_retry(408, {}) and should_retry(409, {}) and should_retry(429, {})
    assert not should_retry(400, {}) and not should_retry(404, {})
    assert should_retry(400, {"x-should-retry": "true"}) and not should_retry(503, {"x-should-retry": "false"})
    assert not should_retry(429, {"retry-after": "120"})  # longer than the client waits
    assert retry_delay(0, {"retry-after": "2"}) == 2.0
    assert retry_delay(0, {"retry-after-ms": "250"}) == 0.25
    assert 0.375 <= retry_delay(0, None) <= 0.5 and 0.75 <= retry_delay(1, None) <= 1.0
    assert 6.0 <= retry_delay(10, None) <= 8.0
