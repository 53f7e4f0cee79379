"""Every Redis key the kernel uses, in one place."""

PREFIX = "aios"
DEADLETTER = f"{PREFIX}:deadletter"
"""List of rejected messages, newest first (LPUSH), trimmed to ``AIOS_DEADLETTER_MAX``."""
STATS_REJECTED = f"{PREFIX}:stats:rejected"
"""Hash: rejection code -> count."""
STATS_DONE = f"{PREFIX}:stats:done"
"""Hash: ``<kind>:<status>`` -> count of answered syscalls."""
AGENTS = f"{PREFIX}:agents"
"""Set of agent ids that have (or had) a credential."""


def agent(agent_id: str) -> str:
    """Hash: an agent's credential (secret, created_at, expires_at, revoked, groups)."""
    return f"{PREFIX}:agent:{agent_id}"


def result(syscall_id: str) -> str:
    """The stored response of a finished syscall: the idempotency record."""
    return f"{PREFIX}:result:{syscall_id}"


def reply(syscall_id: str) -> str:
    """A one-element list the caller BLPOPs for its answer."""
    return f"{PREFIX}:reply:{syscall_id}"
