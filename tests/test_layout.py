"""The house rules of DESIGN.md, checked: core -> data -> nets -> distributions -> models ->
inference -> diagnostics -> runs -> cli, nothing imports from a layer above it, no import circle
(function-level imports included, since they are how a circle hides), small modules, a CLI that
only parses, and a start that loads heavy libraries only when they are needed."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lvmkit"
LAYERS = [
    "core",
    "data",
    "nets",
    "distributions",
    "models",
    "inference",
    "diagnostics",
    "runs",
    "cli",
]


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


def test_no_module_is_over_450_lines_and_the_cli_only_parses():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}  # fmt: skip
    assert {p: n for p, n in sizes.items() if n > 450} == {}
    assert sizes["lvmkit/cli.py"] <= 350


def loaded_after(code: str) -> set[str]:
    """Which of torch, pyro, sklearn, arviz, matplotlib a fresh interpreter holds after code."""
    heavy = ["torch", "pyro", "sklearn", "arviz", "matplotlib"]
    probe = f"{code}\nimport sys\nprint('LOADED', *(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split("LOADED")[-1].split())


def test_help_and_argument_errors_answer_without_torch():
    calls = "".join(
        f"try:\n    main({argv})\nexcept SystemExit:\n    pass\n"
        for argv in (["--help"], ["fit", "lvm", "--epochs", "0"], ["evaluate"])
    )
    assert loaded_after(f"import lvmkit\nfrom lvmkit.cli import main\n{calls}") == set()


def test_the_library_loads_scikit_learn_arviz_and_matplotlib_only_when_used():
    used = "import lvmkit\nlvmkit.fit, lvmkit.em, lvmkit.diagnose, lvmkit.load_run, lvmkit.data"
    assert loaded_after(used) == {"torch", "pyro"}
    assert "sklearn" in loaded_after("import lvmkit\nlvmkit.GaussianMixtureEM")
