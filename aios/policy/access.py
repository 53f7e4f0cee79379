"""The access manager: who may reach whose memory and files.

Policy (:func:`decide`, a pure function):

* An agent always reaches its own memory and files.
* Another agent's data only through an explicit **grant** from the owner, per resource (``memory`` or
  ``files``): ``read`` (get, list, read) or ``write`` (put, delete, write). A write grant implies read.
* Agents that share a **privilege group** may *read* each other's memory and files. Writing another agent's
  data always needs its explicit write grant: a group is a broad, long-lived thing, and letting every member
  overwrite every other member's state would make one compromised agent able to corrupt the whole group.

Grants live in ``aios:grant:<owner>`` (field ``<grantee>:<resource>`` -> ``read`` | ``write``). An agent's
groups are the union of two sources: the ``groups`` of its credential (``aios agent create --group``) and the
groups ``aios group add`` put it in (``aios:group:<name>`` and its reverse ``aios:member-of:<agent>``). The
sets survive re-issuing a credential, which replaces the credential's own list; ``aios group remove`` removes
the agent from both sources, so after it the agent is out of the group whichever way it got in.

Every cross-agent decision, allowed or denied, and every grant or group change is recorded in the audit log
(:mod:`aios.policy.audit`). A decision is recorded before it takes effect: if the record cannot be written, the
access fails. The actor is the syscall's ``agent_id``, which the worker has already verified (HMAC,
:mod:`aios.policy.identity`); with ``AIOS_AUTH=off`` any process can claim any agent id, and so any grant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from aios.policy.audit import AuditLog
from aios.settings import Settings
from aios.state import keys
from aios.state.connections import state_client
from aios.wire.syscalls import AGENT_ID_RE

RESOURCES: tuple[str, ...] = ("memory", "files")
MODES: tuple[str, ...] = ("read", "write")
_RANK = {"read": 1, "write": 2}  # a grant covers every need of equal or lower rank: write implies read
OP_NEED: dict[str, str] = {"get": "read", "list": "read", "read": "read", "put": "write", "delete": "write",
                           "write": "write", "create": "write", "update": "write", "search": "read",
                           "stats": "read", "mkdir": "write", "rollback": "write", "versions": "read",
                           "share": "write", "mount": "read"}
"""What each memory and storage op needs of the owner's resource."""
KIND_RESOURCE: dict[str, str] = {"memory": "memory", "storage": "files"}
"""The resource a syscall kind touches."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    """Why: the grant or group that allowed it, or what is missing and the command that would grant it."""


def decide(actor: str, owner: str, resource: str, need: str, grants: Mapping[str, str],
           actor_groups: Iterable[str], owner_groups: Iterable[str]) -> Decision:
    """May ``actor`` ``need`` (read/write) ``owner``'s ``resource``? ``grants`` is the owner's grant hash."""
    _check(resource, RESOURCES, "resource")
    _check(need, MODES, "access")
    if actor == owner:
        return Decision(True, "own data")
    granted = grants.get(f"{actor}:{resource}")
    rank = _RANK.get(granted or "", 0)  # an unknown value in Redis counts as no grant: fail closed
    if rank >= _RANK[need]:
        return Decision(True, f"{granted} grant on '{owner}''s {resource}")
    shared = sorted(set(actor_groups) & set(owner_groups))
    if need == "read" and shared:
        return Decision(True, f"shared group '{shared[0]}' (groups give read access)")
    if rank:
        has = f" (it has a {granted} grant only)"
    elif shared:
        has = f" (shared group '{shared[0]}' gives read access only)"
    else:
        has = ""
    return Decision(False, f"agent '{actor}' may not {need} '{owner}''s {resource}{has}: the owner grants it "
                           f"with `aios grant {owner} {actor} {resource} {need}`")


class AccessManager:
    """Grants, groups and access checks against the kernel's state Redis, each decision audited."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or state_client(settings)
        self.audit = AuditLog(self.redis)

    # -- checks ----------------------------------------------------------------------------------------

    def check(self, actor: str, owner: str, resource: str, need: str, *, op: str = "", target: str = "",
              syscall_id: str = "") -> Decision:
        """Decide and record. Own data is allowed without touching Redis (and not recorded)."""
        if actor == owner:
            return decide(actor, owner, resource, need, {}, (), ())
        field = f"{actor}:{resource}"
        pipe = self.redis.pipeline(transaction=False)  # one round trip for everything the decision reads
        pipe.hget(keys.grant(owner), field)
        for agent in (actor, owner):
            pipe.hget(keys.agent(agent), "groups")
            pipe.smembers(keys.member_of(agent))
        granted, actor_cred, actor_sets, owner_cred, owner_sets = pipe.execute()
        grants = {field: granted.decode()} if granted else {}
        decision = decide(actor, owner, resource, need, grants, _groups(actor_cred, actor_sets),
                          _groups(owner_cred, owner_sets))
        self.audit.record(actor=actor, owner=owner, resource=resource, op=op or need, target=target,
                          decision="allow" if decision.allowed else "deny", reason=decision.reason,
                          syscall_id=syscall_id)
        return decision

    def groups_of(self, agent: str) -> set[str]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(keys.agent(agent), "groups")
        pipe.smembers(keys.member_of(agent))
        return _groups(*pipe.execute())

    # -- grants ----------------------------------------------------------------------------------------

    def grant(self, owner: str, grantee: str, resource: str, mode: str, *, by: str = "operator") -> str | None:
        """Let ``grantee`` ``mode`` (read/write) ``owner``'s ``resource``; returns the grant it replaced."""
        _check_pair(owner, grantee)
        _check(resource, RESOURCES, "resource")
        _check(mode, MODES, "access")
        key, field = keys.grant(owner), f"{grantee}:{resource}"

        def change(pipe: Any) -> str | None:
            old = pipe.hget(key, field)
            previous = old.decode() if old else None
            pipe.multi()
            pipe.hset(key, field, mode)
            pipe.sadd(keys.GRANT_OWNERS, owner)
            was = f" (was {previous})" if previous else ""
            self.audit.record(actor=by, owner=owner, resource=resource, op="grant", target=grantee,
                              decision="change", reason=f"{mode} granted to '{grantee}'{was}", pipe=pipe)
            return previous

        return cast("str | None", _atomically(self.redis, change, key))

    def revoke(self, owner: str, grantee: str, resource: str, *, by: str = "operator") -> str | None:
        """Withdraw ``grantee``'s grant on ``owner``'s ``resource``; returns the grant removed, or None."""
        _check_pair(owner, grantee)
        _check(resource, RESOURCES, "resource")
        key, field = keys.grant(owner), f"{grantee}:{resource}"

        def change(pipe: Any) -> str | None:
            old = pipe.hget(key, field)
            previous = old.decode() if old else None
            pipe.multi()
            pipe.hdel(key, field)
            reason = f"{previous} grant of '{grantee}' revoked" if previous else f"'{grantee}' had no grant"
            self.audit.record(actor=by, owner=owner, resource=resource, op="revoke", target=grantee,
                              decision="change", reason=reason, pipe=pipe)
            return previous

        return cast("str | None", _atomically(self.redis, change, key))

    def grants(self, owner: str | None = None) -> list[dict[str, str]]:
        """Grants of ``owner`` (or of every owner): dicts with owner, grantee, resource, mode."""
        owners = [owner] if owner else sorted(_text(o) for o in self.redis.smembers(keys.GRANT_OWNERS))
        pipe = self.redis.pipeline(transaction=False)
        for o in owners:
            pipe.hgetall(keys.grant(o))
        out = []
        for o, fields in zip(owners, pipe.execute(), strict=True):
            for f, mode in sorted(fields.items()):
                grantee, _, resource = _text(f).rpartition(":")
                out.append({"owner": o, "grantee": grantee, "resource": resource, "mode": _text(mode)})
        return out

    # -- groups ----------------------------------------------------------------------------------------

    def add_to_group(self, group: str, agent: str, *, by: str = "operator") -> bool:
        """Put ``agent`` in ``group``; False if it was already in through ``aios group add``."""
        _check_name(group, "group")
        _check_name(agent, "agent id")
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(keys.group(group), agent)
        pipe.sadd(keys.member_of(agent), group)
        pipe.sadd(keys.GROUPS, group)
        self.audit.record(actor=by, owner=agent, resource="", op="group-add", target=group, decision="change",
                          reason=f"'{agent}' added to group '{group}'", pipe=pipe)
        return bool(pipe.execute()[0])

    def remove_from_group(self, group: str, agent: str, *, by: str = "operator") -> bool:
        """Take ``agent`` out of ``group``, from the sets and from its credential's list; False if it was in neither."""
        _check_name(group, "group")
        _check_name(agent, "agent id")
        cred_key = keys.agent(agent)

        def change(pipe: Any) -> bool:
            # WATCH on the credential: `aios agent create` rewriting it meanwhile makes this run again.
            listed = (pipe.hget(cred_key, "groups") or b"").decode().split(",")
            in_set = bool(pipe.sismember(keys.member_of(agent), group))
            pipe.multi()
            pipe.srem(keys.group(group), agent)
            pipe.srem(keys.member_of(agent), group)
            if group in listed:
                pipe.hset(cred_key, "groups", ",".join(g for g in listed if g and g != group))
            removed = in_set or group in listed
            reason = f"'{agent}' removed from group '{group}'" if removed else f"'{agent}' was not in '{group}'"
            self.audit.record(actor=by, owner=agent, resource="", op="group-remove", target=group,
                              decision="change", reason=reason, pipe=pipe)
            return removed

        return cast(bool, _atomically(self.redis, change, cred_key, keys.member_of(agent)))

    def groups(self) -> list[dict[str, str]]:
        """Every membership from both sources: dicts with group, agent and via (``credential`` / ``group add``)."""
        names = sorted(_text(g) for g in self.redis.smembers(keys.GROUPS))
        agents = sorted(_text(a) for a in self.redis.smembers(keys.AGENTS))
        pipe = self.redis.pipeline(transaction=False)
        for g in names:
            pipe.smembers(keys.group(g))
        for a in agents:
            pipe.hget(keys.agent(a), "groups")
        replies = pipe.execute()
        via: dict[tuple[str, str], list[str]] = {}
        for g, members in zip(names, replies[: len(names)], strict=True):
            for m in members:
                via.setdefault((g, _text(m)), []).append("group add")
        for a, listed in zip(agents, replies[len(names):], strict=True):
            for g in _groups(listed, ()):
                via.setdefault((g, a), []).insert(0, "credential")
        return [{"group": g, "agent": a, "via": ", ".join(v)} for (g, a), v in sorted(via.items())]


def _groups(credential_field: bytes | None, sets: Iterable[bytes]) -> set[str]:
    listed = (credential_field or b"").decode().split(",")
    return {g for g in listed if g} | {_text(g) for g in sets}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _atomically(client: redis.Redis, change: Callable[[Any], Any], *watched: str) -> Any:
    """``change(pipe)`` reads the ``watched`` keys, then queues its writes after ``pipe.multi()``; it runs
    again if another client changed a watched key in between. Returns what ``change`` returned."""
    return client.transaction(change, *watched, value_from_callable=True)


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")


def _check_name(value: str, what: str) -> None:
    # Group names follow agent ids: no ',' (the credential stores its groups comma-separated) and no ':'.
    if not AGENT_ID_RE.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: 1-64 letters, digits, '_', '.', '-', starting alphanumeric")


def _check_pair(owner: str, grantee: str) -> None:
    _check_name(owner, "agent id")
    _check_name(grantee, "agent id")
    if owner == grantee:
        raise ValueError(f"'{owner}' always reaches its own data; a grant is for another agent")
