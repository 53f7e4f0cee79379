"""``aios bench attacks``: every registered attack, as mallory, on a kernel per broker; what each tried and saw.

Targets: ``attacks_tried`` at least 25 (distinct attacks), ``attacks_succeeded`` 0 (over every broker). The
approval attacks need a kernel with approvals on: they run on an arena of their own on the embedded kernel.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from aios.settings import Settings
from aios_bench.attacks import Attack, Outcome, all_attacks
from aios_bench.attacks.arena import open_arena
from aios_bench.common import consoles, machine, progress_bars, save, target

TARGETS = {"attacks_tried": ("min", 25), "attacks_succeeded": ("max", 0)}


def broker_settings(broker: str, base: Settings, redis_url: str, rabbitmq_url: str) -> Settings:
    """A kernel's settings on ``broker``: the embedded default, a Redis database it may flush, a RabbitMQ."""
    import kombu
    import redis

    kombu_any: Any = kombu  # kombu ships no type hints
    connection = kombu_any.Connection
    if broker == "embedded":
        return base.updated(broker_url=None, redis_url=None)
    if broker == "redis":
        redis.Redis.from_url(redis_url).flushdb()
        return base.updated(broker_url=redis_url, redis_url=None)
    with connection(rabbitmq_url, connect_timeout=5) as conn:  # reachable, and its queues empty
        ch = conn.channel()
        for q in ("aios.tool", "aios.storage", "aios.llm"):
            try:
                ch.queue_purge(q)
            except Exception:  # not declared yet
                ch = conn.channel()
    return base.updated(broker_url=rabbitmq_url, redis_url=None)


def run_one(attack: Attack, arena: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        outcome = attack.run(arena)
    except Exception as exc:  # an attack that broke is not one that was refused
        outcome = Outcome(False, f"the attack itself failed: {type(exc).__name__}: {exc}")
    return {"attack": attack.name, "area": attack.area, "claim": attack.claim, "refused": outcome.refused,
            "saw": outcome.saw[:500], "seconds": round(time.monotonic() - t0, 2)}


def run_attacks(base: Settings, *, brokers: list[str], redis_url: str, rabbitmq_url: str,
                json_path: Path | None) -> dict[str, Any]:
    out, err = consoles()
    attacks = all_attacks()
    plan: list[tuple[str, bool, list[Attack]]] = []
    for broker in brokers:
        plan.append((broker, False, [a for a in attacks if broker in a.brokers]))
    approvals = [a for a in attacks if a.area == "approvals"]
    if approvals:
        plan.append(("embedded", True, approvals))
    rows: list[dict[str, Any]] = []
    with progress_bars(err, 30) as progress:
        for broker, with_approvals, chosen in plan:
            label = f"{broker}{' (approvals on)' if with_approvals else ''}"
            task = progress.add_task(label, total=len(chosen))
            with tempfile.TemporaryDirectory(prefix="aios-attacks-") as tmp:
                settings = broker_settings(broker, base.updated(data_dir=tmp, default_timeout_s=30.0,
                                                                approvals="required" if with_approvals else "off",
                                                                worker_concurrency=2),
                                           redis_url, rabbitmq_url)
                with open_arena(settings, broker) as arena:
                    for attack in chosen:
                        progress.update(task, description=f"{label}: {attack.name}"[:30])
                        rows.append({"broker": label, **run_one(attack, arena)})
                        progress.advance(task)
            progress.update(task, description=label)
    distinct = sorted({r["attack"] for r in rows})
    succeeded = [r for r in rows if not r["refused"]]
    targets = {"attacks_tried": target(len(distinct), 25, "min"),
               "attacks_succeeded": target(len(succeeded), 0, "max")}
    result = {"benchmark": "attacks", "machine": machine(), "brokers": brokers, "attacks": rows,
              "tried": len(rows), "distinct": len(distinct), "succeeded": [r["attack"] + "@" + r["broker"]
                                                                            for r in succeeded],
              "targets": targets}
    _print(out, rows, targets)
    save(json_path, result, lambda png: _plot(png, rows), err.log)
    return result


def _print(out: Any, rows: list[dict[str, Any]], targets: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="attacks an agent process can make (mallory, its own credential and broker connection)")
    for col in ("broker", "area", "attack", "refused", "what the attacker saw"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["broker"], r["area"], r["attack"], "[green]yes[/]" if r["refused"] else "[red]NO[/]",
                      r["saw"][:160])
    out.print(table)
    for name, t in targets.items():
        sign = ">=" if TARGETS[name][0] == "min" else "<="
        out.print(f"{name}: {t['value']} (goal {sign} {t['goal']}) {'[green]met[/]' if t['met'] else '[red]missed[/]'}")


def _plot(png: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    brokers = sorted({r["broker"] for r in rows})
    areas = sorted({r["area"] for r in rows})
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(brokers))
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:cyan"]
    for i, broker in enumerate(brokers):
        refused = [sum(1 for r in rows if r["broker"] == broker and r["area"] == a and r["refused"]) for a in areas]
        won = [sum(1 for r in rows if r["broker"] == broker and r["area"] == a and not r["refused"]) for a in areas]
        xs = [j + i * width for j in range(len(areas))]
        ax.bar(xs, refused, width, color=colours[i % len(colours)], label=f"{broker}: refused")
        ax.bar(xs, won, width, bottom=refused, color="black", hatch="//",
               label=f"{broker}: succeeded" if any(won) else None)
    ax.set_xticks([j + width * (len(brokers) - 1) / 2 for j in range(len(areas))], areas, rotation=20)
    ax.set_ylabel("attacks")
    ax.set_ylim(0, max((sum(1 for r in rows if r["broker"] == b and r["area"] == a) for b in brokers for a in areas),
                       default=1) * 1.15)
    ax.set_title("aios bench attacks: refused (colour) and succeeded (black, hatched) per area and broker")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
