"""The contenders of ``aios bench agents``: what an agent calls, one class each, all with the same small interface.

- :class:`LlamaCppPython` (``baseline``): ``python -m llama_cpp.server``, one request at a time;
- :class:`LlamaServer` (``llama_server``): llama.cpp's own C++ server, ``llama-server --parallel N``: continuous
  batching over N slots, each slot keeping its KV cache between requests (the peer a user would run for many agents;
  built once by :mod:`aios_bench.llama_server_build`);
- :class:`KernelContender` (``fifo``, ``rr``, ``batching``): the kernel, each agent an SDK client with its own
  credential, on a private embedded kernel.

Each is started fresh for every workload and agent count by the benchmark (servers cache prompts) and given the
same model, llama.cpp threads, context per sequence and flash attention. An agent's client comes from ``agent(i)``;
``llm(client, messages, max_tokens)`` answers ``(prompt tokens, completion tokens, text)``, greedy.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.services.llm.service import default_model_path
from aios.services.tools.calculator import calculate
from aios.settings import Settings
from aios.wire.errors import ConfigError

TIMEOUT_S = 600.0
"""Per call; for the kernel at most its AIOS_MAX_SYSCALL_TIMEOUT_S (600 by default), past which it refuses a call."""
Messages = list[dict[str, str]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OpenAIServer:
    """A local OpenAI-compatible server in a child process; the agents call it directly and run the tool in their
    own process (no kernel)."""

    name = ""
    label = ""

    def argv(self, settings: Settings, port: int, slots: int) -> list[str]:
        raise NotImplementedError

    def __init__(self, settings: Settings, log: Callable[[str], None], slots: int) -> None:
        import openai

        self._openai = openai
        port = free_port()
        self.log_path = Path(settings.data_dir) / f"bench-{self.name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log(f"starting {self.label} on port {port}")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv(settings, port, slots), stdout=out, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise ConfigError(f"{self.label} exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    break
            except OSError:  # not listening yet, or 503 while llama-server loads the model
                if time.monotonic() > deadline:
                    self.close()
                    raise ConfigError(f"{self.label} did not start: see {self.log_path}") from None
                time.sleep(0.2)

    def agent(self, i: int) -> Any:
        return self._openai.OpenAI(base_url=self.base_url, api_key="none", timeout=TIMEOUT_S, max_retries=0)

    def llm(self, client: Any, messages: Messages, max_tokens: int) -> tuple[int, int, str]:
        # repeat_penalty 1.0: greedy like the kernel's engine, so that all generate the same tokens
        resp = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=max_tokens,
                                              temperature=0.0, extra_body={"repeat_penalty": 1.0})
        usage = resp.usage
        return int(usage.prompt_tokens), int(usage.completion_tokens), resp.choices[0].message.content or ""

    def tool(self, client: Any, expression: str) -> str:
        return str(calculate(expression))

    def close_agent(self, client: Any) -> None:
        client.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LlamaCppPython(OpenAIServer):
    """``python -m llama_cpp.server``: one request at a time (``slots`` is ignored)."""

    name, label = "baseline", "llama_cpp.server"

    def argv(self, settings: Settings, port: int, slots: int) -> list[str]:
        threads = str(settings.llm.n_threads or 2)
        # the engine's llama.cpp options: threads, context, flash attention, GPU layers (aios_bench.llama_server
        # loads the model by the kernel's rule for llama.cpp's repacked kernels)
        return [sys.executable, "-m", "aios_bench.llama_server", "--model", str(default_model_path()), "--port",
                str(port), "--host", "127.0.0.1", "--n_ctx", str(settings.llm.n_ctx), "--n_threads", threads,
                "--n_threads_batch", threads, "--flash_attn", "true", "--n_gpu_layers", str(settings.llm.n_gpu_layers)]


class LlamaServer(OpenAIServer):
    """``llama-server -np slots``: ``slots`` sequences of ``n_ctx`` tokens each (``-c`` is their sum), the
    kernel's batch size."""

    name, label = "llama_server", "llama-server"

    def __init__(self, settings: Settings, log: Callable[[str], None], slots: int, binary: Path | None) -> None:
        self.binary = binary
        """Found or built by :func:`aios_bench.llama_server_build.find_or_build`."""
        super().__init__(settings, log, slots)

    def argv(self, settings: Settings, port: int, slots: int) -> list[str]:
        if self.binary is None:
            raise ConfigError("llama-server is not built: see aios_bench.llama_server_build")
        threads = str(settings.llm.n_threads or 2)
        return [str(self.binary), "-m", str(default_model_path()), "-np", str(slots),
                "-c", str(settings.llm.n_ctx * slots), "-t", threads, "-tb", threads, "-fa", "on",
                "-ngl", str(settings.llm.n_gpu_layers if settings.llm.n_gpu_layers >= 0 else 999),
                "--host", "127.0.0.1", "--port", str(port)]


class KernelContender:
    """Agents as kernel clients, each with its own credential, on a private embedded kernel."""

    def __init__(self, name: str, settings: Settings, log: Callable[[str], None], **llm: Any) -> None:
        self.name = name
        data = Path(settings.data_dir) / f"bench-{name}"
        self.lk = LocalKernel(settings.updated(**{"data_dir": data, **llm}), resources=["llm", "tool"],
                              progress=log)
        self.lk.start()
        self.settings = self.lk.settings
        self._creds = Credentials(self.settings)

    def agent(self, i: int) -> Kernel:
        agent_id = f"bench-agent-{i}"
        secret = self._creds.create(agent_id, write_file=False).secret if self.settings.security.auth == "required" else None
        return Kernel(agent_id, settings=self.settings, credential=secret,
                      timeout_s=min(TIMEOUT_S, self.settings.syscalls.max_syscall_timeout_s))

    def llm(self, k: Kernel, messages: Messages, max_tokens: int) -> tuple[int, int, str]:
        result = k.call(k.llm_syscall(messages, "text", max_tokens=max_tokens))
        usage = result["usage"]
        return int(usage["prompt_tokens"]), int(usage["completion_tokens"]), result.get("content") or ""

    def tool(self, k: Kernel, expression: str) -> str:
        return str(k.call_tool("calculator", expression=expression))

    def close_agent(self, k: Kernel) -> None:
        k.close()

    def close(self) -> None:
        self.lk.stop()
