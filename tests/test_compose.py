"""compose.yaml parses, and every command in it names a real entry point and queue."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from aios.settings import QUEUES

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_has_broker_three_workers_and_flower() -> None:
    services = _compose()["services"]
    assert {"redis", "llm-worker", "tool-worker", "storage-worker", "flower"} <= set(services)


def test_worker_commands_name_real_modules_and_kernel_queues() -> None:
    services = _compose()["services"]
    for resource in ("llm", "tool", "storage"):
        cmd = services[f"{resource}-worker"]["command"]
        assert cmd[:2] == ["celery", "-A"]
        module = cmd[2]
        assert module == f"workers.{resource}"
        assert importlib.util.find_spec(module) is not None, f"{module} is not importable"
        assert cmd[cmd.index("-Q") + 1] == QUEUES[resource]
        assert "-E" in cmd, "workers must send events for Flower"
        env = services[f"{resource}-worker"]["environment"]
        # The workers reach Redis as the kernel's own user (its default user is off) and hold the master key.
        assert env["AIOS_BROKER_URL"].startswith("redis://aios-kernel:") and "@redis:6379/" in env["AIOS_BROKER_URL"]
        assert env["AIOS_MASTER_KEY"].startswith("${AIOS_MASTER_KEY:?")
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("default") - 1:redis_cmd.index("default") + 2] == ["--user", "default", "off"]
    storage = services["storage-worker"]
    assert storage["environment"]["AIOS_MILVUS_URI"] == "http://milvus:19530", "storage workers share one Milvus"
    assert "milvus" in storage["depends_on"] and "redis" in storage["depends_on"]
    assert services["milvus"]["ports"] == ["127.0.0.1:19530:19530"]
    flower = services["flower"]["command"]
    assert flower[:4] == ["celery", "-A", "workers.tool", "flower"]


def test_dockerfile_installs_the_packages_compose_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for pkg in ("aios", "workers", "agents"):
        assert f"COPY {pkg} {pkg}" in dockerfile
