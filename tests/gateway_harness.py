"""Serving the gateway in tests: the gateway's own app (:func:`aios.gateway.server.create_app`, with the kernel's
status reader, as ``aios gateway`` serves it) on uvicorn in a thread of the test process."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from aios.gateway.server import ROUTE_SETS, GatewayContext, create_app
from aios.ops import status
from aios.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(settings: Settings, *route_modules: str) -> Iterator[tuple[str, GatewayContext]]:
    """Serve the gateway's app (all its route sets, or ``route_modules``) on 127.0.0.1, as ``aios gateway`` does;
    yields (base URL, the app's context)."""
    app = create_app(settings, status=status, route_modules=route_modules or ROUTE_SETS)
    ctx = app.state.ctx
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="gateway-harness", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test gateway did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", ctx
    finally:
        server.should_exit = True
        thread.join(timeout=20)
