"""A kernel to attack: :func:`open_arena` starts workers on the given settings and issues the two agents'
credentials (as ``aios agent create`` does), then hands out an :class:`~aios_bench.attacks.Arena`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aios.ops.embedded import LocalKernel
from aios.policy.broker_users import agent_settings as own_broker_user
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.settings import Settings
from aios_bench.attacks import Arena

ATTACKER, VICTIM = "mallory", "alice"
ARENA_QUOTA_BYTES = 4_000_000
"""The arena's per-agent storage quota (the quota attack fills it)."""
ATTACKER_MAX_PRIORITY = 5
"""The highest priority the arena grants mallory (its broker user may push no higher)."""


def agent_settings(kernel_settings: Settings, agent_id: str, key: str) -> Settings:
    """What an agent's process holds: the broker's address with its own broker user, and its own key."""
    return own_broker_user(kernel_settings, agent_id, key).updated(agent_secret=key)


@contextmanager
def open_arena(settings: Settings, broker: str, *, resources: Sequence[str] = ("tool", "storage"),
               kernel: LocalKernel | None = None) -> Iterator[Arena]:
    """An arena on a new kernel (``settings`` as for :class:`LocalKernel`), or on ``kernel`` if given.

    Its result limit is one a built-in call can pass (the oversized-result attack), its storage quota one a few
    writes fill (the quota attack). On RabbitMQ its state lives
    in a Redis of its own with the default user off, as a deployment keeps it (a shared Redis that lets anyone
    in would be the hole, not the kernel)."""
    from aios_bench.attacks.sandbox import ARENA_MAX_RESULT_BYTES

    own = kernel is None
    state: LocalKernel | None = None
    if own:
        # Limits an attack can reach in a few calls: a result one built-in can exceed, a quota a few writes fill.
        settings = settings.updated(max_result_bytes=ARENA_MAX_RESULT_BYTES, storage_quota_bytes=ARENA_QUOTA_BYTES)
        if broker == "rabbitmq":
            state = LocalKernel(settings.updated(broker_url=None, redis_url=None, data_dir=str(
                Path(settings.data_dir) / "state")), resources=())
            state.start()
            settings = settings.updated(redis_url=state.settings.state_redis_url())
    lk = kernel or LocalKernel(settings, resources=resources)
    if own:
        lk.start()
    try:
        creds = Credentials(lk.settings)
        attacker_key = creds.create(ATTACKER, max_priority=ATTACKER_MAX_PRIORITY, write_file=False).key
        victim_key = creds.create(VICTIM, write_file=False).key
        attacker_settings = agent_settings(lk.settings, ATTACKER, attacker_key)
        victim_settings = agent_settings(lk.settings, VICTIM, victim_key)
        with Kernel(ATTACKER, settings=attacker_settings) as attacker, \
                Kernel(VICTIM, settings=victim_settings) as victim:
            yield Arena(broker=broker, operator=lk.settings, attacker_settings=attacker_settings,
                        victim_settings=victim_settings, attacker=attacker, victim=victim,
                        workdir=Path(lk.settings.data_dir),
                        extra={"kernel": lk, "attacker_key": attacker_key, "victim_key": victim_key})
    finally:
        if own:
            lk.stop()
        if state is not None:
            state.stop()
