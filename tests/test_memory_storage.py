"""The memory and storage managers end to end: SDK -> broker -> storage worker with the real embedding model
(all-MiniLM-L6-v2), the real Milvus Lite and the kernel's Redis as the fast tier; durability under kill -9."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aios import AccessDenied, Conflict, Kernel, NotFound
from aios.ops.embedded import LocalKernel
from aios.state import keys
from tests.conftest import authorized, base_settings

pytestmark = pytest.mark.integration
BUDGET = 400


@pytest.fixture(scope="module")
def lk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    settings = base_settings(tmp_path_factory.mktemp("memstore"), memory_budget_bytes=BUDGET, worker_concurrency=4)
    with LocalKernel(settings, resources=["storage"]) as k:
        yield k


@pytest.fixture
def agent(lk: LocalKernel) -> Iterator[Kernel]:
    with authorized(lk.settings, f"mem-{uuid.uuid4().hex[:6]}", timeout_s=60) as k:
        yield k


FACTS = {
    "cat": "The cat is asleep on the living room sofa.",
    "revenue": "Quarterly revenue grew by twelve percent.",
    "paris": "Paris is the capital city of France.",
    "python": "Use a virtual environment to install Python packages.",
}


def test_memory_calls_search_by_meaning_and_eviction(lk: LocalKernel, agent: Kernel) -> None:
    for key, text in FACTS.items():
        assert agent.create_memory(text, key=key) == key
    with pytest.raises(Conflict, match="already exists"):
        agent.create_memory("again", key="cat")
    hits = agent.search_memories("where is the kitten napping?", k=2)
    assert hits[0]["key"] == "cat" and hits[0]["value"] == FACTS["cat"]
    assert agent.search_memories("French capital", k=1)[0]["key"] == "paris"
    # Overflow the budget: the first items move to the durable tier, and stay searchable and readable.
    for i in range(30):
        agent.memory_put(f"filler-{i}", f"filler note number {i} about nothing in particular")
    fast = redis.Redis.from_url(lk.settings.state_redis_url())
    held = fast.hgetall(keys.memfast(agent.agent_id))
    assert 0 < sum(len(v) for v in held.values()) <= BUDGET
    assert b"cat" not in held
    stats = agent.memory_stats()
    assert stats["fast_bytes"] <= BUDGET and stats["items"] == 34 and stats["budget_bytes"] == BUDGET
    assert agent.search_memories("sleeping pet on the couch", k=1)[0]["key"] == "cat"  # found in the durable tier
    assert agent.get_memory("cat") == FACTS["cat"]  # swapped back in
    assert b"cat" in fast.hkeys(keys.memfast(agent.agent_id))
    assert agent.memory_stats()["misses"] >= 1
    agent.update_memory("cat", "The cat went outside.")
    assert agent.get_memory("cat") == "The cat went outside."
    with pytest.raises(NotFound):
        agent.update_memory("ghost", 1)
    assert agent.delete_memory("paris") == {"key": "paris", "deleted": True}
    assert all(h["key"] != "paris" for h in agent.search_memories("French capital", k=5))


def test_versions_rollback_and_retrieval(agent: Kernel) -> None:
    assert agent.mount()["mounted"] is True
    assert agent.create_dir("reports") == {"path": "reports", "created": True}
    assert agent.create_file("reports/q1.md", "draft one")["version"] == 1
    with pytest.raises(Conflict, match="already exists"):
        agent.create_file("reports/q1.md", "again")
    t_between = time.time()
    time.sleep(0.05)
    assert agent.write_file("reports/q1.md", "draft two")["version"] == 2
    assert agent.write_file("reports/q1.md", "draft three")["version"] == 3
    assert [v["version"] for v in agent.file_versions("reports/q1.md")] == [1, 2, 3]
    assert agent.rollback_file("reports/q1.md", 1) == {"path": "reports/q1.md", "bytes": 9, "version": 4,
                                                       "restored": 1}
    assert agent.read_file("reports/q1.md") == "draft one"
    agent.write_file("reports/q1.md", "draft five")
    assert agent.rollback_file("reports/q1.md", at=t_between)["restored"] == 1
    assert agent.file_versions("reports/q1.md")[-1]["note"] == "rollback to 1"
    with pytest.raises(NotFound, match=r"has no version 99; its versions are \[1, 2, 3, 4, 5, 6\]"):
        agent.rollback_file("reports/q1.md", 99)
    agent.write_file("notes/garden.txt", "Tomatoes need sun and regular watering in summer.")
    agent.write_file("notes/tax.txt", "The income tax return is due at the end of April.")
    hits = agent.retrieve_file("when do I water the vegetables?", k=2)
    assert hits[0]["path"] == "notes/garden.txt" and "Tomatoes" in hits[0]["snippet"]
    agent.delete("notes/garden.txt")
    assert all(h["path"] != "notes/garden.txt" for h in agent.retrieve_file("water the vegetables", k=5))


def test_paths_cannot_leave_the_namespace_in_new_ops(agent: Kernel) -> None:
    for call in (lambda: agent.create_file("../escape.txt", "x"), lambda: agent.create_dir("/abs"),
                 lambda: agent.rollback_file("../../etc/passwd", 1), lambda: agent.file_versions("a/../../b"),
                 lambda: agent.share_file("/etc/passwd", "someone")):
        with pytest.raises(AccessDenied, match=r"absolute|'\.\.'"):
            call()
    with pytest.raises(ValueError, match="exactly one of version or at"):  # refused by the SDK, before sending
        agent.rollback_file("x.txt")


def test_share_file_gives_one_file_only(lk: LocalKernel, agent: Kernel) -> None:
    agent.write_file("shared/plan.txt", "the plan")
    agent.write_file("private.txt", "mine")
    with authorized(lk.settings, f"peer-{uuid.uuid4().hex[:6]}", timeout_s=30) as peer:
        with pytest.raises(AccessDenied):
            peer.read_file("shared/plan.txt", owner=agent.agent_id)
        assert agent.share_file("shared/plan.txt", peer.agent_id) == {
            "path": "shared/plan.txt", "shared_with": peer.agent_id, "mode": "read"}
        assert peer.read_file("shared/plan.txt", owner=agent.agent_id) == "the plan"
        assert peer.read_file("./shared//plan.txt", owner=agent.agent_id) == "the plan"
        with pytest.raises(AccessDenied):
            peer.write_file("shared/plan.txt", "hijacked", owner=agent.agent_id)  # read share only
        with pytest.raises(AccessDenied):
            peer.read_file("private.txt", owner=agent.agent_id)
        agent.share_file("shared/plan.txt", peer.agent_id, mode="write")
        assert peer.write_file("shared/plan.txt", "edited", owner=agent.agent_id)["version"] == 2
    assert agent.read_file("shared/plan.txt") == "edited"


def test_concurrent_compare_and_set_writers_lose_no_update(lk: LocalKernel, agent: Kernel) -> None:
    """Semantics: write_file(if_version=v) succeeds only if the file is still at version v; a loser gets
    Conflict, re-reads and retries. N writers appending M lines each must leave all N*M lines."""
    agent.write_file("log.txt", "")
    writers, lines, errors = 6, 4, []
    conflicts = [0]

    def writer(w: int) -> None:
        try:
            with Kernel(agent.agent_id, settings=lk.settings, timeout_s=60) as k:  # its own client, same credential
                for i in range(lines):
                    while True:
                        content, version = k.read_file_versioned("log.txt")
                        try:
                            k.write_file("log.txt", content + f"w{w}-{i}\n", if_version=version)
                            break
                        except Conflict:
                            conflicts[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = agent.read_file("log.txt").splitlines()
    assert sorted(final) == sorted(f"w{w}-{i}" for w in range(writers) for i in range(lines))
    assert agent.file_versions("log.txt")[-1]["version"] == 1 + writers * lines
    with pytest.raises(Conflict, match="is at version 25, not 3"):
        agent.write_file("log.txt", "stale", if_version=3)


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, memory_budget_bytes=BUDGET)
    with LocalKernel(settings, resources=["storage"]) as lk, authorized(lk.settings, "durable", timeout_s=60) as k:
        k.memory_put("fact", {"answer": 42})
        k.create_memory("the submarine dives below the arctic ice", key="sub")
        k.write_file("a/b.txt", "version one")
        k.write_file("a/b.txt", "version two")
        lk.kill_worker("storage")  # SIGKILL right after the acknowledgements
        lk.start_worker("storage")
        assert k.memory_get("fact") == {"answer": 42}
        assert k.read_file("a/b.txt") == "version two"
        assert [v["version"] for v in k.file_versions("a/b.txt")] == [1, 2]
        assert k.search_memories("ship under the polar ice", k=1)[0]["key"] == "sub"
