"""The Function App's import stays light, and the package's layers keep their direction.

Every Event Hub scale-out instance pays `import function_app` on cold start, so the training, tracking,
plotting and compliance stacks must load only when a timer runs its job. devtools/ is local only (it is
not deployed), so nothing the app imports may import it; a module-level import circle in shared/
means a module half-initialised on first import, so there must be none; and each layer imports at module
level only the layers docs/architecture.md ("Layers") allows it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "shared"
HEAVY = ("mlflow", "matplotlib", "sklearn", "scipy", "torch", "azure.ai.ml", "pyspark")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(SHARED.rglob("*.py"))}


def imported_modules(path: Path, *, module_level_only: bool) -> set[str]:
    """The shared.* modules a file imports (`from shared.x import y` counts shared.x.y when that is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # imports under `if TYPE_CHECKING:` and try/except at module level still run or matter
        nodes = [node for top in tree.body for node in ast.walk(top)
                 if not isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                 and not (isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test))]  # fmt: skip
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


# Layer -> the layers its modules may import at module level (docs/architecture.md, "Layers"). A command
# or a timer may import more inside its function body; devtools/ may import anything but is imported by
# nobody outside devtools/ and cli/ (test_nothing_outside_devtools_and_cli_imports_devtools).
ALLOWED_IMPORTS = {
    "core": {"core"},
    "config": {"config", "core"},
    "models": {"models", "core"},
    "compliance": {"compliance", "core"},
    "endpoint": {"endpoint", "models", "core"},
    "adapters": {"adapters", "models", "endpoint", "config", "core"},
    "bootstrap": {"adapters", "config"},
    "handlers": {"handlers", "bootstrap", "adapters", "compliance", "models", "config", "core"},
    "spark": {"spark", "models", "config", "core"},
    "cli": {"cli", "spark", "config", "core"},
    "function_app": {"handlers", "bootstrap", "adapters", "config", "core"},
}


def layer(module: str) -> str:
    """shared.core.risk -> core, shared.bootstrap -> bootstrap, function_app -> function_app."""
    parts = module.split(".")
    return parts[1] if parts[0] == "shared" and len(parts) > 1 else parts[0]


def test_every_layer_imports_only_the_layers_below_it() -> None:
    files = {**MODULES, "function_app": ROOT / "function_app.py"}
    crossings = {name: sorted(target for target in imported_modules(path, module_level_only=True)
                              if target != "shared" and layer(target) not in ALLOWED_IMPORTS[layer(name)])
                 for name, path in files.items() if layer(name) in ALLOWED_IMPORTS}  # fmt: skip
    assert {name: targets for name, targets in crossings.items() if targets} == {}
    assert set(ALLOWED_IMPORTS) == {layer(name) for name in files} - {"devtools", "shared", "__main__"}


def test_importing_function_app_loads_no_training_tracking_plotting_or_azure_ml_stack() -> None:
    script = "import json, sys; import function_app; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    heavy = [top for top in HEAVY if any(name == top or name.startswith(top + ".") for name in loaded)]
    assert heavy == [], f"import function_app loads {heavy}"
    assert not any(name.startswith("shared.devtools") for name in loaded)


def test_nothing_outside_devtools_and_cli_imports_devtools() -> None:
    offenders = {name: sorted(target for target in imported_modules(path, module_level_only=False)
                              if target.startswith("shared.devtools"))
                 for name, path in MODULES.items()
                 if not name.startswith(("shared.devtools", "shared.cli"))}  # fmt: skip
    offenders.update({"function_app": sorted(target for target in imported_modules(ROOT / "function_app.py",
                      module_level_only=False) if target.startswith("shared.devtools"))})  # fmt: skip
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_shared_has_no_import_cycle_at_module_level() -> None:
    graph = {name: imported_modules(path, module_level_only=True) - {name} for name, path in MODULES.items()}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == []
