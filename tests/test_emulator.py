"""The provider emulator of ``aios bench ratelimit`` / ``scale``: its limiter on a fake clock, then over real HTTP
(on a background thread and as its own process) through the ``openai`` client and raw requests."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from aios_bench.emulator import (
    Emulator,
    EmulatorProcess,
    EmulatorThread,
    SlidingWindowLimiter,
    completion_text,
    prompt_tokens,
)

# -- the limiter, on a fake clock ------------------------------------------------------------------------------

def test_rpm_admits_exactly_the_limit_per_sliding_window() -> None:
    lim = SlidingWindowLimiter(rpm=3, tpm=None, window_s=10)
    assert [lim.admit(t, 1).admitted for t in (0.0, 1.0, 2.0)] == [True, True, True]
    refused = lim.admit(5.0, 1)
    assert not refused.admitted and refused.limit == "requests"
    assert refused.retry_after_s == pytest.approx(5.0)  # the request of t=0 leaves the window at t=10
    assert not lim.admit(9.999, 1).admitted
    assert lim.admit(10.0, 1).admitted  # (0, 10]: the t=0 request is out
    assert not lim.admit(10.5, 1).admitted  # 1, 2 and 10 are in the window
    assert lim.admit(11.0, 1).admitted and lim.admit(12.0, 1).admitted
    assert lim.used(12.0) == (3, 3)


def test_tpm_counts_tokens_when_admitted_and_says_when_there_is_room() -> None:
    lim = SlidingWindowLimiter(rpm=None, tpm=100, window_s=60)
    assert lim.admit(0.0, 40).admitted and lim.admit(1.0, 40).admitted
    refused = lim.admit(2.0, 30)
    assert not refused.admitted and refused.limit == "tokens"
    assert refused.retry_after_s == pytest.approx(58.0)  # once the 40 of t=0 leave: 40 + 30 <= 100
    assert lim.admit(2.0, 20).admitted  # exactly at the limit
    assert not lim.admit(3.0, 1).admitted
    too_big = lim.admit(3.0, 101)
    assert not too_big.admitted and too_big.retry_after_s is None  # never fits
    assert lim.admit(60.0, 40).admitted


def test_tpm_retry_after_waits_for_enough_requests_to_leave() -> None:
    lim = SlidingWindowLimiter(rpm=None, tpm=100, window_s=10)
    for t in (0.0, 1.0, 2.0, 3.0):
        assert lim.admit(t, 25).admitted
    refused = lim.admit(4.0, 60)  # needs 60 free: three requests (t=0, 1, 2) must leave first
    assert refused.retry_after_s == pytest.approx(2.0 + 10 - 4.0)


def test_both_limits_at_once_and_bad_limits() -> None:
    lim = SlidingWindowLimiter(rpm=2, tpm=1000, window_s=1)
    assert lim.admit(0, 10).admitted and lim.admit(0, 10).admitted
    assert lim.admit(0, 10).limit == "requests"
    with pytest.raises(ValueError, match="at least 1"):
        SlidingWindowLimiter(rpm=0, tpm=None)
    with pytest.raises(ValueError, match="window_s"):
        SlidingWindowLimiter(rpm=1, tpm=1, window_s=0)
    with pytest.raises(ValueError, match="service"):
        Emulator(service_s=-1)


def test_usage_arithmetic() -> None:
    assert prompt_tokens([{"role": "user", "content": "abcd"}]) == 1
    assert prompt_tokens([{"role": "system", "content": "abc"}, {"role": "user", "content": "de"}]) == 2
    assert prompt_tokens([{"role": "user", "content": [{"type": "text", "text": "x" * 9}]}]) == 3
    assert len(completion_text(7).split()) == 7
    assert completion_text(3) == completion_text(3)


# -- over HTTP ---------------------------------------------------------------------------------------------------

def post(url: str, body: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def chat(content: str = "hello", max_tokens: int = 5) -> dict[str, Any]:
    return {"model": "emulated", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def test_completion_usage_and_models_through_the_openai_client() -> None:
    with EmulatorThread() as emu:
        client = openai.OpenAI(base_url=f"{emu.url}/v1", api_key="x", max_retries=0)
        messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi please"}]
        resp = client.chat.completions.create(model="emulated", messages=messages, max_tokens=12)  # type: ignore[arg-type]
        assert resp.choices[0].message.content == completion_text(12)
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage is not None
        assert resp.usage.prompt_tokens == math.ceil(len("You are terse.Say hi please") / 4) == 7
        assert resp.usage.completion_tokens == 12 and resp.usage.total_tokens == 19
        assert [m.id for m in client.models.list()] == ["emulated"]
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.chat.completions.create(model="gpt-x", messages=messages, max_tokens=1)  # type: ignore[arg-type]
        status, _, body = post(emu.url, {"model": "emulated", "messages": []})
        assert status == 400 and body["error"]["param"] == "messages"
        status, _, body = post(emu.url, {**chat(), "max_tokens": 0})
        assert status == 400 and body["error"]["param"] == "max_tokens"
        stats = emu.stats()
        assert stats["admitted"] == 1 and stats["rejected_429"] == 0
        assert stats["prompt_tokens"] == 7 and stats["completion_tokens"] == 12


def test_429_body_and_headers_then_admitted_again_after_the_window() -> None:
    with EmulatorThread(rpm=2, tpm=10_000, window_s=1.5) as emu:
        t0 = time.monotonic()
        assert post(emu.url, chat())[0] == 200 and post(emu.url, chat())[0] == 200
        status, headers, body = post(emu.url, chat())
        assert status == 429
        assert body["error"]["type"] == "requests" and body["error"]["code"] == "rate_limit_exceeded"
        assert "Limit 2, Used 2" in body["error"]["message"]
        assert headers["retry-after"] == "2"  # whole seconds, rounded up from about 1.5
        assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-limit-requests"] == "2"
        time.sleep(max(0.0, 1.6 - (time.monotonic() - t0)))
        assert post(emu.url, chat())[0] == 200
        stats = emu.stats()
        assert stats["admitted"] == 3 and stats["rejected_429"] == stats["rejected_requests"] == 1
        assert len(stats["admitted_at"]) == 3 and len(stats["rejected_at"]) == 1


def test_tpm_429_and_a_request_that_can_never_fit() -> None:
    with EmulatorThread(tpm=20, window_s=60) as emu:
        assert post(emu.url, chat("abcd", max_tokens=9))[0] == 200  # 1 + 9 tokens
        assert post(emu.url, chat("abcd", max_tokens=9))[0] == 200  # 20: at the limit
        status, headers, body = post(emu.url, chat("abcd", max_tokens=1))
        assert status == 429 and body["error"]["type"] == "tokens" and int(headers["retry-after"]) >= 59
        status, headers, body = post(emu.url, chat("abcd", max_tokens=50))
        assert status == 429 and headers.get("x-should-retry") == "false" and "too large" in body["error"]["message"]
        assert emu.stats()["rejected_tokens"] == 2


def test_limit_is_exact_under_concurrent_load_and_requests_overlap() -> None:
    """40 clients at once against rpm=25: exactly 25 admitted, 15 refused; the service time overlaps."""
    with EmulatorThread(rpm=25, window_s=60, service_s=0.5) as emu:
        results: list[int] = []
        lock = threading.Lock()

        def one() -> None:
            status = post(emu.url, chat())[0]
            with lock:
                results.append(status)

        threads = [threading.Thread(target=one) for _ in range(40)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        assert sorted(results) == [200] * 25 + [429] * 15
        stats = emu.stats()
        assert stats["admitted"] == 25 and stats["rejected_429"] == 15 and stats["max_in_flight"] > 1
        assert elapsed < 25 * 0.5  # served concurrently, not one after the other


def test_openai_client_retries_after_the_retry_after_header() -> None:
    with EmulatorThread(rpm=1, window_s=1.0) as emu:
        client = openai.OpenAI(base_url=f"{emu.url}/v1", api_key="x", max_retries=2)
        client.chat.completions.create(model="emulated", messages=[{"role": "user", "content": "a"}], max_tokens=1)
        client.chat.completions.create(model="emulated", messages=[{"role": "user", "content": "a"}], max_tokens=1)
        stats = emu.stats()
        assert stats["admitted"] == 2 and stats["rejected_429"] >= 1
        assert stats["admitted_at"][1] - stats["admitted_at"][0] >= 1.0


def test_runs_as_its_own_process() -> None:
    with EmulatorProcess(rpm=1, window_s=30, service_s=0.01) as emu:
        assert post(emu.url, chat())[0] == 200 and post(emu.url, chat())[0] == 429
        stats = emu.stats()
        assert stats["admitted"] == 1 and stats["rejected_429"] == 1 and stats["limits"]["rpm"] == 1


def test_command_line_refuses_bad_options() -> None:
    proc = subprocess.run([sys.executable, "-m", "aios_bench.emulator", "--rpm", "0"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "at least 1" in proc.stderr


def test_listening_socket_lets_asyncio_set_tcp_nodelay() -> None:
    """asyncio sets TCP_NODELAY on accepted connections only when the listening socket says IPPROTO_TCP; without
    it every reply on a kept-alive connection (the openai client's) waited ~40 ms for a delayed ACK."""
    import socket

    from aios_bench.emulator import _bound_socket

    sock = _bound_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
