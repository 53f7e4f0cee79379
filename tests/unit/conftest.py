"""The fast tier's fixtures: one real embedded Redis for the whole session (flushed before each test), and
pipelines run in-process on it (:mod:`aios.testing`). No Celery worker, no subprocess kernel, no model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aios.services.tools.service import ToolService, builtin_registry
from aios.settings import Settings
from aios.testing import EmbeddedRedis, Harness

MakeSettings = Callable[..., Settings]
MakeHarness = Callable[..., Harness]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("unit-redis")) as server:
        yield server


@pytest.fixture
def server(redis_server: EmbeddedRedis) -> EmbeddedRedis:
    """The session's Redis, empty."""
    redis_server.flush()
    return redis_server


@pytest.fixture
def make_settings(server: EmbeddedRedis, tmp_path: Path) -> MakeSettings:
    """Settings on the session's Redis; approvals off unless a test turns them on (as tests/conftest.py does)."""
    def make(**overrides: Any) -> Settings:
        return server.settings(**{"data_dir": tmp_path, "approvals": "off", "default_timeout_s": 30.0, **overrides})
    return make


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings()


@pytest.fixture
def harness(make_settings: MakeSettings) -> Iterator[MakeHarness]:
    """``harness(resource, service, settings=None, **Harness options)``; closed after the test."""
    made: list[Harness] = []

    def make(resource: str, service: Any, *, settings: Settings | None = None, **kwargs: Any) -> Harness:
        made.append(Harness(settings or make_settings(), resource, service, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


def tools(settings: Settings) -> ToolService:
    """The tool worker's service with the built-in tools (no plugins)."""
    return ToolService(builtin_registry(), settings)
