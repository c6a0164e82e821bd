"""Applies the mutant named by MUTANT (bench/mutants.py) in every Python process started with this directory on
PYTHONPATH: only bench/mutants.py puts it there. Without MUTANT it does nothing.

The patch is made right after the mutant's module is first executed, before any `from module import name`
elsewhere reads the attribute. It shadows the interpreter's own sitecustomize (Debian's apport hook),
which it runs first so nothing else changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def _run_shadowed_sitecustomize() -> None:
    here = Path(__file__).resolve().parent
    for entry in sys.path:
        if entry and Path(entry).resolve() != here:
            spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [entry])
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
                return


def _mutants() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "mutants.py"
    spec = importlib.util.spec_from_file_location("_bench_mutants", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds the mutant's module like the rest of sys.meta_path would, and patches it once executed."""

    def __init__(self, mutants: ModuleType, mutant: Any) -> None:
        self.mutants, self.mutant = mutants, mutant

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.mutant.module:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            self.mutants.patch(module, self.mutant.attribute, self.mutant.wrap)

        spec.loader.exec_module = exec_module
        return spec


def _install() -> None:
    name = os.environ.get("MUTANT")
    if not name:
        return
    mutants = _mutants()
    mutant = mutants.MUTANTS[name]
    if mutant.module in sys.modules:
        mutants.patch(sys.modules[mutant.module], mutant.attribute, mutant.wrap)
    else:
        sys.meta_path.insert(0, _PatchAfterImport(mutants, mutant))


_run_shadowed_sitecustomize()
_install()
