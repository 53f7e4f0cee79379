"""A kernel to attack: :func:`open_arena` starts workers on the given settings and issues the two agents'
credentials (as ``aios agent create`` does), then hands out an :class:`~aios_bench.attacks.Arena`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.settings import Settings
from aios_bench.attacks import Arena

ATTACKER, VICTIM = "mallory", "alice"


def agent_settings(kernel_settings: Settings, agent_id: str) -> Settings:
    """What an agent's process holds: the broker it was given, and its own credential (the file in the data dir)."""
    return kernel_settings


@contextmanager
def open_arena(settings: Settings, broker: str, *, resources: Sequence[str] = ("tool", "storage"),
               kernel: LocalKernel | None = None) -> Iterator[Arena]:
    """An arena on a new kernel (``settings`` as for :class:`LocalKernel`), or on ``kernel`` if given."""
    own = kernel is None
    lk = kernel or LocalKernel(settings, resources=resources)
    if own:
        lk.start()
    try:
        creds = Credentials(lk.settings)
        for agent in (ATTACKER, VICTIM):
            creds.create(agent)
        attacker_settings = agent_settings(lk.settings, ATTACKER)
        victim_settings = agent_settings(lk.settings, VICTIM)
        with Kernel(ATTACKER, settings=attacker_settings) as attacker, \
                Kernel(VICTIM, settings=victim_settings) as victim:
            yield Arena(broker=broker, operator=lk.settings, attacker_settings=attacker_settings,
                        victim_settings=victim_settings, attacker=attacker, victim=victim,
                        workdir=Path(lk.settings.data_dir), extra={"kernel": lk})
    finally:
        if own:
            lk.stop()
