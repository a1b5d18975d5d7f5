"""The house rules of DESIGN.md, checked: data -> nets -> distributions -> models -> inference ->
diagnostics -> runs -> cli, nothing imports from a layer above it, and no import circle
(function-level imports included, since they are how a circle hides)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lvmkit"
LAYERS = ["data", "nets", "distributions", "models", "inference", "diagnostics", "runs", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """lvmkit module -> the lvmkit modules it imports, anywhere in its body."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name, targets = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        found[name] = {t for t in targets if t.startswith("lvmkit.")}
    modules = set(found)
    return {m: {t for t in ts if t in modules and t != m} for m, ts in found.items()}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def test_no_module_imports_from_a_layer_above_it():
    upward = [
        (m, t)
        for m, targets in imports().items()
        if m != "lvmkit"  # the package's front door gathers every layer
        for t in targets
        if t != "lvmkit" and layer(t) > layer(m)
    ]
    assert upward == []


def test_no_import_circle():
    graph = imports()
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    # (a module importing its own package's __init__ is Python's normal start-up, not a circle)
    done, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import circle: " + " -> ".join(stack[stack.index(m) :] + [m]))
        if m in done:
            return
        stack.append(m)
        for t in sorted(graph[m]):
            if not t.startswith(m + ".") and t != "lvmkit":
                visit(t)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
