"""The attack suite: what an untrusted agent process can try against the kernel, each attack a function.

An attack runs as the attacker an agent process can be: it holds only its own credential, its own broker
connection (the URL its ``aios agent create`` gave it) and whatever code it runs, inside an :class:`Arena` (a
kernel with workers, the attacker ``mallory`` and a victim ``alice``). It returns an :class:`Outcome`: whether the
kernel refused it, and what the attacker saw. ``tests/test_attacks.py`` runs every registered attack on each
broker and fails when one succeeds; ``aios bench attacks`` runs them all as a benchmark and reports
``attacks_tried`` / ``attacks_succeeded``.

Register an attack with :func:`attack` in a module of this package listed in :data:`MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODULES = ("sandbox", "storage", "audit", "approvals", "gate", "idempotency", "broker", "replies", "identity",
           "gateway", "streams", "cancel")
"""The modules of this package that hold attacks (``aios_bench.attacks.<name>``), imported by :func:`all_attacks`."""


@dataclass(frozen=True)
class Outcome:
    refused: bool
    """True when the kernel stopped the attack (what it tried did not happen)."""
    saw: str
    """What the attacker saw: the error it got, or what it managed to read or do."""


@dataclass
class Arena:
    """A running kernel and two agents. ``operator`` settings are the kernel's own (trusted: tests use them only
    to check what happened, never to attack); ``attacker_settings`` are what mallory's process holds."""

    broker: str
    """``embedded``, ``redis`` or ``rabbitmq``."""
    operator: Any
    """The kernel's :class:`~aios.settings.Settings` (operators and workers)."""
    attacker_settings: Any
    """Settings as mallory's process has them: its broker URL with its own broker credentials, nothing else."""
    victim_settings: Any
    attacker: Any
    """A :class:`~aios.sdk.Kernel` for agent ``mallory``."""
    victim: Any
    """A :class:`~aios.sdk.Kernel` for agent ``alice``."""
    workdir: Path
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attack:
    name: str
    area: str
    claim: str
    """The claim of docs/security.md this attack tests."""
    run: Callable[[Arena], Outcome]
    brokers: tuple[str, ...] = ("embedded", "redis", "rabbitmq")
    """The brokers it applies to (an attack on Redis keys means nothing on a RabbitMQ-only agent)."""


_REGISTRY: dict[str, Attack] = {}


def attack(name: str, *, area: str, claim: str, brokers: tuple[str, ...] = ("embedded", "redis", "rabbitmq")
           ) -> Callable[[Callable[[Arena], Outcome]], Callable[[Arena], Outcome]]:
    """Register ``fn(arena) -> Outcome`` as attack ``name`` (unique across the suite)."""

    def register(fn: Callable[[Arena], Outcome]) -> Callable[[Arena], Outcome]:
        if name in _REGISTRY:
            raise ValueError(f"attack {name!r} is registered twice")
        _REGISTRY[name] = Attack(name, area, claim, fn, brokers)
        return fn

    return register


def all_attacks() -> list[Attack]:
    """Every registered attack, in registration order (importing each module of :data:`MODULES` that exists)."""
    for module in MODULES:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise
    return list(_REGISTRY.values())
