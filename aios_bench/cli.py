"""``aios bench ...``: the benchmarks' commands, attached to the ``aios`` command when the ``bench`` extra is
installed (``pip install "aios-kernel[bench]"``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from aios.ops.cli_access import _fail
from aios.settings import get_settings
from aios.wire.errors import AIOSError


@click.group()
def bench() -> None:
    """Benchmarks: each runs its contenders side by side and reports ratios."""


@bench.command()
@click.option("--requests", "n_latency", default=1000, show_default=True, help="Sequential round trips per contender, in total, split across the rounds.")
@click.option("--throughput-requests", "n_throughput", default=2000, show_default=True,
              help="Syscalls per contender for throughput, in total, split across the rounds.")
@click.option("--rounds", default=10, show_default=True,
              help="Interleaved rounds (contenders alternate); the targets read the median of the per-round ratios.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def overhead(n_latency: int, n_throughput: int, rounds: int, json_path: Path | None) -> None:
    """Kernel no-op tool syscall vs raw Celery no-op task on the same broker; the worker pipeline profiled."""
    from aios_bench.overhead import run_overhead

    try:
        run_overhead(get_settings(), n_latency=n_latency, n_throughput=n_throughput, rounds=rounds,
                     json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--brokers", default="embedded", show_default=True,
              help="Comma-separated: embedded, redis, rabbitmq (each a kernel of its own).")
@click.option("--redis-url", default="redis://127.0.0.1:6379/15", show_default=True,
              help="The Redis for --brokers redis: this database is FLUSHED.")
@click.option("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672//", show_default=True,
              help="The RabbitMQ for --brokers rabbitmq (the kernel's queues are purged; rabbitmqctl must be local).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def attacks(brokers: str, redis_url: str, rabbitmq_url: str, json_path: Path | None) -> None:
    """Every attack of the suite (aios_bench.attacks), as an agent with its own credentials, on each broker."""
    from aios_bench.attacks.bench import run_attacks

    chosen = [b.strip() for b in brokers.split(",") if b.strip()]
    unknown = set(chosen) - {"embedded", "redis", "rabbitmq"}
    if unknown:
        _fail(ValueError(f"unknown brokers {sorted(unknown)}: use embedded, redis, rabbitmq"))
    try:
        result = run_attacks(get_settings(), brokers=chosen, redis_url=redis_url, rabbitmq_url=rabbitmq_url,
                             json_path=json_path)
    except AIOSError as exc:
        _fail(exc)
    if result["succeeded"]:
        raise SystemExit(1)


def _params(defaults: Any, quick: Any, use_quick: bool, given: dict[str, Any]) -> Any:
    """The benchmark's parameters: its defaults (or its --quick ones), then the options given on the command line."""
    from dataclasses import replace

    return replace(quick if use_quick else defaults, **{k: v for k, v in given.items() if v is not None})


@bench.command()
@click.option("--agents", type=int, default=None, help="Agents (threads), each with its own client.  [default: 64]")
@click.option("--calls", type=int, default=None, help="LLM calls per agent, one after the other.  [default: 6]")
@click.option("--rpm", type=int, default=None, help="Provider limit: requests per window.  [default: 48]")
@click.option("--tpm", type=int, default=None,
              help="Provider limit: tokens per window.  [default: 25% above what --rpm requests use]")
@click.option("--window-s", type=float, default=None,
              help="Sliding window of the limits, provider's and kernel's (60: per minute).  [default: 15]")
@click.option("--service-ms", type=float, default=None, help="Provider service time per request.  [default: 100]")
@click.option("--max-tokens", type=int, default=None, help="max_tokens of every call.  [default: 32]")
@click.option("--quota-margin", type=float, default=None,
              help="Set the kernel's quota this fraction below the provider's limits.  [default: 0]")
@click.option("--quick", is_flag=True, help="A short run (5 s window, 40 requests per window, 2 calls per agent).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def ratelimit(quick: bool, json_path: Path | None, **given: Any) -> None:
    """Agents against a rate-limited provider: direct openai client vs the kernel with a global quota."""
    from aios_bench.ratelimit import QUICK, RateParams, run_ratelimit

    try:
        run_ratelimit(get_settings(), _params(RateParams(), QUICK, quick, given), json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """A comma-separated list of integers (``1,2,4``; ``10_000`` allowed); None stays None (the default applies)."""
    if value is None:
        return None
    try:
        numbers = tuple(int(v.replace("_", "")) for v in value.split(",") if v.strip())
    except ValueError:
        numbers = ()
    if not numbers:
        raise click.BadParameter(f"expected integers separated by commas, like 1,2,4; got {value!r}")
    return numbers


@bench.command()
@click.option("--workers", callback=_int_list, default=None,
              help="LLM worker counts to compare, comma-separated; must include 1 and 4.  [default: 1,2,4]")
@click.option("--agents", type=int, default=None, help="Agents (threads) keeping the workers busy.  [default: 16]")
@click.option("--calls-per-worker", type=int, default=None,
              help="Measured calls per worker in each block.  [default: 25]")
@click.option("--rounds", type=int, default=None, help="Interleaved rounds (order alternates).  [default: 3]")
@click.option("--service-ms", type=float, default=None, help="Provider service time per request.  [default: 200]")
@click.option("--max-tokens", type=int, default=None, help="max_tokens of every call.  [default: 16]")
@click.option("--quick", is_flag=True, help="A short run (1 round, 8 calls per worker, 8 agents).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def scale(quick: bool, json_path: Path | None, **given: Any) -> None:
    """LLM throughput with 1, 2 and 4 worker processes against a provider with a fixed service time."""
    from aios_bench.scale import QUICK, ScaleParams, run_scale

    try:
        run_scale(get_settings(), _params(ScaleParams(), QUICK, quick, given), json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--seconds", default=8.0, show_default=True, help="Length of each share measurement.")
@click.option("--demands", default="1,2,4,8", show_default=True, callback=_int_list, help="Syscalls each competing agent keeps in flight.")
@click.option("--urgent", default=40, show_default=True, help="Sequential syscalls of the high-priority agent.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def fairness(seconds: float, demands: tuple[int, ...], urgent: int, json_path: Path | None) -> None:
    """Fair share (fifo vs fair) among unequal demands, and an urgent agent under a flood (fifo vs priority)."""
    from aios_bench.fairness import run_fairness

    try:
        run_fairness(get_settings(), seconds=seconds, demands=demands, urgent=urgent, json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--items", default=2000, show_default=True, help="Eviction: memory items per contender.")
@click.option("--accesses", default=20_000, show_default=True, help="Eviction: reads in the skewed trace.")
@click.option("--budget", default=0, show_default=True,
              help="Eviction: fast-tier budget in bytes per agent; 0: a tenth of the items' bytes.")
@click.option("--sizes", default="10000", show_default=True, callback=_int_list,
              help="Search latency: memory sizes, comma-separated (e.g. 10000,100000).")
@click.option("--queries", default=200, show_default=True, help="Search latency: queries per size.")
@click.option("--embed-limit", default=10_000, show_default=True,
              help="Search latency: items embedded by the model; further items reuse those vectors plus noise.")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def memory(items: int, accesses: int, budget: int, sizes: tuple[int, ...], queries: int, embed_limit: int, seed: int,
           json_path: Path | None) -> None:
    """LRU-K vs LRU fast-tier hit rate at one budget, and memory search latency by size."""
    from aios_bench.memory import run_memory_bench

    try:
        run_memory_bench(get_settings(), items=items, accesses=accesses, budget=budget, sizes=sizes,
                         queries=queries, embed_limit=embed_limit, seed=seed, json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--sizes", default="1,4,8,16,32", show_default=True, callback=_int_list,
              help="Batch sizes, comma-separated.")
@click.option("--tokens", default=64, show_default=True, help="Tokens generated per sequence (greedy).")
@click.option("--threads", default=2, show_default=True, help="llama.cpp threads.")
@click.option("--quantize", default="", help="Also measure the model converted to these types, e.g. q8_0,q4_0.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def engine(sizes: tuple[int, ...], tokens: int, threads: int, quantize: str, json_path: Path | None) -> None:
    """The batching engine alone: the same prompts one at a time vs batched, per batch size and weight type."""
    from aios_bench.engine import run_engine_bench

    try:
        settings = get_settings()
        run_engine_bench(Path(settings.data_dir), sizes=list(sizes), tokens=tokens, threads=threads,
                         gpu_layers=settings.llm.n_gpu_layers,
                         quantize=[q.strip() for q in quantize.split(",") if q.strip()], json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--agents", default=16, show_default=True, help="Concurrent agents.")
@click.option("--steps", default=6, show_default=True, help="LLM calls per agent, each with the whole conversation.")
@click.option("--tokens", default=32, show_default=True, help="Tokens generated per call (greedy).")
@click.option("--threads", default=2, show_default=True, help="llama.cpp threads.")
@click.option("--batch", default=16, show_default=True, help="Engine sequence slots (AIOS_LLM_BATCH_SIZE).")
@click.option("--requantize", default="auto", show_default=True, help="AIOS_LLM_REQUANTIZE for both contenders.")
@click.option("--workers", default=1, show_default=True,
              help="LLM workers; 2 or more: through a whole kernel, without and with affinity (--threads, --batch "
                   "per worker).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def conversations(agents: int, steps: int, tokens: int, threads: int, batch: int, requantize: str, workers: int,
                  json_path: Path | None) -> None:
    """Multi-turn agents on the engine, without and with the conversation cache: makespan, prefill saved. With
    --workers 2: on two LLM workers, without and with affinity: affinity hit rate, prefill saved."""
    from aios_bench.conversations import run_conversations_bench

    try:
        run_conversations_bench(agents=agents, steps=steps, tokens=tokens, threads=threads, batch=batch,
                                requantize=requantize, data_dir=Path(get_settings().data_dir), workers=workers,
                                json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--agents", default="8,16,32", show_default=True, callback=_int_list,
              help="Numbers of concurrent agents, comma-separated.")
@click.option("--steps", default=3, show_default=True, help="LLM + tool syscall pairs per agent script.")
@click.option("--short", "short", default=24, show_default=True, help="max_tokens of a short LLM step.")
@click.option("--long", "long", default=160, show_default=True, help="max_tokens of a long LLM step (every eighth).")
@click.option("--batch-size", default=16, show_default=True,
              help="Sequences decoded together (batching), and llama-server's slots (-np).")
@click.option("--quantum", default=16, show_default=True, help="Time slice in tokens (round robin).")
@click.option("--threads", default=2, show_default=True, help="llama.cpp threads, for the servers and the kernel alike.")
@click.option("--contenders", default="baseline,llama_server,fifo,rr,batching", show_default=True)
@click.option("--single-turn/--no-single-turn", default=True, show_default=True,
              help="The single-turn workload (--agents x --steps).")
@click.option("--multi-turn", is_flag=True, help="Also the multi-turn workload: each call carries the whole conversation.")
@click.option("--multi-turn-agents", default=16, show_default=True)
@click.option("--multi-turn-steps", default=6, show_default=True)
@click.option("--multi-turn-contenders", default="llama_server,batching", show_default=True)
@click.option("--emulated", is_flag=True,
              help="Also the paper's scale: thousands of agents against an emulated 8B model on one GPU.")
@click.option("--emulated-agents", default="250,500,1000,2000", show_default=True, callback=_int_list)
@click.option("--emulated-calls", default=2, show_default=True, help="LLM calls per emulated agent, in turn.")
@click.option("--emulated-max-tokens", default=256, show_default=True)
@click.option("--emulated-workers", default=4, show_default=True,
              help="The kernel's LLM worker processes (their threads together: one per agent).")
@click.option("--emulated-ramp-s", default=5.0, show_default=True,
              help="The emulated agents start spread over this many seconds (a load generator's spawn rate).")
@click.option("--quick", is_flag=True, help="--emulated small: 50 and 100 agents, 2 calls of about 64 tokens, 2 workers.")
@click.option("--llama-server", "llama_server", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A llama-server binary to use instead of the one built (once) from llama-cpp-python's sdist.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def agents(agents: tuple[int, ...], steps: int, short: int, long: int, batch_size: int, quantum: int, threads: int,
           contenders: str, single_turn: bool, multi_turn: bool, multi_turn_agents: int, multi_turn_steps: int,
           multi_turn_contenders: str, emulated: bool, emulated_agents: tuple[int, ...], emulated_calls: int,
           emulated_max_tokens: int, emulated_workers: int, emulated_ramp_s: float, quick: bool, llama_server: Path | None,
           json_path: Path | None) -> None:
    """N concurrent ReAct-style agents: llama.cpp's servers directly vs the kernel with FIFO, RR, batching."""
    from aios_bench.agents import run_agents_bench
    from aios_bench.emulated import QUICK, EmulatedParams

    def names(text: str) -> tuple[str, ...]:
        return tuple(c.strip() for c in text.split(",") if c.strip())

    scale = None
    if emulated:
        scale = QUICK if quick else EmulatedParams(agents=emulated_agents, calls=emulated_calls,
                                                   max_tokens=emulated_max_tokens, workers=emulated_workers,
                                                   ramp_s=emulated_ramp_s)
    try:
        run_agents_bench(get_settings(), agents=list(agents), steps=steps, short=short, long=long,
                         batch_size=batch_size, quantum=quantum, threads=threads, contenders=names(contenders),
                         single_turn=single_turn, multi_turn=multi_turn, multi_agents=multi_turn_agents,
                         multi_steps=multi_turn_steps, multi_contenders=names(multi_turn_contenders),
                         emulated=scale, llama_server=llama_server, json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--agents", callback=_int_list, default=None,
              help="Numbers of concurrent agents, comma-separated; 256 gives gateway_streams_256_ok.  [default: 64,256]")
@click.option("--calls", type=int, default=None, help="Calls per agent: rounds, each of one call per agent, the contenders in turn.  [default: 3]")
@click.option("--service-ms", type=float, default=None, help="Provider service time per request.  [default: 50]")
@click.option("--max-tokens", type=int, default=None, help="max_tokens of every call.  [default: 32]")
@click.option("--llm-threads", type=int, default=None, help="Threads of the kernel's LLM worker.  [default: 64]")
@click.option("--quick", is_flag=True, help="A short run (1 call per agent).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def gateway(quick: bool, json_path: Path | None, **given: Any) -> None:
    """OpenAI clients through the gateway vs directly at the provider vs the SDK path (64 and 256 agents)."""
    from aios_bench.gateway import QUICK, GatewayParams, run_gateway_bench

    try:
        run_gateway_bench(get_settings(), _params(GatewayParams(), QUICK, quick, given), json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--brokers", default="embedded,redis,rabbitmq", show_default=True,
              help="Comma-separated: embedded (the aios up Valkey), redis (a redis-server of the benchmark's own, "
                   "append-only), rabbitmq (a private vhost of the local RabbitMQ; restarting it needs rabbitmqctl).")
@click.option("--agents", default=32, show_default=True, help="Agents (threads), a third on each resource.")
@click.option("--seconds", default=60.0, show_default=True, help="Length of the fault phase per broker.")
@click.option("--kills", default=3, show_default=True, help="SIGKILLs of each worker type per broker.")
@click.option("--seed", default=13, show_default=True, help="Seed of the fault schedule.")
@click.option("--timeout-s", default=30.0, show_default=True,
              help="Each syscall's timeout_s, and the kernel's AIOS_MAX_SYSCALL_TIMEOUT_S (visibility timeout: +5 s).")
@click.option("--quick", is_flag=True,
              help="A short run: 15 agents, 12 s of faults per broker, 18 s timeouts (about 3 minutes for all three).")
@click.option("--at-least-once", is_flag=True,
              help="The agents' side-effecting tool is the plain ledger_append (run again when a copy is delivered "
                   "after a kill) instead of ledger_append_once (at-most-once: answered `interrupted`).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def chaos(brokers: str, agents: int, seconds: float, kills: int, seed: int, timeout_s: float, quick: bool,
          at_least_once: bool, json_path: Path | None) -> None:
    """Steady load while workers are SIGKILLed and the broker restarts: lost, twice, time to recover."""
    from aios_bench.chaos import run_chaos

    chosen = [b.strip() for b in brokers.split(",") if b.strip()]
    unknown = set(chosen) - {"embedded", "redis", "rabbitmq"}
    if unknown:
        _fail(ValueError(f"unknown brokers {sorted(unknown)}: use embedded, redis, rabbitmq"))
    if quick:
        agents, seconds, timeout_s = min(agents, 15), min(seconds, 12.0), min(timeout_s, 18.0)
    try:
        run_chaos(get_settings(), brokers=chosen, agents=agents, phase_s=seconds, kills=kills, seed=seed,
                  timeout_s=timeout_s, json_path=json_path,
                  tool="ledger_append" if at_least_once else "ledger_append_once")
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--minutes", default=30.0, show_default=True, help="Length of the steady load.")
@click.option("--agents", default=8, show_default=True, help="Agents (threads) looping over LLM, tool, storage.")
@click.option("--sample-s", default=5.0, show_default=True, help="Seconds between samples.")
@click.option("--result-ttl-s", type=int, default=None,
              help="The kernel's AIOS_RESULT_TTL_S (answers are kept this long); unset: the default, a day.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def soak(minutes: float, agents: int, sample_s: float, result_ttl_s: int | None, json_path: Path | None) -> None:
    """Steady mixed load for a while: worker RSS, Redis memory, descriptors, queue depth; keys left behind."""
    from aios_bench.soak import run_soak

    try:
        run_soak(get_settings(), minutes=minutes, agents=agents, sample_s=sample_s, result_ttl_s=result_ttl_s,
                 json_path=json_path)
    except AIOSError as exc:
        _fail(exc)
