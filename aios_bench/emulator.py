"""An OpenAI-compatible LLM provider emulator that rate-limits as hosted APIs do (``aios bench ratelimit``, ``scale``).

It serves ``POST /v1/chat/completions``, ``GET /v1/models`` and ``GET /stats``:

- **Limits**: ``rpm`` requests and ``tpm`` tokens per sliding window of ``window_s`` seconds (60 by default, so per
  minute, like hosted APIs; a shorter window with limits scaled to it makes quick runs). A request is counted,
  with its tokens (prompt tokens + ``max_tokens``, what hosted APIs reserve), when it is admitted; past either
  limit it is answered ``429`` with an OpenAI-style error body and a ``retry-after`` header (whole seconds until
  the window has room for it).
- **Service**: each admitted request sleeps ``service_s`` (asyncio: any number are served at once), then answers a
  deterministic completion of exactly ``max_tokens`` tokens (one word per token) with ``usage``:
  ``prompt_tokens = ceil(len(text of all messages) / 4)``. With ``stream: true`` the same text comes as
  server-sent chunks of four words, after the same service time (``stream_options.include_usage`` honoured).
  With ``gpu`` (a :class:`~aios_bench.gpu_model.GPUShape`) the service is instead a continuous-batching GPU:
  requests join a batch of at most ``max_batch``, each step's time set by the batch and the prompts joining.
- **Counters** (``/stats``): admitted requests, 429s (by limit), tokens, requests in flight, and the time of every
  admission and every 429 (seconds since the emulator started), from which a benchmark measures throughput.
  A request whose messages contain ``[req TAG]`` is also timed (``served``: TAG -> [arrived, answered], Unix
  time): a benchmark subtracts the emulator's time from what its agents saw to find its own overhead.

Run in-process on a background thread with :class:`EmulatorThread`, in its own process with
:class:`EmulatorProcess`, or from a shell::

    python -m aios_bench.emulator --rpm 600 --tpm 60000 --service-ms 100 [--window-s 60] [--port 8000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aios_bench.gpu_model import BatchedGPU, GPUShape

DEFAULT_MODEL = "emulated"
DEFAULT_MAX_TOKENS = 16
TAG = re.compile(r"\[req ([\w.:-]{1,64})\]")
WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


def completion_text(n_tokens: int) -> str:
    """The deterministic completion of ``n_tokens`` tokens: one word per token."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_tokens))


def message_text(messages: list[Any]) -> str:
    """All the text of a chat request's messages (string contents, or the text parts of a list content)."""
    parts: list[str] = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "".join(parts)


def prompt_tokens(messages: list[Any]) -> int:
    return math.ceil(len(message_text(messages)) / 4)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    limit: str | None = None
    """``requests`` or ``tokens``: which limit refused it."""
    retry_after_s: float | None = None
    """How long until the window has room for this request; None if it never will (larger than the TPM limit)."""


class SlidingWindowLimiter:
    """RPM and TPM over one sliding window: a request is admitted at ``now`` if the requests (and tokens) admitted
    in ``(now - window_s, now]`` plus this one stay within the limits. Not thread-safe: call it from one thread
    (the emulator's event loop)."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float = 60.0) -> None:
        if rpm is not None and rpm < 1 or tpm is not None and tpm < 1:
            raise ValueError(f"limits must be at least 1 (got rpm={rpm}, tpm={tpm}); leave one unset for no limit")
        if not window_s > 0:
            raise ValueError(f"window_s must be positive (got {window_s})")
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        self._log: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - self.window_s:
            self._tokens -= self._log.popleft()[1]

    def used(self, now: float) -> tuple[int, int]:
        """Requests and tokens counted in the window ending at ``now``."""
        self._expire(now)
        return len(self._log), self._tokens

    def admit(self, now: float, tokens: int) -> Decision:
        self._expire(now)
        if self.rpm is not None and len(self._log) + 1 > self.rpm:
            # Room for one more once the oldest request that puts the count over the limit leaves the window.
            oldest = self._log[len(self._log) - self.rpm][0]
            return Decision(False, "requests", oldest + self.window_s - now)
        if self.tpm is not None and self._tokens + tokens > self.tpm:
            if tokens > self.tpm:
                return Decision(False, "tokens", None)
            excess, at = self._tokens + tokens - self.tpm, now
            for t, n in self._log:
                excess -= n
                at = t
                if excess <= 0:
                    break
            return Decision(False, "tokens", at + self.window_s - now)
        self._log.append((now, tokens))
        self._tokens += tokens
        return Decision(True)


@dataclass
class Counters:
    admitted: int = 0
    rejected_requests: int = 0
    rejected_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    admitted_at: list[float] = field(default_factory=list)
    admitted_tokens: list[int] = field(default_factory=list)
    rejected_at: list[float] = field(default_factory=list)
    served: dict[str, tuple[float, float]] = field(default_factory=dict)


def openai_error(status: int, message: str, type_: str, code: str | None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


class Emulator:
    """The provider: its limiter, counters and the Starlette app that serves them."""

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None, window_s: float = 60.0,
                 service_s: float = 0.0, model: str = DEFAULT_MODEL, gpu: GPUShape | None = None) -> None:
        if service_s < 0:
            raise ValueError(f"service time must not be negative (got {service_s})")
        self.limiter = SlidingWindowLimiter(rpm, tpm, window_s)
        self.service_s = service_s
        self.gpu = BatchedGPU(gpu) if gpu is not None else None
        self.model = model
        self.counters = Counters()
        self.started = time.monotonic()
        self._ids = 0
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/stats", self.stats_endpoint, methods=["GET"]),
        ])

    def clock(self) -> float:
        return time.monotonic() - self.started

    def limits(self) -> dict[str, Any]:
        return {"rpm": self.limiter.rpm, "tpm": self.limiter.tpm, "window_s": self.limiter.window_s,
                "service_s": self.service_s, "model": self.model,
                "gpu": None if self.gpu is None else vars(self.gpu.shape)}

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {"admitted": c.admitted, "rejected_429": c.rejected_requests + c.rejected_tokens,
                "rejected_requests": c.rejected_requests, "rejected_tokens": c.rejected_tokens,
                "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                "in_flight": c.in_flight, "max_in_flight": c.max_in_flight, "uptime_s": self.clock(),
                "limits": self.limits(), "admitted_at": list(c.admitted_at),
                "admitted_tokens": list(c.admitted_tokens), "rejected_at": list(c.rejected_at),
                "served": dict(c.served), "gpu_steps": None if self.gpu is None else self.gpu.steps,
                "gpu_max_running": None if self.gpu is None else self.gpu.max_running}

    def _rate_headers(self, now: float) -> dict[str, str]:
        used_requests, used_tokens = self.limiter.used(now)
        headers = {}
        if self.limiter.rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(self.limiter.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.limiter.rpm - used_requests))
        if self.limiter.tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.limiter.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, self.limiter.tpm - used_tokens))
        return headers

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "aios-emulator"}]})

    async def stats_endpoint(self, request: Request) -> JSONResponse:
        return JSONResponse(self.stats())

    async def chat(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return openai_error(400, "the request body is not valid JSON", "invalid_request_error", None)
        if not isinstance(body, dict):
            return openai_error(400, "the request body must be a JSON object", "invalid_request_error", None)
        messages, model = body.get("messages"), body.get("model")
        if not isinstance(messages, list) or not messages:
            return openai_error(400, "'messages' must be a non-empty array", "invalid_request_error", None,
                                "messages")
        if model != self.model:
            return openai_error(404, f"The model `{model}` does not exist; this emulator serves `{self.model}`",
                                "invalid_request_error", "model_not_found", "model")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return openai_error(400, f"'max_tokens' must be a positive integer (got {max_tokens!r})",
                                "invalid_request_error", None, "max_tokens")
        arrived = time.time()
        n_prompt = prompt_tokens(messages)
        now = self.clock()
        decision = self.limiter.admit(now, n_prompt + max_tokens)
        c = self.counters
        if not decision.admitted:
            if decision.limit == "requests":
                c.rejected_requests += 1
            else:
                c.rejected_tokens += 1
            c.rejected_at.append(now)
            return self._429(now, decision, n_prompt + max_tokens)
        c.admitted += 1
        c.admitted_at.append(now)
        c.admitted_tokens.append(n_prompt + max_tokens)
        c.prompt_tokens += n_prompt
        c.completion_tokens += max_tokens
        c.in_flight += 1
        c.max_in_flight = max(c.max_in_flight, c.in_flight)
        headers = self._rate_headers(now)
        try:
            if self.gpu is not None:
                await self.gpu.serve(n_prompt, max_tokens)
            elif self.service_s:
                await asyncio.sleep(self.service_s)
        finally:
            c.in_flight -= 1
        if tag := TAG.search(message_text(messages)):
            c.served[tag.group(1)] = (arrived, time.time())
        self._ids += 1
        if body.get("stream"):
            return StreamingResponse(self._chunks(f"chatcmpl-emu-{self._ids}", max_tokens, n_prompt,
                                                  bool((body.get("stream_options") or {}).get("include_usage"))),
                                     media_type="text/event-stream", headers=headers)
        return JSONResponse({
            "id": f"chatcmpl-emu-{self._ids}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion_text(max_tokens)},
                         "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": max_tokens,
                      "total_tokens": n_prompt + max_tokens},
        }, headers=headers)

    async def _chunks(self, cid: str, max_tokens: int, n_prompt: int, usage: bool) -> AsyncIterator[str]:
        """A streamed reply (after the service time, like the whole one): the text in pieces of a few words."""
        def event(choices: list[Any], **more: Any) -> str:
            data = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model,
                    "choices": choices, **more}
            return f"data: {json.dumps(data)}\n\n"

        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        words = completion_text(max_tokens).split(" ")
        for i in range(0, len(words), 4):
            piece = " ".join(words[i:i + 4]) + (" " if i + 4 < len(words) else "")
            yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        yield event([{"index": 0, "delta": {}, "finish_reason": "length"}])
        if usage:
            yield event([], usage={"prompt_tokens": n_prompt, "completion_tokens": max_tokens,
                                   "total_tokens": n_prompt + max_tokens})
        yield "data: [DONE]\n\n"

    def _429(self, now: float, decision: Decision, tokens: int) -> JSONResponse:
        lim = self.limiter
        headers = self._rate_headers(now)
        per = "min" if lim.window_s == 60 else f"{lim.window_s:g}s"
        if decision.retry_after_s is None:
            headers["x-should-retry"] = "false"
            return openai_error(429, f"Request too large for {self.model} on tokens per {per} (TPM): Limit "
                                f"{lim.tpm}, Requested {tokens}. Reduce the prompt or max_tokens.", "tokens",
                                "rate_limit_exceeded", headers=headers)
        wait = max(decision.retry_after_s, 0.001)
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        headers[f"x-ratelimit-reset-{decision.limit}"] = f"{wait:.3f}s"
        used_requests, used_tokens = lim.used(now)
        if decision.limit == "requests":
            what, limit, used, asked = "requests per " + per + " (RPM)", lim.rpm, used_requests, 1
        else:
            what, limit, used, asked = "tokens per " + per + " (TPM)", lim.tpm, used_tokens, tokens
        return openai_error(429, f"Rate limit reached for {self.model} on {what}: Limit {limit}, Used {used}, "
                            f"Requested {asked}. Please try again in {wait:.3f}s.", str(decision.limit),
                            "rate_limit_exceeded", headers=headers)


# -- running it --------------------------------------------------------------------------------------------------

def _bound_socket(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY on accepted connections only for a socket that says so,
    # and without it Nagle's algorithm and delayed ACKs stall every reply on a kept-alive connection by ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _server(emulator: Emulator) -> Any:
    import uvicorn

    config = uvicorn.Config(emulator.app, log_level="warning", access_log=False, lifespan="off",
                            timeout_keep_alive=60, backlog=2048)
    return uvicorn.Server(config)


class EmulatorThread:
    """The emulator on a background thread of this process (its own event loop), on 127.0.0.1 at a free port."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self.emulator = Emulator(**kwargs)
        self._sock = _bound_socket(host, port)
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self._server = _server(self.emulator)
        self._thread = threading.Thread(target=self._run, name="aios-emulator", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self) -> "EmulatorThread":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the LLM provider emulator did not start")
            time.sleep(0.01)
        return self

    def stats(self) -> dict[str, Any]:
        return self.emulator.stats()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> "EmulatorThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmulatorProcess:
    """The emulator in a child process (so that the load a benchmark puts on its own process cannot slow it)."""

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None, window_s: float = 60.0,
                 service_s: float = 0.0, model: str = DEFAULT_MODEL, gpu: GPUShape | None = None) -> None:
        Emulator(rpm=rpm, tpm=tpm, window_s=window_s, service_s=service_s, model=model)  # bad options fail here
        self.argv = [sys.executable, "-m", "aios_bench.emulator", "--window-s", str(window_s), "--service-ms",
                     str(service_s * 1000), "--model", model, "--port", "0"]
        if gpu is not None:
            self.argv += ["--gpu", json.dumps(vars(gpu))]
        if rpm is not None:
            self.argv += ["--rpm", str(rpm)]
        if tpm is not None:
            self.argv += ["--tpm", str(tpm)]
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> "EmulatorProcess":
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # "listening on http://127.0.0.1:PORT"
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the LLM provider emulator did not start (it printed {line!r})")
        self.url = line.split()[-1]
        return self

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=30) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None

    def __enter__(self) -> "EmulatorProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aios_bench.emulator",
                                     description="An OpenAI-compatible provider emulator with RPM/TPM limits.")
    parser.add_argument("--rpm", type=int, default=None, help="requests per window (default: no limit)")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per window (default: no limit)")
    parser.add_argument("--window-s", type=float, default=60.0, help="sliding window length (default 60: per minute)")
    parser.add_argument("--service-ms", type=float, default=0.0, help="service time of each request (default 0)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name it serves (default {DEFAULT_MODEL})")
    parser.add_argument("--gpu", default=None, help='a batched GPU service instead of --service-ms: JSON of '
                        'aios_bench.gpu_model.GPUShape fields, e.g. {"max_batch": 256} ({} for the defaults)')
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    args = parser.parse_args(argv)
    try:
        gpu = None if args.gpu is None else GPUShape(**json.loads(args.gpu))
        emulator = Emulator(rpm=args.rpm, tpm=args.tpm, window_s=args.window_s, service_s=args.service_ms / 1000,
                            model=args.model, gpu=gpu)
        sock = _bound_socket(args.host, args.port)
    except (ValueError, TypeError, OSError) as exc:
        parser.error(str(exc))
    host, port = sock.getsockname()[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    asyncio.run(_server(emulator).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
