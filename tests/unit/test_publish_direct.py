"""An agent's publish on a Redis broker without Celery's machinery (:class:`aios.broker.publish.DirectRedis`) pushes
the message Celery and kombu push, on the same list: compared field by field on a real (embedded) Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from aios.broker.app import make_app
from aios.broker.publish import DirectRedis, Route, publish_syscall
from aios.state.connections import publish_client
from aios.wire.syscalls import ChatMessage, LLMSyscall
from tests.unit.conftest import MakeSettings


def _pushed(client: redis.Redis) -> dict[str, dict[str, Any]]:
    out = {}
    for key in client.keys("aios-direct-test*"):
        items = client.lrange(key, 0, -1)
        assert len(items) == 1
        out[key.decode()] = json.loads(items[0])
        client.delete(key)
    return out


@pytest.mark.parametrize("priority", [0, 5, 9])
def test_the_direct_message_is_celerys(make_settings: MakeSettings, priority: int) -> None:
    settings = make_settings()
    app = make_app(settings, name="aios-sdk-a1")
    direct = DirectRedis(publish_client(settings))
    assert direct.usable(app)
    syscall = LLMSyscall(agent_id="a1", messages=(ChatMessage(role="user", content="héllo"),), max_tokens=8)
    payload = syscall.model_dump(mode="json")
    route = Route("llm", "aios-direct-test", priority)
    try:
        publish_syscall(app, payload, syscall_id=syscall.id, kind="llm", agent_id="a1", route=route, from_agent=True)
        celery = _pushed(direct.client)
        publish_syscall(app, payload, syscall_id=syscall.id, kind="llm", agent_id="a1", route=route, from_agent=True,
                        direct=direct)
        ours = _pushed(direct.client)
    finally:
        direct.close()
        app.close()
    assert list(ours) == list(celery)  # the same list (the priority's)
    (lane,) = celery
    a, b = celery[lane], ours[lane]
    assert list(a) == list(b)
    for m in (a, b):
        assert isinstance(m["headers"].pop("aios_enqueued"), float)
        assert isinstance(m["properties"].pop("delivery_tag"), str)  # a fresh uuid each
    for part in ("headers", "properties"):
        assert a[part] == b[part], part
        assert list(a[part]) == list(b[part])
    assert a == b


def test_not_used_where_celery_must_publish(make_settings: MakeSettings) -> None:
    settings = make_settings()
    app = make_app(settings, name="aios-sdk-a1")
    try:
        app.conf.task_send_sent_event = True
        assert not DirectRedis.usable(app)
        app.conf.task_send_sent_event = False
        app.conf.task_compression = "gzip"
        assert not DirectRedis.usable(app)
        app.conf.task_compression = None
        from celery import signals

        def receiver(**_: Any) -> None:
            pass

        signals.before_task_publish.connect(receiver)
        try:
            assert not DirectRedis.usable(app)
        finally:
            signals.before_task_publish.disconnect(receiver)
        assert DirectRedis.usable(app)
    finally:
        app.close()
