"""The tool worker: ``celery -A workers.tool worker -Q aios.tool`` (or ``aios worker tool``)."""

from aios.kernel import create_worker_app
from aios.tools import ToolService

app = create_worker_app("tool", lambda settings: ToolService())


@app.task(name="aios.bench.noop")
def bench_noop() -> None:
    """A plain Celery no-op: the baseline that ``aios bench overhead`` compares the kernel's round trip with."""
    return None


app.aios_runtime.plain_tasks.add(bench_noop.name)  # type: ignore[attr-defined]
