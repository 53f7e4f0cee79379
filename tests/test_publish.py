"""The SDK's publish on a Redis broker: one LPUSH of the message Celery and kombu would push, from the sync and the
asyncio client alike, answered by the workers (``tests/unit/test_publish_direct.py`` compares the messages)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk import AsyncKernel
from tests.conftest import authorized, make_broker_settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_both_clients_publish_without_celery_and_are_answered(broker: str, tmp_path: Path,
                                                              request: pytest.FixtureRequest,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery's send_task is never called for an agent's syscall on a Redis broker (made to fail here), and the
    workers answer what the SDK pushed, from both clients."""
    settings = make_broker_settings(broker, tmp_path, request)

    def no_celery(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("published through Celery's send_task")

    with LocalKernel(settings, resources=["tool"]) as lk:
        key = Credentials(lk.settings).create("both", write_file=False).key
        monkeypatch.setattr("celery.Celery.send_task", no_celery)
        with authorized(lk.settings, "sync") as k:
            assert k.call_tool("calculator", {"expression": "6*7"})["value"] == 42

        async def go() -> list[Any]:
            async with AsyncKernel("both", settings=lk.settings, credential=key) as ak:
                return await ak.gather([ak.tool_syscall("calculator", {"expression": f"{i}*2"}) for i in range(20)])

        assert [r["value"] for r in asyncio.run(go())] == [i * 2 for i in range(20)]
