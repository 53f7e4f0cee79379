"""The tool worker: ``celery -A workers.tool worker -Q aios.tool`` (or ``aios worker tool``).

Its registry is the built-in tools plus the plugins of :mod:`aios.tool_plugins` (entry points,
``AIOS_TOOL_MODULES``, ``AIOS_MCP_SERVERS``), loaded in the worker process when the first syscall arrives. The file
tools act on ``AIOS_DATA_DIR``, which must be the storage worker's too.
"""

from aios.kernel import create_worker_app
from aios.settings import Settings
from aios.tool_plugins import load_plugins
from aios.tools import ToolService, builtin_registry


def make_service(settings: Settings) -> ToolService:
    return ToolService(load_plugins(builtin_registry()), settings)


app = create_worker_app("tool", make_service)  # type: ignore[arg-type]  # handle() takes ToolSyscall only


@app.task(name="aios.bench.noop")
def bench_noop() -> None:
    """A plain Celery no-op: the baseline that ``aios bench overhead`` compares the kernel's round trip with."""
    return None


app.aios_runtime.plain_tasks.add(bench_noop.name)  # type: ignore[attr-defined]
