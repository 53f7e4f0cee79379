"""Resource governance shared by every worker and process: quotas, leases, attained service, aging.

Everything here is state in the kernel's Redis, changed by Lua scripts so that each decision is atomic across
any number of workers on any number of machines (Celery's own ``rate_limit`` is per worker and cannot do this).

**Quotas** (``AIOS_QUOTAS``): per scope, ``rpm`` and ``tpm`` over a sliding window (``AIOS_QUOTA_WINDOW_S``),
``concurrency`` as leases, and ``token_budget`` per agent. A worker asks :meth:`Governor.admit` before it runs
a syscall; every scope that applies must have room, and the syscall is then recorded in all of them at once
(all or nothing). An LLM syscall reserves ``estimated prompt tokens + max_tokens``; :meth:`Governor.release`
corrects that to the real usage, and from then on counts the request in the window from when it ended (a
provider counts it on arrival, after the kernel admitted it: counting from admission would free its slot
early). Past a limit the worker waits for the turn the script names (``wait``, the default), a short while in its
thread and then put off in the kernel's Redis (so that no thread waits long enough for the broker to redeliver the
message), until the syscall's deadline; or it answers :class:`QuotaExceeded` naming the limit (``fail``). A spent
token budget always fails: waiting would not help.

**Leases** hold concurrency slots (a scope's ``concurrency``, and every tool that declares ``max_concurrency``,
across all workers). A lease expires ``LEASE_TTL_S`` after it was last renewed; a thread in each process renews
the leases it holds, so a worker that dies (kill -9, lost machine) leaks its slots for at most that long.

**Attained service** per agent and resource (worker seconds) feeds the ``fair`` policy (:class:`FairState`,
read by the SDK when it submits), and per-agent counters feed ``aios status`` and the metrics endpoint. Both
are written in the same transaction as the syscall's reply.

**Aging** (``priority`` policy, Redis brokers): :class:`Ager` moves syscalls that have waited ``AIOS_AGING_S``
up one priority list per step, in a Lua script (``aios/state/lua/age.lua``) over kombu's per-priority lists.
RabbitMQ cannot reorder a queue: there, strict priority has no aging (use ``fair``, or keep high-priority load
below capacity).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from aios.broker.queues import priority_lists
from aios.policy.scheduler import make_policy
from aios.settings import QuotaSpec, Settings
from aios.state import keys, scripts
from aios.state.periodic import Periodic
from aios.state.replies import WAITS_KEPT
from aios.wire.errors import QuotaExceeded
from aios.wire.syscalls import LLMSyscall, Response, Syscall, ToolSyscall

log = logging.getLogger("aios.governor")

LEASE_TTL_S = 30.0
"""A concurrency lease not renewed for this long is free again (a dead worker's slot)."""
NONE = -1  # "no limit" in the scripts' arguments


@dataclass(frozen=True)
class Scope:
    name: str
    """The scope a limit is counted in: ``llm``, ``agent:bob``, ``group:research``, ``tool:python``."""
    spec: QuotaSpec
    configured_as: str
    """The ``AIOS_QUOTAS`` key it comes from (``agent:*`` for every agent), or ``tool max_concurrency``."""


@dataclass
class Admission:
    syscall_id: str
    agent_id: str
    scopes: list[Scope]
    tokens: int
    waited_s: float = 0.0
    leases: list[str] = field(default_factory=list)


class Throttled(Exception):
    """No room yet, and the wait would be longer than the caller of :meth:`Governor.admit` allowed."""

    def __init__(self, retry_s: float, message: str) -> None:
        super().__init__(message)
        self.retry_s = retry_s
        """When the window frees room (seconds from now); 0 when no time is known (a concurrency limit)."""


def estimate_tokens(syscall: LLMSyscall) -> int:
    """An upper estimate of an LLM syscall's tokens: about 4 characters per token, plus per-message overhead,
    plus all of ``max_tokens``. It is corrected to the real usage when the syscall ends."""
    chars = sum(len(m.content) for m in syscall.messages)
    schema_chars = sum(len(str(t.parameters)) + len(t.description) for t in syscall.tools)
    if syscall.json_schema:
        schema_chars += len(str(syscall.json_schema))
    return math.ceil((chars + schema_chars) / 4) + 4 * len(syscall.messages) + syscall.max_tokens


class Governor:
    """One per worker process: quotas and leases around each syscall, accounting in its reply."""

    def __init__(self, settings: Settings, client: redis.Redis, resource: str) -> None:
        self.settings = settings
        self.redis = client
        self.resource = resource
        self._admit = scripts.register(client, "quota_admit")
        self._release = scripts.register(client, "quota_release")
        self._renew = scripts.register(client, "lease_renew")
        self._account = scripts.register(client, "account")
        self._held: dict[tuple[str, str], float] = {}  # (lease key, syscall id) -> renewal due
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    # -- which limits apply ---------------------------------------------------------------------------

    def scopes(self, syscall: Syscall, service: Any = None) -> list[Scope]:
        quotas = self.settings.quota.scopes
        out: list[Scope] = []
        if isinstance(syscall, LLMSyscall) and "llm" in quotas:
            out.append(Scope("llm", quotas["llm"], "llm"))
        own = f"agent:{syscall.agent_id}"
        if own in quotas:
            out.append(Scope(own, quotas[own], own))
        elif "agent:*" in quotas:
            out.append(Scope(own, quotas["agent:*"], "agent:*"))
        if any(k.startswith("group:") for k in quotas):
            from aios.policy.access import AccessManager  # the groups an agent is in, from both sources

            for g in sorted(AccessManager(self.settings, self.redis).groups_of(syscall.agent_id)):
                if f"group:{g}" in quotas:
                    out.append(Scope(f"group:{g}", quotas[f"group:{g}"], f"group:{g}"))
        if isinstance(syscall, ToolSyscall):
            name = f"tool:{syscall.tool}"
            if name in quotas:
                out.append(Scope(name, quotas[name], name))
            else:
                limit = service.concurrency_limit(syscall) if service is not None else None
                if limit is not None:
                    out.append(Scope(name, QuotaSpec(concurrency=limit), "tool max_concurrency"))
        return out

    # -- admission ------------------------------------------------------------------------------------

    def admit(self, syscall: Syscall, service: Any = None, wait_s: float | None = None) -> Admission | None:
        """Wait for room in every scope that applies (or fail, by ``AIOS_QUOTA_MODE``); ``None``: no limits.

        ``wait_s``: wait at most this long here, then raise :class:`Throttled` (the worker puts the syscall off
        instead of holding a thread until its deadline); ``None``: up to the deadline."""
        scopes = self.scopes(syscall, service)
        if not scopes:
            return None
        tokens = estimate_tokens(syscall) if isinstance(syscall, LLMSyscall) else 0
        adm = Admission(syscall.id, syscall.agent_id, scopes, tokens)
        keys_: list[str] = []
        argv: list[Any] = [0, self.settings.quota.window_s, syscall.id, tokens, LEASE_TTL_S, len(scopes),
                           syscall.agent_id]
        for s in scopes:
            keys_ += [keys.quota(s.name, "req"), keys.quota(s.name, "tok"), keys.quota(s.name, "lease")]
            argv += [s.name, _n(s.spec.rpm), _n(s.spec.tpm), _n(s.spec.concurrency), _n(s.spec.token_budget)]
        keys_ += [keys.TOKENS_USED, keys.QUOTA_SCOPES]
        start = time.time()
        pause = 0.02
        while True:
            now = time.time()
            argv[0] = now
            got = self._admit(keys=keys_, args=argv)
            if int(got[0]) == 0:
                break
            scope = scopes[int(got[0]) - 1]
            limit = got[1].decode() if isinstance(got[1], bytes) else str(got[1])
            retry = float(got[2])
            if retry < 0 or self.settings.quota.mode == "fail" or now + max(retry, pause) > syscall.deadline:
                raise QuotaExceeded(self._explain(scope, limit, syscall, tokens, retry, now - start))
            # The script names when the window frees room; concurrency has no such time: poll, backing off.
            delay = retry if retry > 0 else pause
            if wait_s is not None and now + delay - start > wait_s:
                raise Throttled(retry, f"quota {scope.name!r}: its {limit} limit is reached (waited {now - start:.1f} s)")
            pause = min(0.5, pause * 1.5)
            time.sleep(min(delay + 0.005, max(0.0, syscall.deadline - time.time())))
        adm.waited_s = time.time() - start
        for s in scopes:
            if s.spec.concurrency is not None:
                adm.leases.append(keys.quota(s.name, "lease"))
        if adm.leases:
            self._hold(adm)
        return adm

    def _explain(self, scope: Scope, limit: str, syscall: Syscall, tokens: int, retry: float, waited: float) -> str:
        spec = scope.spec
        value = {"rpm": spec.rpm, "tpm": spec.tpm, "concurrency": spec.concurrency,
                 "token_budget": spec.token_budget}[limit]
        what = {"rpm": f"{value} requests per {self.settings.quota.window_s:g} s",
                "tpm": f"{value} tokens per {self.settings.quota.window_s:g} s",
                "concurrency": f"{value} at once", "token_budget": f"a budget of {value} tokens"}[limit]
        where = f"quota {scope.name!r}" + (f" (from {scope.configured_as!r})" if scope.configured_as != scope.name
                                             else "")
        if limit == "token_budget":
            return (f"{where}: {what} is spent for agent {syscall.agent_id!r} (this syscall needs up to {tokens}); "
                    f"raise it in AIOS_QUOTAS or reset the account with `aios quota reset {syscall.agent_id}`")
        if limit == "tpm" and retry < 0:
            return (f"{where}: this syscall needs up to {tokens} tokens, more than the limit of {what}; lower "
                    "max_tokens or the prompt, or raise the limit in AIOS_QUOTAS")
        if self.settings.quota.mode == "fail":
            return f"{where}: limit of {what} reached (AIOS_QUOTA_MODE=fail); retry in {max(retry, 0.1):.1f} s"
        return (f"{where}: limit of {what} still reached after waiting {waited:.1f} s, at the syscall's deadline; "
                "raise timeout_s or the limit in AIOS_QUOTAS")

    def release(self, adm: Admission | None, response: Response | None) -> None:
        """Free the leases, correct the token reservation to the real usage, and count the request in the rpm/tpm
        windows from now (when it ended) rather than from its admission (see ``lua/quota_release.lua``)."""
        if adm is None:
            return
        if adm.leases:
            self._unhold(adm)
        actual = -1
        if adm.tokens and response is not None:
            usage = (response.result or {}).get("usage") if isinstance(response.result, dict) else None
            if isinstance(usage, dict):
                actual = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
            elif response.error is not None:
                actual = 0  # it failed: the provider did not charge (or we cannot know it did)
        keys_: list[str] = []
        for s in adm.scopes:
            keys_ += [keys.quota(s.name, "req"), keys.quota(s.name, "tok"), keys.quota(s.name, "lease")]
        keys_.append(keys.TOKENS_USED)
        self._release(keys=keys_, args=[adm.syscall_id, actual, adm.agent_id, "1" if adm.tokens else "0",
                                        len(adm.scopes), time.time(), self.settings.quota.window_s])

    # -- leases -----------------------------------------------------------------------------------------

    def _hold(self, adm: Admission) -> None:
        with self._held_lock:
            for k in adm.leases:
                self._held[(k, adm.syscall_id)] = time.time() + LEASE_TTL_S / 3
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew_loop, name="aios-lease-renewer", daemon=True)
                self._renewer.start()

    def _unhold(self, adm: Admission) -> None:
        with self._held_lock:
            for k in adm.leases:
                self._held.pop((k, adm.syscall_id), None)

    def _renew_loop(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.time()
            with self._held_lock:
                due = [key for key, at in self._held.items() if at <= now]
                for key in due:
                    self._held[key] = now + LEASE_TTL_S / 3
            for lease, syscall_id in due:
                try:
                    self._renew(keys=[lease], args=[now + LEASE_TTL_S, syscall_id])
                except redis.RedisError as exc:  # the next round tries again; the lease outlives a blip
                    log.warning("could not renew lease %s of %s: %s", lease, syscall_id, exc)

    # -- accounting -------------------------------------------------------------------------------------

    def account_slice(self, syscall: Syscall, started: float, finished: float) -> None:
        """Account one time slice of a preempted syscall (its wait is counted when it is finally answered)."""
        try:
            self._account(keys=[keys.attained(self.resource), keys.agent_stats(self.resource),
                                keys.waits(self.resource)],
                          args=[syscall.agent_id, max(0.0, finished - started), 0.0, WAITS_KEPT, "slice"])
        except redis.RedisError as exc:  # accounting must never lose the syscall itself
            log.warning("could not account a slice of %s: %s", syscall.id, exc)


def _n(value: int | None) -> int:
    return NONE if value is None else value


class FairState:
    """SDK side of the ``fair`` policy: one script call per submission."""

    def __init__(self, client: redis.Redis) -> None:
        self._excess = scripts.register(client, "fair_excess")

    def excess(self, resource: str, agent_id: str, now: float, window_s: float) -> float:
        """``agent_id``'s attained service on ``resource`` above the least-served active agent, in seconds."""
        return float(self._excess(keys=[keys.attained(resource), keys.active(resource)],
                                  args=[agent_id, now, window_s]))


# -- aging ------------------------------------------------------------------------------------------------

class Ager:
    """Moves long-waiting syscalls up one priority list per ``aging_s`` (Redis brokers, ``priority`` policy)."""

    MAX_MOVES = 200

    def __init__(self, broker: redis.Redis, queue: str, aging_s: float) -> None:
        self.broker = broker
        self.lists = priority_lists(queue)
        self.aging_s = aging_s
        self._age = scripts.register(broker, "age")
        self._thread = Periodic("aios-ager", min(1.0, aging_s / 4), self.run_once)

    def run_once(self, now: float | None = None) -> int:
        return int(self._age(keys=self.lists, args=[now or time.time(), self.aging_s, self.MAX_MOVES,
                                                    keys.HEADER_ENQUEUED, keys.HEADER_PRIORITY]))

    def start(self) -> "Ager":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()


def should_age(settings: Settings, resource: str) -> bool:
    from aios.wire.priority import is_redis_url

    return make_policy(settings, resource).aging_s is not None and is_redis_url(settings.require_broker())
