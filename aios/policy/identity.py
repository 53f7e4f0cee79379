"""Agent identity: keys derived from a kernel master key, HMAC signatures on every syscall and every reply.

The kernel holds one **master key** (``AIOS_MASTER_KEY``, else ``<data_dir>/kernel/master.key``, mode 600):
workers and operators have it, agents never do, and it is never written to Redis. An agent's key is
``HMAC(master, agent_id, generation)``; the kernel's Redis keeps only the public part of a credential (its
generation, groups, highest priority, expiry, revocation), so reading all of Redis yields no key. ``aios agent
create`` hands the key to the agent once, as ``<data_dir>/credentials/<id>`` (mode 600) or for
``AIOS_AGENT_SECRET``; issuing a new one bumps the generation, which voids the old key.

The SDK signs the canonical JSON of each syscall (every field but ``sig``, keys sorted) with its key; a worker
derives the key and recomputes the signature before acting. The signed fields include the syscall id,
``created_at``, ``timeout_s`` and ``priority``. A worker signs each reply with the same key and the syscall id
(:func:`aios.wire.seal.seal_reply`), so the SDK accepts only answers the kernel made for that syscall
(:func:`aios.wire.seal.open_reply`).

From the agent's key the SDK also derives its **broker password** (:func:`broker_password`): the kernel makes a
broker user ``agent-<id>`` per agent (:mod:`aios.policy.broker_users`) that may only publish syscalls and read its own
replies.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis

from aios.settings import Settings
from aios.state import keys
from aios.state.connections import as_text, state_client
from aios.wire.errors import AuthError, ConfigError
from aios.wire.priority import MAX_PRIORITY
from aios.wire.seal import SIG_FIELD, canonical, open_reply, seal_reply, sign

KERNEL_USER = "aios-kernel"
"""The broker user of workers and operator commands (a kernel with broker users on)."""


# -- keys ----------------------------------------------------------------------------------------------------

def master_file(settings: Settings) -> Path:
    return settings.data_dir / "kernel" / "master.key"


def master_key(settings: Settings, *, create: bool = True) -> bytes:
    """The kernel's master key: ``AIOS_MASTER_KEY`` (hex), else the data dir's file, made on first use."""
    if settings.security.master_key:
        try:
            return bytes.fromhex(settings.security.master_key.strip())
        except ValueError:
            raise ConfigError("AIOS_MASTER_KEY must be hex (e.g. `openssl rand -hex 32`)") from None
    path = master_file(settings)
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"no kernel master key: {path} is missing and AIOS_MASTER_KEY is unset; workers and "
                              "operators need the kernel's key (agents never do)") from None
    except ValueError:
        raise ConfigError(f"{path} does not hold a hex master key") from None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another kernel process made it first
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    logging.getLogger("aios.identity").warning(
        "made a new kernel master key in %s: keys issued under another master will not verify; give every worker "
        "and operator machine the same key (AIOS_MASTER_KEY)", path)
    return key


def derive(master: bytes, purpose: str) -> str:
    return hmac.new(master, purpose.encode(), hashlib.sha256).hexdigest()


def agent_key(master: bytes, agent_id: str, generation: int) -> str:
    """The key of ``agent_id``'s credential number ``generation`` (hex)."""
    return derive(master, f"aios-agent\0{agent_id}\0{generation}")


def kernel_password(master: bytes) -> str:
    """The broker password of the kernel's own user (:data:`KERNEL_USER`)."""
    return derive(master, "aios-kernel-broker")


def broker_user(agent_id: str) -> str:
    return f"agent-{agent_id}"


def broker_password(key: str) -> str:
    """An agent's broker password, derived from its key (the agent needs nothing else)."""
    return hmac.new(bytes.fromhex(key), b"aios-broker-password", hashlib.sha256).hexdigest()


# -- the operator console's token -----------------------------------------------------------------------------

CONSOLE_PREFIX = "aios-console-"
"""Every console token starts so: it can never be mistaken for (or equal) an agent's key, which is bare hex."""


def console_token(settings: Settings, client: redis.Redis, *, rotate: bool = False) -> str:
    """The operator console's token (``aios console-token``): derived from the master key and a generation kept in
    the kernel's Redis, so only a holder of the master key can make one and ``rotate`` voids the old one."""
    generation = int(client.incr(keys.CONSOLE_GEN)) if rotate else int(client.get(keys.CONSOLE_GEN) or 0)
    return CONSOLE_PREFIX + derive(master_key(settings), f"aios-console\0{generation}")


def is_console_token(settings: Settings, client: redis.Redis, token: str | None) -> bool:
    """Whether ``token`` is the console's current token (compared in constant time)."""
    if not token or not token.startswith(CONSOLE_PREFIX):
        return False
    return hmac.compare_digest(token.encode(), console_token(settings, client).encode())


# -- credentials -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Credential:
    """What the kernel's state knows of an agent's credential: nothing secret."""

    agent_id: str
    generation: int
    created_at: float
    expires_at: float | None
    revoked: bool
    groups: tuple[str, ...]
    max_priority: int = MAX_PRIORITY

    @classmethod
    def from_redis(cls, agent_id: str, record: dict[bytes, bytes]) -> "Credential | None":
        if not record or b"gen" not in record:
            return None
        expires = float(record.get(b"expires_at", b"0"))
        return cls(
            agent_id=agent_id, generation=int(record[b"gen"]), created_at=float(record[b"created_at"]),
            expires_at=expires or None, revoked=record.get(b"revoked", b"0") == b"1",
            groups=tuple(g for g in record.get(b"groups", b"").decode().split(",") if g),
            max_priority=int(record.get(b"max_priority", str(MAX_PRIORITY).encode())),
        )

    def public(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "generation": self.generation, "created_at": self.created_at,
                "expires_at": self.expires_at, "revoked": self.revoked, "groups": list(self.groups),
                "max_priority": self.max_priority}


@dataclass(frozen=True)
class Issued:
    """A credential just issued: its public record and the agent's key (shown once)."""

    credential: Credential
    key: str

    @property
    def secret(self) -> str:
        return self.key


class KeyRing:
    """Agents' keys, derived on demand from the master key (workers, operators); cached per generation."""

    def __init__(self, settings: Settings) -> None:
        self.master = master_key(settings)
        self._keys: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def key(self, credential: Credential) -> str:
        ident = (credential.agent_id, credential.generation)
        got = self._keys.get(ident)
        if got is None:
            got = agent_key(self.master, *ident)
            with self._lock:
                if len(self._keys) > 10_000:
                    self._keys.clear()
                self._keys[ident] = got
        return got


def authenticate(payload: dict[str, Any], credential: Credential | None, ring: KeyRing, *, now: float,
                 clock_skew_s: float) -> str:
    """Check that ``payload`` is signed with its agent's key; return the key (to seal the answer with). Raises
    :class:`AuthError` (its code names the reason) for a sender who is not that agent: it is never answered."""
    agent = payload.get("agent_id")
    sig = payload.get(SIG_FIELD)
    if not isinstance(sig, str) or not sig:
        raise AuthError(f"syscall of agent {agent!r} is not signed: make syscalls with the aios SDK and a "
                        "credential (`aios agent create <id>`)", code="unsigned")
    if credential is None:
        raise AuthError(f"agent {agent!r} has no credential: `aios agent create {agent}`", code="unknown_agent")
    key = ring.key(credential)
    if not hmac.compare_digest(sign(payload, key), sig):
        raise AuthError(f"bad signature on a syscall of agent {agent!r}: it was altered or signed with another "
                        "credential", code="forged")
    created = payload.get("created_at")
    if isinstance(created, (int, float)) and created > now + clock_skew_s:
        raise AuthError(f"syscall of agent {agent!r} claims to be made {created - now:.0f}s in the future; check "
                        "the clocks (AIOS_CLOCK_SKEW_S)", code="forged")
    return key


def authorize(credential: Credential, *, now: float) -> None:
    """Raise :class:`AuthError` if an authentic sender's credential may no longer act (revoked, expired)."""
    agent = credential.agent_id
    if credential.revoked:
        raise AuthError(f"the credential of agent {agent!r} was revoked: issue a new one with "
                        f"`aios agent create {agent}`", code="revoked")
    if credential.expires_at is not None and now > credential.expires_at:
        raise AuthError(f"the credential of agent {agent!r} expired; issue a new one with `aios agent create "
                        f"{agent}`", code="credential_expired")


def verify(payload: dict[str, Any], credential: Credential | None, ring: KeyRing, *, now: float,
           clock_skew_s: float) -> str:
    """:func:`authenticate` then :func:`authorize`; the agent's key."""
    key = authenticate(payload, credential, ring, now=now, clock_skew_s=clock_skew_s)
    assert credential is not None
    authorize(credential, now=now)
    return key


class Credentials:
    """Issue, look up, revoke and list credentials (kernel side: needs the master key and the kernel's Redis).
    Issuing and revoking also make and remove the agent's broker user (:mod:`aios.policy.broker_users`)."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or state_client(settings)
        self._ring: KeyRing | None = None

    @property
    def ring(self) -> KeyRing:
        if self._ring is None:
            self._ring = KeyRing(self.settings)
        return self._ring

    def create(self, agent_id: str, *, groups: tuple[str, ...] = (), expires_in_s: float | None = None,
               write_file: bool = True, max_priority: int = MAX_PRIORITY) -> Issued:
        """A new key for ``agent_id`` (voiding any earlier one), saved for the agent's processes."""
        from aios.policy.broker_users import BrokerUsers
        from aios.wire.syscalls import AGENT_ID_RE

        if not AGENT_ID_RE.fullmatch(agent_id):
            raise ConfigError(f"invalid agent id {agent_id!r}: 1-64 letters, digits, '_', '.', '-'")
        if not 0 <= max_priority <= MAX_PRIORITY:
            raise ConfigError(f"max priority {max_priority} is not in 0..{MAX_PRIORITY}")
        now = time.time()
        generation = int(self.redis.hincrby(keys.agent(agent_id), "gen", 1))
        cred = Credential(agent_id, generation, now, now + expires_in_s if expires_in_s else None, False,
                          tuple(groups), max_priority)
        key = self.ring.key(cred)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.agent(agent_id), mapping={
            "gen": generation, "created_at": now, "expires_at": cred.expires_at or 0, "revoked": 0,
            "groups": ",".join(groups), "max_priority": max_priority,
        })
        pipe.hdel(keys.agent(agent_id), "secret")  # a record from before keys were derived
        pipe.sadd(keys.AGENTS, agent_id)
        pipe.execute()
        BrokerUsers(self.settings).create(agent_id, broker_password(key), max_priority)
        if write_file:
            path = credential_file(self.settings, agent_id)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key)
        return Issued(cred, key)

    def get(self, agent_id: str) -> Credential | None:
        # The state client does not decode responses: the hash's fields and values are bytes.
        return Credential.from_redis(agent_id, cast("dict[bytes, bytes]", self.redis.hgetall(keys.agent(agent_id))))

    def key(self, agent_id: str) -> str | None:
        """The current key of ``agent_id`` (kernel side: to seal an operator's answer), ``None`` if it has none."""
        cred = self.get(agent_id)
        return None if cred is None else self.ring.key(cred)

    def revoke(self, agent_id: str) -> bool:
        from aios.policy.broker_users import BrokerUsers

        if not self.redis.exists(keys.agent(agent_id)):
            return False
        self.redis.hset(keys.agent(agent_id), "revoked", 1)
        BrokerUsers(self.settings).revoke(agent_id)
        return True

    def list(self) -> list[Credential]:
        ids = sorted(as_text(m) for m in self.redis.smembers(keys.AGENTS))
        found = (self.get(i) for i in ids)
        return [c for c in found if c is not None]

    def ensure(self, agent_id: str) -> None:
        """Issue a credential unless this machine already holds a valid one (used by `aios run`)."""
        held = load_secret(self.settings, agent_id)
        cred = self.get(agent_id)
        if held and cred and self.ring.key(cred) == held and not cred.revoked and (
            cred.expires_at is None or cred.expires_at > time.time()
        ):
            return
        self.create(agent_id)


def credential_file(settings: Settings, agent_id: str) -> Path:
    return settings.data_dir / "credentials" / agent_id


def load_secret(settings: Settings, agent_id: str) -> str | None:
    """The agent's key: ``AIOS_AGENT_SECRET``, else its credential file, else ``None``."""
    if settings.security.agent_secret:
        return settings.security.agent_secret.strip()
    try:
        return credential_file(settings, agent_id).read_text().strip()
    except OSError:
        return None


__all__ = ["SIG_FIELD", "canonical", "open_reply", "seal_reply", "sign", "Credential", "Credentials", "Issued",
           "KeyRing", "authenticate", "authorize", "verify", "master_key", "agent_key", "broker_user", "broker_password", "kernel_password",
           "credential_file", "load_secret", "KERNEL_USER", "console_token", "is_console_token", "CONSOLE_PREFIX"]
