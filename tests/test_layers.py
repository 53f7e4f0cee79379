"""The layers of aios/ as the folder tree shows them, checked on the imports: no cycles, and no layer reaching
up into one above it (module-level imports; an import inside a function is a deliberate late binding and is
checked for layers too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "aios"

# A layer may import itself and the layers listed for it (besides third-party code).
ALLOWED: dict[str, set[str]] = {
    "wire": set(),
    "settings": {"wire"},
    "state": {"wire", "settings"},
    "broker": {"wire", "settings", "state"},
    "policy": {"wire", "settings", "state", "broker"},
    "sdk": {"wire", "settings", "state", "broker", "policy"},
    "services": {"wire", "settings", "state", "broker", "policy"},
    "worker": {"wire", "settings", "state", "broker", "policy", "services"},
    "gateway": {"wire", "settings", "state", "broker", "policy", "sdk"},
    "testing": {"wire", "settings", "state", "broker", "policy", "services", "worker", "sdk", "ops", "gateway"},
    "ops": {"wire", "settings", "state", "broker", "policy", "services", "worker", "sdk", "gateway"},
    "__init__": {"sdk", "wire", "settings"},
    "__main__": {"ops"},
}
SDK_FORBIDDEN = ("aios.worker", "aios.services", "aios.ops", "aios.policy.governor")


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` blocks are not imports at run time
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "aios":
                out.update(f"aios.{a.name}" for a in node.names)
            elif node.module.startswith("aios."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("aios."))
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_layer_imports_one_above_it() -> None:
    bad = []
    for path in _files():
        mod = _module(path)
        layer = "__init__" if mod == "aios" else ("__main__" if mod == "aios.__main__" else _layer(mod))
        for imp in _imports(path, top_level_only=False):
            target = _layer(imp)
            if target != layer and target not in ALLOWED[layer]:
                bad.append(f"{mod} imports {imp}")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_the_sdk_imports_nothing_worker_side() -> None:
    bad = [f"{_module(p)} imports {imp}" for p in _files() if _module(p).startswith("aios.sdk")
           for imp in _imports(p, top_level_only=False) if imp.startswith(SDK_FORBIDDEN)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles_at_module_level() -> None:
    graph: dict[str, set[str]] = {}
    known = {_module(p) for p in _files()}
    for path in _files():
        deps = set()
        for imp in _imports(path, top_level_only=True):
            while imp and imp not in known:  # "from aios.x import y" where y is a name, not a module
                imp = imp.rpartition(".")[0]
            if imp and imp != _module(path):
                deps.add(imp)
        graph[_module(path)] = deps
    # Packages import their own modules through __init__; a parent package is not a dependency cycle.
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for dep in graph.get(node, ()):
            if seen.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in seen:
                visit(dep)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_is_long_without_saying_why() -> None:
    long = []
    for path in _files():
        lines = path.read_text().splitlines()
        if len(lines) > 500:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if "Why this module is long" not in doc:
                long.append(f"{_module(path)}: {len(lines)} lines")
    assert not long, "modules over 500 lines need a reason at their top ('Why this module is long: ...'):\n" + \
        "\n".join(long)


def test_one_function_publishes_syscalls_and_one_writes_replies() -> None:
    """``aios.broker.publish.publish_syscall`` is the only caller of Celery's ``send_task`` in the kernel, and
    ``aios.state.replies`` (with ``reply.lua``) the only writer of reply lists; on RabbitMQ it hands answers to
    ``aios.broker.reply_queues`` (its ``deliver``), the only publisher of replies."""
    publishers, repliers = [], []
    for path in _files():
        text = path.read_text()
        mod = _module(path)
        if "send_task(" in text and mod != "aios.broker.publish":
            publishers.append(mod)
        if ".publish(" in text and mod not in ("aios.broker.publish", "aios.broker.reply_queues"):
            publishers.append(mod)
        if ('register(client, "reply")' in text or "keys.reply(" in text) and mod not in (
                "aios.state.replies", "aios.sdk.core", "aios.sdk.sync", "aios.sdk.asyncio", "aios.testing.harness"):
            repliers.append(mod)
    lua = [p.name for p in (ROOT / "state" / "lua").glob("*.lua") if "RPUSH" in p.read_text() and p.name != "age.lua"]
    assert publishers == [], f"publishing outside aios.broker.publish: {publishers}"
    assert repliers == [], f"reply keys touched outside aios.state.replies (and the SDK's reading): {repliers}"
    assert lua == ["reply.lua"]
