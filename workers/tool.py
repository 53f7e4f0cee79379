"""The tool worker: ``celery -A workers.tool worker -Q aios.tool`` (or ``aios worker tool``).

Its registry is the built-in tools plus the plugins of :mod:`aios.services.tools.plugins` (entry points,
``AIOS_TOOL_MODULES``, ``AIOS_MCP_SERVERS``), loaded in the worker process when the first syscall arrives. The file
tools act on ``AIOS_DATA_DIR``, which must be the storage worker's too.
"""

from aios.services.tools.plugins import load_plugins
from aios.services.tools.service import ToolService, builtin_registry
from aios.settings import Settings
from aios.worker.app import create_worker_app


def make_service(settings: Settings) -> ToolService:
    return ToolService(load_plugins(builtin_registry(), settings.tools), settings)


app = create_worker_app("tool", make_service)

