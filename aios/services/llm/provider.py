"""A lean client for OpenAI-compatible servers, for the LLM worker's ``openai`` backend.

The ``openai`` package's client builds pydantic models for every request and reply, copies its options per attempt
and runs a general HTTP stack: on a 2-core machine with 64 syscalls in flight that was about a quarter of the LLM
worker's CPU per call. This one posts plain JSON on pooled keep-alive connections (``http.client``) and returns
the decoded JSON, with the ``openai`` client's rules where they show: the same headers that matter
(``Authorization``, ``OpenAI-Organization``/``OpenAI-Project`` from the environment), the same retries (connection
errors, timeouts, 408/409/429/5xx, ``x-should-retry``, ``Retry-After`` up to 60 s, else 0.5 s doubling up to 8 s
less up to 25 % jitter) and the same error texts (``Error code: 503 - <the server's message>``, ``Connection
error.``, ``Request timed out.``). What it does not do: HTTP proxies from the environment, HTTP/2.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import random
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://api.openai.com/v1"
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
POOL_MAX = 256
"""Idle connections kept per client (the LLM worker holds one per thread in flight)."""


class ProviderError(Exception):
    """The server could not be asked, or did not answer as an OpenAI-compatible server does."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProviderConnectionError(ProviderError):
    def __init__(self, message: str = "Connection error.") -> None:
        super().__init__(message)


class ProviderTimeout(ProviderConnectionError):
    def __init__(self) -> None:
        super().__init__("Request timed out.")


class ProviderStatusError(ProviderError):
    """A 4xx/5xx answer. ``body``: its ``error`` object (or the whole decoded body, or its text)."""

    def __init__(self, status_code: int, message: str, body: object, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.headers = headers


def _status_error(status: int, raw: bytes, headers: Mapping[str, str]) -> ProviderStatusError:
    message = f"Error code: {status}"
    text = raw.decode("utf-8", errors="replace").strip()
    body: object = text
    try:
        body = json.loads(text)
    except ValueError:
        pass
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        if isinstance(detail, str) and detail:
            message += f" - {detail}"
        if isinstance(body, dict):
            body = body.get("error", body)
    return ProviderStatusError(status, message, body, headers)


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms``, ``retry-after`` in seconds or as a date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        return None if parsed is None else email.utils.mktime_tz(parsed) - time.time()


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    after = retry_after(headers)
    if after is not None and math.isfinite(after) and after > MAX_RETRY_AFTER:
        return False
    said = headers.get("x-should-retry")
    if said in ("true", "false"):
        return said == "true"
    return status in (408, 409, 429) or status >= 500


def retry_delay(attempt: int, headers: Mapping[str, str] | None) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (0-based ``attempt``)."""
    after = retry_after(headers)
    if after is not None and math.isfinite(after) and 0 < after <= MAX_RETRY_AFTER:
        return after
    return max(0.0, min(INITIAL_RETRY_DELAY * 2.0 ** min(attempt, 1000), MAX_RETRY_DELAY) * (1 - 0.25 * random.random()))


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
"""What a kept-alive connection the server closed meanwhile raises: sent again once on a fresh connection."""


class ProviderClient:
    """POSTs JSON to ``base_url`` + path; thread-safe (a pool of connections, one per request in flight)."""

    def __init__(self, base_url: str | None, api_key: str, *, timeout: float, max_retries: int) -> None:
        base = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.base_url = base if base.endswith("/") else base + "/"
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {self.base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path or "/"
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            try:
                import certifi

                self._ssl = ssl.create_default_context(cafile=certifi.where())
            except ImportError:
                self._ssl = ssl.create_default_context()
        self.timeout = timeout
        self.max_retries = max_retries
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "aios-llm",
                   "Authorization": f"Bearer {api_key}"}
        for env, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if os.environ.get(env):
                headers[header] = os.environ[env]
        self._headers = headers
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < POOL_MAX:
                self._idle.append(conn)
                return
        conn.close()

    def _send(self, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes, Mapping[str, str]]:
        """One HTTP exchange: (status, body, lower-cased headers); raises ProviderConnectionError/Timeout."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        fresh = conn is None
        while True:
            if conn is None:
                conn = self._connect()
            try:
                conn.request("POST", path, data, headers)
                resp = conn.getresponse()
                body = resp.read()
            except TimeoutError:
                conn.close()
                raise ProviderTimeout() from None
            except _STALE:
                conn.close()
                if not fresh:  # the server closed it while it idled: once more, on a new connection
                    conn, fresh = None, True
                    continue
                raise ProviderConnectionError() from None
            except (OSError, http.client.HTTPException):
                conn.close()
                raise ProviderConnectionError() from None
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if resp.will_close:
                conn.close()
            else:
                self._release(conn)
            return resp.status, body, hdrs

    def post(self, path: str, body: dict[str, Any], *, retries: int | None = None) -> Any:
        """POST ``body`` as JSON to ``path`` (relative to the base URL); the decoded JSON answer. Raises
        :class:`ProviderStatusError` (4xx/5xx), :class:`ProviderConnectionError` / :class:`ProviderTimeout`,
        :class:`ProviderError` (an answer that is not JSON), each after the retries the error allows."""
        data = json.dumps(body, separators=(",", ":")).encode()
        url = self._prefix + path
        max_retries = self.max_retries if retries is None else retries
        headers = self._headers
        if max_retries > 0:  # one key for every attempt of this request
            headers = {**headers, "Idempotency-Key": f"aios-retry-{uuid.uuid4()}"}
        attempt = 0
        while True:
            try:
                status, raw, hdrs = self._send(url, data, headers)
            except ProviderConnectionError:
                if attempt >= max_retries:
                    raise
                time.sleep(retry_delay(attempt, None))
                attempt += 1
                continue
            if status < 400:
                try:
                    return json.loads(raw)
                except ValueError:
                    raise ProviderError(f"the answer to POST {path} is not JSON: {raw[:200]!r}") from None
            if attempt < max_retries and should_retry(status, hdrs):
                time.sleep(retry_delay(attempt, hdrs))
                attempt += 1
                continue
            raise _status_error(status, raw, hdrs)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
