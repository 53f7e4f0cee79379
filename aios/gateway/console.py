"""The operator console: a web page under ``/console`` for operators, never for agents.

What it shows is what the operator commands read, through the same functions: ``aios status``
(:func:`aios.ops.status.collect`: queues, workers, syscalls in flight, per-agent service, quotas), the recent
answered syscalls (:func:`aios.ops.status.recent`), ``aios agent list``, ``aios approvals`` (each request's summary,
the digest of exactly the payload that would run, and the payload itself) and ``aios audit``. Approving posts
the digest the page showed, and the kernel approves only a request whose parked payload has that digest
(:meth:`aios.policy.approvals.Approvals.approve`): what the operator read is what runs.

The credential is the console's own token (``aios console-token``, derived from the master key:
:func:`aios.policy.identity.console_token`), sent as ``Authorization: Bearer``. An agent's key is refused, as is
no token: every ``/console/api/`` request without the token is a 401. The page itself (``/console``, its script and
style) holds no data and is served to anyone; it reads the token from the address's fragment
(``/console#token=...``, which browsers never send to a server) or from a form, and keeps it in the tab's
``sessionStorage``. Everything an agent could have written (ids, summaries, paths, payloads, audit reasons) is put
in the page as text, never as HTML, and a strict Content-Security-Policy allows only the console's own script.
"""

from __future__ import annotations

import json
import time
from importlib.resources import files
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aios.gateway.context import GatewayContext, bearer
from aios.wire.errors import AIOSError, NotFound

PREFIX = "/console"
STATIC = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
AUDIT_SHOWN = 50
RECENT_SHOWN = 100
STATUS_TIMEOUT_S = 0.5
"""How long the console's status read waits for workers to answer the broadcast (``aios status`` waits 1 s)."""
MAX_BODY_BYTES = 4096


def _asset(name: str) -> bytes:
    return files("aios.gateway").joinpath("static", name).read_bytes()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status, headers=HEADERS)


class Console:
    """The console's endpoints for one gateway context."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        assert ctx.status is not None
        self.status = ctx.status
        self._redis: Any = None
        self._approvals: Any = None

    @property
    def redis(self) -> Any:
        if self._redis is None:  # one pooled connection to the kernel's state for the console's reads
            from aios.state.connections import state_client

            self._redis = state_client(self.settings)
        return self._redis

    @property
    def approvals(self) -> Any:
        if self._approvals is None:  # its scripts registered once, its reply writer (RabbitMQ's too) kept
            from aios.policy.approvals import Approvals

            self._approvals = Approvals(self.settings, self.redis)
        return self._approvals

    # -- the page -------------------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return Response(_asset("console.html"), media_type="text/html; charset=utf-8", headers=HEADERS)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return _error(404, "no such file")
        return Response(_asset(name), media_type=STATIC[name], headers=HEADERS)

    # -- the API ----------------------------------------------------------------------------------------------

    async def _operator(self, request: Request) -> JSONResponse | None:
        """``None`` if the request carries the console's token, else the 401 to answer."""
        from aios.policy.identity import is_console_token

        token = bearer(request.headers)
        if await run_in_threadpool(is_console_token, self.settings, self.redis, token):
            return None
        return JSONResponse(
            {"error": {"message": "the operator console needs its own token (`aios console-token`); an agent's "
                                  "key does not open it"}},
            status_code=401, headers={**HEADERS, "WWW-Authenticate": 'Bearer realm="aios-console"'})

    async def overview(self, request: Request) -> Response:
        if (refused := await self._operator(request)) is not None:
            return refused
        return JSONResponse(await run_in_threadpool(self._overview), headers=HEADERS)

    def _overview(self) -> dict[str, Any]:
        from aios.policy.audit import AuditLog
        from aios.policy.identity import Credentials

        return {
            "now": time.time(),
            "status": self.status.collect(self.settings, timeout_s=STATUS_TIMEOUT_S),
            "credentials": [c.public() for c in Credentials(self.settings, self.redis).list()],
            "recent": self.status.recent(self.settings, RECENT_SHOWN),
            "approvals": [r.public() for r in self.approvals.pending()],
            "audit": AuditLog(self.redis).query(limit=AUDIT_SHOWN),
        }

    async def decide(self, request: Request) -> Response:
        """``POST /console/api/approvals/{id}/approve`` with ``{"digest": ...}`` (the digest the page showed), or
        ``.../deny`` with ``{"reason": ...}``."""
        if (refused := await self._operator(request)) is not None:
            return refused
        if request.path_params["action"] not in ("approve", "deny"):
            return _error(404, "approvals/<id>/approve or approvals/<id>/deny")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return _error(400, "the body must be JSON")
        if not isinstance(data, dict):
            return _error(400, "the body must be a JSON object")
        syscall_id, action = request.path_params["syscall_id"], request.path_params["action"]
        try:
            result = await run_in_threadpool(self._decide, syscall_id, action, data)
        except NotFound as exc:
            return _error(404, exc.message)
        except AIOSError as exc:  # decided already, expired, or the digest is not the one parked
            return _error(409, exc.message)
        except ValueError as exc:
            return _error(400, str(exc))
        return JSONResponse(result, headers=HEADERS)

    def _decide(self, syscall_id: str, action: str, data: dict[str, Any]) -> dict[str, Any]:
        approvals = self.approvals
        if action == "approve":
            digest = data.get("digest")
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("approving needs the request's whole digest (64 hex digits), as the page shows it")
            request = approvals.approve(syscall_id, digest_prefix=digest, note="approved in the operator console")
            return {"id": syscall_id, "status": "approved", "summary": request.summary, "digest": request.digest}
        reason = data.get("reason") or "denied in the operator console"
        if not isinstance(reason, str) or len(reason) > 500:
            raise ValueError("reason must be text of at most 500 characters")
        approvals.deny(syscall_id, reason)
        return {"id": syscall_id, "status": "denied"}


def routes(ctx: GatewayContext) -> list[BaseRoute]:
    """``/console`` (the page), ``/console/static/...``, and ``/console/api/...`` (operators only)."""
    if ctx.status is None:  # an app made without the kernel's status reader serves no console
        return []
    console = Console(ctx)
    return [
        Route(PREFIX, console.page, methods=["GET"]),
        Route(PREFIX + "/static/{name}", console.static, methods=["GET"]),
        Route(PREFIX + "/api/overview", console.overview, methods=["GET"]),
        Route(PREFIX + "/api/approvals/{syscall_id}/{action}", console.decide, methods=["POST"]),
    ]
