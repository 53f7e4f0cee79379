"""Agent frameworks, unchanged, on the kernel through the gateway (docs/frameworks.md): the OpenAI Agents SDK
with a function tool, and LangChain (langchain-openai) with a tool. Each run must arrive as syscalls of the agent
whose key the framework was given. The small local model is not asked to be wise: the tests check what the
frameworks did (tools called with well-formed arguments, replies read), not whether the answers are right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_gateway import Gateway, gw  # noqa: F401  (the fixture: a kernel with the gateway in front)

pytestmark = pytest.mark.integration


AGENTS_SDK_PROGRAM = """
import asyncio, json, sys
from agents import (Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool,
                    set_tracing_disabled)
from openai import AsyncOpenAI

set_tracing_disabled(True)  # no traces sent to OpenAI's servers
called = []

@function_tool
def add(a: int, b: int) -> int:
    \"\"\"Add two integers.\"\"\"
    called.append([a, b])
    return a + b

client = AsyncOpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
agent = Agent(name="adder", instructions="Use the add tool to answer.", tools=[add],
              model=OpenAIChatCompletionsModel(model="default", openai_client=client),
              model_settings=ModelSettings(tool_choice="required", max_tokens=64, temperature=0.0),
              tool_use_behavior="stop_on_first_tool")
result = asyncio.run(Runner.run(agent, "What is 2 + 3?", max_turns=2))
print(json.dumps({"called": called, "final": str(result.final_output)}))
"""


def test_openai_agents_sdk_runs_a_function_tool_through_the_kernel(gw: Gateway, tmp_path: Path) -> None:  # noqa: F811
    """An agent process of its own, as users run them. (The SDK's import name, ``agents``, is also this project's
    agents folder: here the program runs outside the checkout, where ``agents`` is the OpenAI Agents SDK.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    probe = subprocess.run([sys.executable, "-c", "import agents; agents.Runner"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"openai-agents is not installed: {probe.stderr.strip()[-200:]}")
    before = gw.calls("alice")
    done = subprocess.run([sys.executable, "-c", AGENTS_SDK_PROGRAM, gw.url, gw.keys["alice"]], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(out["called"]) == 1 and all(isinstance(x, int) for x in out["called"][0])
    assert out["final"] == str(sum(out["called"][0]))  # the tool's output ends the run
    assert gw.calls("alice") == before + 1


def test_langchain_calls_a_tool_and_reads_its_result_through_the_kernel(gw: Gateway) -> None:  # noqa: F811
    pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    llm = ChatOpenAI(model="default", base_url=gw.url, api_key=gw.keys["bob"], max_tokens=48, temperature=0,
                     max_retries=0)  # type: ignore[call-arg]
    before = gw.calls("bob")
    question = HumanMessage("What is 6 times 7? Use the multiply tool.")
    asked = llm.bind_tools([multiply], tool_choice="required").invoke([question])
    assert len(asked.tool_calls) >= 1 and asked.tool_calls[0]["name"] == "multiply"
    result = multiply.invoke(asked.tool_calls[0])  # a ToolMessage with the call's id
    final = llm.invoke([question, asked, result])
    assert isinstance(final.content, str) and final.content
    streamed = "".join(str(c.content) for c in llm.stream([question]))
    assert streamed == llm.invoke([question]).content
    assert gw.calls("bob") == before + 4
