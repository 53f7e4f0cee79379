"""End to end on the real local model: the ReAct agent through the whole kernel, `aios run`, `aios up`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aios import Kernel
from aios.ops.embedded import LocalKernel, kernel_file
from aios.state import keys
from aios_agents.react import agent as react
from tests.conftest import authorized, base_settings

pytestmark = pytest.mark.integration
CALC = {"name": "calculator", "description": "Evaluate arithmetic",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}


@pytest.fixture(scope="module")
def full_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    with LocalKernel(base_settings(tmp_path_factory.mktemp("e2e"), llm_n_ctx=2048)) as lk:
        yield lk


def test_react_agent_runs_through_the_whole_kernel(full_kernel: LocalKernel) -> None:
    state = redis.Redis.from_url(full_kernel.settings.state_redis_url())
    with authorized(full_kernel.settings, "react-e2e") as k:
        answer = react.run(k, "What is 17 * 23?")
        assert isinstance(answer, str) and answer.strip()
        # It went through the kernel: LLM syscalls answered by the LLM worker, its memory and files by storage.
        done = {key.decode(): int(v) for key, v in state.hgetall(keys.STATS_DONE).items()}
        assert done.get("llm:ok", 0) >= 1
        assert done.get("memory:ok", 0) >= 1 and done.get("storage:ok", 0) >= 1
        last = k.memory_get("last_answer")
        assert (last["task"], last["answer"]) == ("What is 17 * 23?", answer)
        assert json.loads(k.read_file(last["transcript"]))["answer"] == answer


def test_llm_output_modes_through_the_kernel(full_kernel: LocalKernel) -> None:
    with authorized(full_kernel.settings, "llm-modes") as k:
        text = k.llm_chat("What is the capital of France?", max_tokens=32)
        assert isinstance(text, str) and text.strip()
        obj = k.llm_chat_with_json_output(
            "Name a city as JSON.", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            max_tokens=48,
        )
        assert isinstance(obj["city"], str)
        calls = k.llm_chat_with_tool_call_output("Compute 6 * 7 with the calculator.", tools=[CALC], max_tokens=64)
        assert calls and calls[0]["name"] == "calculator" and isinstance(calls[0]["arguments"]["expression"], str)
        # A high-priority syscall and a batch in flight at once, all answered.
        answers = k.gather([k.llm_syscall(f"Say the number {i}.", "text", max_tokens=8, priority=i) for i in range(4)])
        assert len(answers) == 4 and all(isinstance(a["content"], str) for a in answers)


@pytest.mark.parametrize("resource", ["llm", "storage"])
def test_every_worker_type_refuses_pickle_and_keeps_serving(resource: str, full_kernel: LocalKernel) -> None:
    import pickle

    from aios.settings import QUEUES
    from tests.conftest import publish_raw

    state = redis.Redis.from_url(full_kernel.settings.state_redis_url())
    before = int(state.hget(keys.STATS_REJECTED, "content_type") or 0)
    publish_raw(full_kernel.settings, pickle.dumps(([{}], {}, {})), content_type="application/x-python-serialize",
                task=f"aios.{resource}", queue=QUEUES[resource])
    deadline = time.time() + 30
    while int(state.hget(keys.STATS_REJECTED, "content_type") or 0) == before:  # refused, never decoded
        assert time.time() < deadline, "the pickle message was never refused"
        time.sleep(0.05)
    with authorized(full_kernel.settings, "after-pickle") as k:
        assert k.memory_list() == [] and isinstance(k.llm_chat("Hi", max_tokens=4), str)


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOS_")}
    env["AIOS_DATA_DIR"] = str(data_dir)
    env["AIOS_LLM_N_CTX"] = "2048"
    return env


def _processes_with_env(var: str, value: str) -> list[int]:
    """Processes still alive whose environment has ``var=value``: orphans of a kernel that should be gone."""
    needle = f"{var}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().split()[2]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _aios(*args: str) -> list[str]:
    return [sys.executable, "-m", "aios", *args]


def test_aios_run_starts_the_embedded_kernel_answers_and_leaves_nothing_behind(tmp_path: Path) -> None:
    done = subprocess.run(_aios("run", "react", "What is 17 * 23?"), env=_env(tmp_path), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the agent printed no answer"
    assert "embedded kernel" in done.stderr
    time.sleep(0.5)
    assert _processes_with_env("AIOS_DATA_DIR", str(tmp_path)) == []


def test_aios_run_unknown_agent_says_which_exist(tmp_path: Path) -> None:
    done = subprocess.run(_aios("run", "nosuch", "x"), env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "known agents: coder, pair, plan_execute, react, reflexion" in done.stderr


def test_aios_up_serves_other_processes_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = _env(tmp_path)
    up = subprocess.Popen(_aios("up"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not kernel_file(base_settings(tmp_path)).exists():
            assert up.poll() is None, up.stderr.read() if up.stderr else ""
            assert time.monotonic() < deadline, "aios up did not come up"
            time.sleep(0.2)
        # Another process, with no configuration but the data dir, finds the kernel.
        made = subprocess.run(_aios("agent", "create", "neighbour"), env=env, capture_output=True, text=True,
                              timeout=60)
        assert made.returncode == 0, made.stderr
        with Kernel("neighbour", settings=base_settings(tmp_path)) as k:
            assert k.call_tool("calculator", expression="6 * 7")["value"] == 42
        status = subprocess.run(_aios("status", "--json"), env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert len(info["workers"]) == 3 and set(info["queues"]) == {"aios.llm", "aios.tool", "aios.storage"}
        assert info["answered"].get("tool:ok", 0) >= 1
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    time.sleep(0.5)
    assert _processes_with_env("AIOS_DATA_DIR", str(tmp_path)) == []
    assert not kernel_file(base_settings(tmp_path)).exists()


@pytest.mark.parametrize("how", ["aios", "celery"])
def test_a_worker_started_by_hand_serves_its_queue(how: str, tmp_path: Path) -> None:
    """`aios worker tool` and plain `celery -A workers.tool worker` join a running kernel's broker."""
    with LocalKernel(base_settings(tmp_path), resources=()) as lk:  # only the embedded broker
        argv = (_aios("worker", "tool", "--loglevel", "WARNING") if how == "aios" else
                [sys.executable, "-m", "celery", "-A", "workers.tool", "worker", "--loglevel", "WARNING"])
        worker = subprocess.Popen(argv, env=lk.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            with authorized(lk.settings, "by-hand", timeout_s=60) as k:
                assert k.call_tool("calculator", expression="2 ** 10")["value"] == 1024
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)


def test_flower_sees_the_workers_and_their_syscalls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import urllib.request

    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with LocalKernel(base_settings(tmp_path), resources=["tool"], extra_worker_args=("-E",)) as lk:
        lk.start_flower(port)
        with authorized(lk.settings, "watched") as k:
            # Flower sees only events sent after it connects: keep making syscalls until one shows up as done.
            sent: list[str] = []
            deadline = time.monotonic() + 60
            while True:
                sent.append(k.submit(k.tool_syscall("echo", {"text": "hi"})).id)
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=5) as r:
                        tasks = json.loads(r.read())
                    seen = [i for i in sent if tasks.get(i, {}).get("state") == "SUCCESS"]
                    if seen:
                        syscall_id = seen[0]
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "Flower never showed a syscall"
                time.sleep(0.5)
        assert tasks[syscall_id]["name"] == "aios.tool"
        # Its readable name, with what it carries redacted: never the payload.
        assert tasks[syscall_id]["args"] == "call_tool echo agent=watched arguments=[redacted 13 chars] priority=5"
        assert tasks[syscall_id]["kwargs"] == "{}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"flower_events_total" in r.read()


def _wait_for_line(stream: object, needle: str, timeout_s: float = 120) -> None:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout_s
    buf = ""
    while needle not in buf:
        assert time.monotonic() < deadline, f"never saw {needle!r}; got {buf!r}"
        if sel.select(timeout=0.5):
            chunk = os.read(stream.fileno(), 4096).decode()  # type: ignore[attr-defined]
            assert chunk, f"stream closed before {needle!r}; got {buf!r}"
            buf += chunk


def _no_orphans_within(data_dir: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := _processes_with_env("AIOS_DATA_DIR", str(data_dir))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], [_cmdline(pid) for pid in left]


def _cmdline(pid: int) -> str:
    try:
        return f"{pid}: " + (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid}: gone"


def test_ctrl_c_during_aios_run_stops_the_embedded_kernel(tmp_path: Path) -> None:
    run = subprocess.Popen(_aios("run", "-v", "react", "What is 17 * 23?"), env=_env(tmp_path),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_line(run.stderr, "kernel ready")
    run.send_signal(signal.SIGINT)
    rc = run.wait(timeout=60)
    assert rc == 130, run.stderr.read().decode() if run.stderr else ""
    _no_orphans_within(tmp_path)


def test_kill_9_of_aios_up_leaves_no_orphans(tmp_path: Path) -> None:
    up = subprocess.Popen(_aios("up"), env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_line(up.stderr, "kernel up")
    up.kill()
    up.wait()
    _no_orphans_within(tmp_path)
