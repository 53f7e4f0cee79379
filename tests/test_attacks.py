"""The attack suite (aios_bench.attacks) on every broker: each attack an agent process can make must be refused.

The same attacks run as ``aios bench attacks``; this is the tier that fails CI when a defence is removed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from aios_bench.attacks import Arena, Attack, all_attacks
from aios_bench.attacks.arena import open_arena
from tests.conftest import BROKERS, make_broker_settings

pytestmark = pytest.mark.integration

ATTACKS = all_attacks()


@pytest.fixture(scope="module", params=BROKERS)
def arena(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    settings = make_broker_settings(request.param, tmp_path_factory.mktemp(f"arena-{request.param}"), request)
    with open_arena(settings, request.param) as a:
        yield a


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_refused(arena: Arena, attack: Attack, record_property: Any) -> None:
    if arena.broker not in attack.brokers:
        pytest.skip(f"{attack.name} does not apply to an agent on {arena.broker}")
    outcome = attack.run(arena)
    record_property("saw", outcome.saw)
    assert outcome.refused, f"attack {attack.name} succeeded ({attack.claim}): the attacker saw {outcome.saw}"
