"""Agent identity: credentials the kernel issues, HMAC signatures on every syscall, and their verification.

An agent's credential is a random secret the kernel keeps in its Redis (``aios:agent:<id>``) and hands to the
agent once, as a file in ``<data_dir>/credentials/<id>`` (mode 600) or as ``AIOS_AGENT_SECRET``. The SDK signs
the canonical JSON of each syscall (every field but ``sig``, keys sorted) with HMAC-SHA256; a worker recomputes
it before acting. The signed fields include the syscall id, ``created_at`` and ``timeout_s``, so a message can
be neither altered nor replayed: a worker never runs a syscall id it has answered already, nor one whose deadline
passed (the idempotency record outlives every deadline).

The trust root is the kernel's Redis: whoever can write it can issue credentials. Keep it apart from the
broker (RabbitMQ as broker, or a Redis ACL) when agents are not trusted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis

from aios.settings import Settings
from aios.state import keys
from aios.state.connections import as_text, state_client
from aios.wire.errors import AuthError, ConfigError

SIG_FIELD = "sig"


def canonical(payload: dict[str, Any]) -> bytes:
    """The bytes that are signed: the syscall without its signature, keys sorted, compact separators."""
    body = {k: v for k, v in payload.items() if k != SIG_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(payload: dict[str, Any], secret: str) -> str:
    return hmac.new(bytes.fromhex(secret), canonical(payload), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Credential:
    agent_id: str
    secret: str
    created_at: float
    expires_at: float | None
    revoked: bool
    groups: tuple[str, ...]

    @classmethod
    def from_redis(cls, agent_id: str, record: dict[bytes, bytes]) -> "Credential | None":
        if not record:
            return None
        expires = float(record.get(b"expires_at", b"0"))
        return cls(
            agent_id=agent_id, secret=record[b"secret"].decode(), created_at=float(record[b"created_at"]),
            expires_at=expires or None, revoked=record.get(b"revoked", b"0") == b"1",
            groups=tuple(g for g in record.get(b"groups", b"").decode().split(",") if g),
        )

    def public(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "created_at": self.created_at, "expires_at": self.expires_at,
                "revoked": self.revoked, "groups": list(self.groups)}


def verify(payload: dict[str, Any], credential: Credential | None, *, now: float, clock_skew_s: float) -> None:
    """Raise :class:`AuthError` (code names the reason) unless ``payload`` is validly signed by its agent."""
    agent = payload.get("agent_id")
    sig = payload.get(SIG_FIELD)
    if not isinstance(sig, str) or not sig:
        raise AuthError(f"syscall of agent {agent!r} is not signed: make syscalls with the aios SDK and a "
                        "credential (`aios agent create <id>`)", code="unsigned")
    if credential is None:
        raise AuthError(f"agent {agent!r} has no credential: `aios agent create {agent}`", code="unknown_agent")
    if credential.revoked:
        raise AuthError(f"the credential of agent {agent!r} was revoked: issue a new one with "
                        f"`aios agent create {agent}`", code="revoked")
    if credential.expires_at is not None and now > credential.expires_at:
        raise AuthError(f"the credential of agent {agent!r} expired; issue a new one with `aios agent create "
                        f"{agent}`", code="credential_expired")
    if not hmac.compare_digest(sign(payload, credential.secret), sig):
        raise AuthError(f"bad signature on a syscall of agent {agent!r}: it was altered or signed with another "
                        "credential", code="forged")
    created = payload.get("created_at")
    if isinstance(created, (int, float)) and created > now + clock_skew_s:
        raise AuthError(f"syscall of agent {agent!r} claims to be made {created - now:.0f}s in the future; check "
                        "the clocks (AIOS_CLOCK_SKEW_S)", code="forged")


# -- the credential store -----------------------------------------------------------------------------------

class Credentials:
    """Issue, look up, revoke and list credentials in the kernel's Redis."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or state_client(settings)

    def create(self, agent_id: str, *, groups: tuple[str, ...] = (), expires_in_s: float | None = None,
               write_file: bool = True) -> Credential:
        """A new secret for ``agent_id`` (replacing any earlier one), saved for the agent's processes."""
        from aios.wire.syscalls import AGENT_ID_RE

        if not AGENT_ID_RE.fullmatch(agent_id):
            raise ConfigError(f"invalid agent id {agent_id!r}: 1-64 letters, digits, '_', '.', '-'")
        now = time.time()
        cred = Credential(agent_id, secrets.token_hex(32), now, now + expires_in_s if expires_in_s else None,
                          False, tuple(groups))
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.agent(agent_id))
        pipe.hset(keys.agent(agent_id), mapping={
            "secret": cred.secret, "created_at": now, "expires_at": cred.expires_at or 0, "revoked": 0,
            "groups": ",".join(groups),
        })
        pipe.sadd(keys.AGENTS, agent_id)
        pipe.execute()
        if write_file:
            path = credential_file(self.settings, agent_id)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(cred.secret)
        return cred

    def get(self, agent_id: str) -> Credential | None:
        # The state client does not decode responses: the hash's fields and values are bytes.
        return Credential.from_redis(agent_id, cast("dict[bytes, bytes]", self.redis.hgetall(keys.agent(agent_id))))

    def revoke(self, agent_id: str) -> bool:
        if not self.redis.exists(keys.agent(agent_id)):
            return False
        self.redis.hset(keys.agent(agent_id), "revoked", 1)
        return True

    def list(self) -> list[Credential]:
        ids = sorted(as_text(m) for m in self.redis.smembers(keys.AGENTS))
        found = (self.get(i) for i in ids)
        return [c for c in found if c is not None]

    def ensure(self, agent_id: str) -> None:
        """Issue a credential unless this machine already holds a valid one (used by `aios run`)."""
        held = load_secret(self.settings, agent_id)
        cred = self.get(agent_id)
        if held and cred and cred.secret == held and not cred.revoked and (
            cred.expires_at is None or cred.expires_at > time.time()
        ):
            return
        self.create(agent_id)


def credential_file(settings: Settings, agent_id: str) -> Path:
    return settings.data_dir / "credentials" / agent_id


def load_secret(settings: Settings, agent_id: str) -> str | None:
    """The agent's secret: ``AIOS_AGENT_SECRET``, else its credential file, else ``None``."""
    if settings.security.agent_secret:
        return settings.security.agent_secret.strip()
    try:
        return credential_file(settings, agent_id).read_text().strip()
    except OSError:
        return None
