"""Bearer token -> agent, for a gateway that holds the kernel's master key.

An agent's key is ``HMAC(master, agent_id, generation)`` (:mod:`aios.policy.identity`): it does not name its
agent, and the kernel stores no key. The gateway derives the key of every credential the kernel's state lists and
indexes them by the SHA-256 of the key, so a request costs one dictionary look-up and one constant-time
comparison whatever the number of agents. Indexing by a hash of the key leaks nothing a timing attacker could use
(to aim at an index entry one would need a key's hash prefix, i.e. the key), and the final comparison is
:func:`hmac.compare_digest`. An unknown token triggers a reload of the credentials at most once per
``AIOS_GATEWAY_KEY_REFRESH_S`` (a key issued a moment ago works within that; a flood of bad tokens costs one reload a
second, and each waits for it), and the index is reloaded in the background every ten of those intervals
(revocations, new generations).
The kernel checks every syscall again anyway (signature, revocation, expiry, broker user): the index only picks
the agent whose key the syscall is signed with.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

import redis

from aios.policy.identity import Credential, Credentials, master_key
from aios.settings import Settings

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
"""What ``aios agent create --print-key`` prints."""


@dataclass(frozen=True)
class Agent:
    """An authenticated caller: its credential (public part) and its key."""

    credential: Credential
    key: str

    @property
    def id(self) -> str:
        return self.credential.agent_id


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class AgentKeys:
    """The index of agents' keys; :meth:`resolve` a bearer token."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        master_key(settings, create=False)  # a gateway with a master key of its own would refuse every key
        self.settings = settings
        self.credentials = Credentials(settings, client)
        self.refresh_s = settings.gateway.key_refresh_s
        self._index: dict[bytes, Agent] = {}
        self._loaded_at = 0.0  # monotonic
        self._load_started = 0.0
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self.reloads = 0

    def _load(self) -> dict[bytes, Agent]:
        ring = self.credentials.ring
        index = {}
        for cred in self.credentials.list():
            key = ring.key(cred)
            index[_digest(key)] = Agent(cred, key)
        return index

    async def reload(self) -> None:
        self._load_started = time.monotonic()
        index = await asyncio.to_thread(self._load)
        self._index, self._loaded_at = index, time.monotonic()
        self.reloads += 1

    async def resolve(self, token: str) -> Agent | None:
        """The agent whose current key is ``token``, or ``None``."""
        if not KEY_RE.fullmatch(token):
            return None
        now = time.monotonic()
        if now - self._loaded_at > 10 * self.refresh_s and (self._background is None or self._background.done()):
            self._background = asyncio.create_task(self.reload())
        digest = _digest(token)
        agent = self._index.get(digest)
        if agent is None:
            async with self._lock:  # misses queue here: one reload per refresh interval, however many come
                if self._load_started < now:  # no reload began since this request came: one is due
                    # Not sooner than refresh_s after the last one (a key issued a moment ago works within that;
                    # a stream of bad tokens is slowed to it).
                    await asyncio.sleep(max(0.0, self._loaded_at + self.refresh_s - time.monotonic()))
                    await self.reload()
                agent = self._index.get(digest)
        if agent is None or not hmac.compare_digest(agent.key, token):
            return None
        return agent
