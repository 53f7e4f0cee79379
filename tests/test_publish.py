"""The SDK's publish on a Redis broker: one LPUSH of the message Celery and kombu would push (the worker's gate
accepts exactly their envelope), from the sync and the asyncio client alike."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from aios.broker.publish import Route, publish_syscall
from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk import AsyncKernel
from aios.settings import broker_to_redis_py
from tests.conftest import authorized, make_broker_settings

pytestmark = pytest.mark.integration

VARYING = {("headers", "aios_enqueued"), ("properties", "delivery_tag"), ("properties", "reply_to")}
"""What differs between two publishes of the same syscall: when, the broker's delivery tag, the client's id."""


def _pushed(client: redis.Redis, lane: str) -> dict[str, Any]:
    [raw] = client.lrange(lane, 0, -1)
    client.delete(lane)
    return json.loads(raw)


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_the_sdks_lpush_is_the_message_celery_would_publish(broker: str, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    settings = make_broker_settings(broker, tmp_path, request)
    with LocalKernel(settings, resources=()) as lk, authorized(lk.settings, "pub") as k:
        lists = redis.Redis.from_url(broker_to_redis_py(lk.settings.require_broker()))
        syscall = k.tool_syscall("calculator", {"expression": "6*7"}, priority=7)
        payload = k._signed(syscall)
        route = Route("tool", "aios.tool", 7)
        lane = "aios.tool:2"  # kernel priority 7 is kombu's step 2
        publish_syscall(k._app, payload, syscall_id=syscall.id, kind="tool", agent_id="pub", route=route,
                        from_agent=True)  # Celery's send_task, through kombu
        celery = _pushed(lists, lane)
        publish_syscall(k._app, payload, syscall_id=syscall.id, kind="tool", agent_id="pub", route=route,
                        from_agent=True, lists=k._broker_redis())
        ours = _pushed(lists, lane)
        for part in ("headers", "properties"):
            assert list(ours[part]) == list(celery[part]), f"the same {part}, in the same order"
            for name, value in celery[part].items():
                if (part, name) not in VARYING:
                    assert ours[part][name] == value, f"{part}.{name}"
        assert {k_: v for k_, v in ours.items() if k_ not in ("headers", "properties", "body")} == \
            {k_: v for k_, v in celery.items() if k_ not in ("headers", "properties", "body")}
        assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(celery["body"]))


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
