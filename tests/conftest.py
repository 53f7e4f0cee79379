"""Shared fixtures: the brokers every integration test runs against, and kernels on them.

Three brokers: the embedded Redis (always), the real Redis at 127.0.0.1:6379 and the real RabbitMQ at
127.0.0.1:5672. A missing server skips its tests on a developer's machine and fails them in CI (``CI`` set).

Two tiers (tests/README.md): a test that starts a kernel worker or loads the local model must be marked
``integration``; one that does so unmarked fails at once, saying so (:func:`pytest_configure`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from aios.broker.app import make_app
from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.settings import QUEUES, Settings
from aios.wire.errors import ConfigError
from aios.wire.priority import DEFAULT_PRIORITY, MAX_PRIORITY, to_broker

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672//"
TEST_REDIS_DB = 13
STATE_REDIS_DB = 12
IN_CI = bool(os.environ.get("CI"))
ALL_BROKERS = ["embedded", "redis", "rabbitmq"]
# AIOS_TEST_BROKERS=embedded runs the integration tests on the embedded Redis only: for several test runs at once
# on one machine (they would flush each other's databases on the shared servers). CI always runs all three.
BROKERS = ALL_BROKERS if IN_CI else [
    b for b in (os.environ.get("AIOS_TEST_BROKERS") or ",".join(ALL_BROKERS)).split(",") if b in ALL_BROKERS]


_CURRENT: list[pytest.Item] = []
"""The test being set up, run or torn down (module- and session-scoped fixtures start in its setup)."""


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _CURRENT[:] = [item]


def _integration_only(what: str) -> None:
    item = _CURRENT[0] if _CURRENT else None
    if item is not None and item.get_closest_marker("integration") is None:
        pytest.fail(f"{item.nodeid} {what}, which only the integration tier may: mark it "
                    "@pytest.mark.integration, or use aios.testing (tests/README.md)", pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    """Keep the fast tier fast: outside ``integration`` tests, starting a kernel worker or loading the local
    model fails the test (the embedded Redis alone, ``LocalKernel(..., resources=())``, is allowed)."""
    from aios.services.llm.service import LlamaCppBackend, default_model_path

    start_worker, load_model = LocalKernel._start_worker, LlamaCppBackend.__init__

    def guarded_start_worker(self: LocalKernel, name: str, *args: Any, **kwargs: Any) -> None:
        _integration_only(f"starts a {name} worker")
        start_worker(self, name, *args, **kwargs)

    def guarded_load_model(self: LlamaCppBackend, settings: Settings) -> None:
        try:
            path: Path | None = Path(settings.llm.model) if settings.llm.model else default_model_path()
        except ConfigError:  # no model at all: the backend says so itself
            path = None
        if path is not None and path.is_file():  # a missing GGUF is only a ConfigError, fast
            _integration_only("loads the local model")
        load_model(self, settings)

    LocalKernel._start_worker = guarded_start_worker  # type: ignore[method-assign]
    LlamaCppBackend.__init__ = guarded_load_model  # type: ignore[method-assign]


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def redis_available() -> bool:
    if not _port_open(REDIS_HOST, REDIS_PORT):
        return False
    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def need_server(name: str, available: bool) -> None:
    if available:
        return
    if IN_CI:
        pytest.fail(f"{name} is not reachable on 127.0.0.1, and CI must run the tests against it")
    pytest.skip(f"no {name} on 127.0.0.1 (these tests run wherever one exists, and always in CI)")


def base_settings(tmp: Path, **overrides: Any) -> Settings:
    # Approvals are off here, so that tests of other things may delete and overwrite; test_approvals turns them on.
    # A small storage quota, so that the attack suite (aios_bench.attacks.storage) can fill one in a few syscalls.
    values: dict[str, Any] = {"data_dir": tmp, "default_timeout_s": 30.0, "worker_concurrency": 2, "approvals": "off",
                              "storage_quota_bytes": 4_000_000}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def state_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis for kernel state when the broker is RabbitMQ: the real one if present, else an embedded one."""
    if redis_available():
        url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{STATE_REDIS_DB}"
        redis.Redis.from_url(url).flushdb()
        yield url
        return
    holder = LocalKernel(base_settings(tmp_path_factory.mktemp("state-redis")), resources=())
    holder.start()
    try:
        yield holder.settings.state_redis_url()
    finally:
        holder.stop()


@pytest.fixture(scope="session")
def vector_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Milvus Lite store for the session's storage services (opening one costs about a second), for the
    FAKE embedder's dimension."""
    from aios.services.storage.embeddings import HashEmbedderFake
    from aios.services.storage.vectors import VectorStore

    store = VectorStore(str(tmp_path_factory.mktemp("vectors") / "milvus.db"), HashEmbedderFake().dim)
    yield store
    store.close()


@pytest.fixture
def vectors(vector_store: Any) -> Any:
    """The session's vector store, emptied: no test sees another's vectors."""
    with vector_store._lock:
        for collection in (vector_store.memory, vector_store.files):
            vector_store.client.delete(collection, filter='id != ""')
    return vector_store


def storage_service(settings: Settings, vectors: Any, **kwargs: Any) -> Any:
    """A storage service with the FAKE embedder on the shared store ``vectors`` (the ``vectors`` fixture)."""
    from aios.services.storage.embeddings import HashEmbedderFake
    from aios.services.storage.service import StorageService

    svc = StorageService(settings, embedder=HashEmbedderFake(), **kwargs)
    svc._vectors = vectors  # opened once per session instead of once per service
    return svc


def purge_rabbit_queues() -> None:
    with Connection(RABBIT_URL, connect_timeout=2) as conn:
        channel = conn.channel()
        for name in QUEUES.values():
            try:
                channel.queue_purge(name)
            except Exception:  # not declared yet
                channel = conn.channel()


def make_broker_settings(broker: str, tmp: Path, request: pytest.FixtureRequest, **overrides: Any) -> Settings:
    if broker == "embedded":
        return base_settings(tmp, **overrides)
    if broker == "redis":
        need_server("Redis", redis_available())
        url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{TEST_REDIS_DB}"
        redis.Redis.from_url(url).flushdb()
        return base_settings(tmp, broker_url=url, **overrides)
    if broker == "rabbitmq":
        need_server("RabbitMQ", _port_open("127.0.0.1", 5672))
        purge_rabbit_queues()
        state = request.getfixturevalue("state_redis")
        redis.Redis.from_url(state).flushdb()
        return base_settings(tmp, broker_url=RABBIT_URL, redis_url=state, **overrides)
    raise ValueError(broker)


@pytest.fixture(scope="module", params=BROKERS)
def kernel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    """Tool and storage workers on each broker, shared by a test module."""
    settings = make_broker_settings(request.param, tmp_path_factory.mktemp(f"kernel-{request.param}"), request)
    with LocalKernel(settings, resources=["tool", "storage"]) as lk:
        yield lk


def authorized(settings: Settings, agent_id: str, **kwargs: Any) -> Kernel:
    """An SDK client for ``agent_id`` with a freshly issued credential (as `aios agent create` would)."""
    Credentials(settings).create(agent_id)
    return Kernel(agent_id, settings=settings, **kwargs)


def await_reply(settings: Settings, agent_id: str, syscall_id: str, timeout_s: float = 15) -> str | None:
    """The (sealed) answer handed to ``agent_id``'s caller of ``syscall_id``, read as the kernel's operator can:
    its reply list on Redis, its reply queue on RabbitMQ. ``None`` if none came within ``timeout_s``."""
    from aios.broker.reply_queues import ReplyInbox
    from aios.state import keys
    from aios.wire.priority import is_redis_url

    if is_redis_url(settings.require_broker()):
        got = redis.Redis.from_url(settings.state_redis_url()).blpop([keys.reply(agent_id, syscall_id)],
                                                                     timeout=timeout_s)
        return None if got is None else got[1].decode()
    inbox = ReplyInbox(settings.require_broker(), agent_id)
    try:
        return inbox.get(syscall_id, timeout_s)
    finally:
        inbox.close()


def run_aios(lk: LocalKernel, *args: str) -> "subprocess.CompletedProcess[str]":
    """The ``aios`` command as an operator runs it against ``lk`` (a subprocess with the kernel's environment)."""
    return subprocess.run([sys.executable, "-m", "aios", *args], env=lk.env(), capture_output=True, text=True,
                          timeout=60)


def publish_raw(settings: Settings, body: bytes, *, content_type: str, task: str = "aios.tool",
                queue: str = QUEUES["tool"], message_id: str | None = None,
                headers: dict[str, Any] | None = None) -> str:
    """Publish bytes straight onto a kernel queue, bypassing the SDK: how a buggy or hostile client would
    (``headers``: more Celery headers, an ``eta`` say)."""
    message_id = message_id or uuid.uuid4().hex
    broker = settings.require_broker()
    q = Queue(queue, Exchange(queue, type="direct"), routing_key=queue, queue_arguments={"x-max-priority": MAX_PRIORITY})
    app = make_app(settings, name="raw-publisher")  # the kernel's transport options (priority steps, separator)
    with app.connection_for_write() as conn:
        Producer(conn.default_channel).publish(
            body, exchange=q.exchange, routing_key=queue, declare=[q], content_type=content_type,
            content_encoding="binary" if content_type != "application/json" else "utf-8",
            headers={"task": task, "id": message_id, "lang": "py", "argsrepr": "", "kwargsrepr": "", **(headers or {})},
            priority=to_broker(DEFAULT_PRIORITY, broker),
        )
    app.close()
    return message_id
