"""The Function App's deployment package: what `.funcignore` leaves in, and that it runs on requirements.txt alone.

The package's file list is the repository's files (`git ls-files`: tracked, plus untracked files git does
not ignore) minus what `.funcignore` matches. The matching follows gitignore's rules, the subset
`.funcignore` uses (pathspec is not installed, so fnmatch per path component):
- a blank line or `#` starts nothing; `!pattern` re-includes; the last matching line wins;
- a trailing `/` matches directories only; a leading `/` (or any other `/`) anchors the pattern at the
  project root, otherwise it matches a file or directory name at any depth;
- `*`, `?` and `[...]` never match `/`; a path is left out when it or any directory above it is (git
  cannot re-include a file under an excluded directory either);
- `**` is not supported, and the test fails if `.funcignore` uses it rather than misread it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import subprocess
import venv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUNCIGNORE = ROOT / ".funcignore"
REQUIREMENTS = ROOT / "requirements.txt"
DEPLOY_VENVS = ROOT / ".venv-deploy"

# What `make`, the tests and the local host leave in a working copy (git ignores them, so `git ls-files`
# does not list them): each must stay out of the package too.
LOCAL_STATE = [
    ".venv/bin/python", ".venv-deploy/0123abcd/bin/python", ".checkov-venv/bin/python", "node_modules/azurite/x.js",
    "data/run/summary.md", "data/mlflow/mlflow.db", "mlruns/0/meta.yaml", "local.settings.json",
    "shared/__pycache__/bootstrap.cpython-311.pyc", "shared/core/risk.pyc", ".pytest_cache/v/cache/nodeids",
    ".ruff_cache/CACHEDIR.TAG", "__azurite_db_blob__.json", "__blobstorage__/x", "__queuestorage__/x",
    ".python_packages/lib/site-packages/x.py", ".azure/dev/.env", "swagger2.json",
]  # fmt: skip
NEVER_DEPLOYED = ("shared/devtools/", "tests/", "bench/", "data/", "docs/", "tools/", "infra/", ".github/",
                  ".devcontainer/", ".venv/", "node_modules/")  # fmt: skip


@dataclass(frozen=True)
class Rule:
    pattern: tuple[str, ...]  # path components, each an fnmatch pattern
    anchored: bool
    directory_only: bool
    negated: bool

    def matches(self, parts: tuple[str, ...], is_dir: bool) -> bool:
        if self.directory_only and not is_dir:
            return False
        starts = [0] if self.anchored else range(len(parts) - len(self.pattern) + 1)
        return any(
            len(parts) - start == len(self.pattern)
            and all(fnmatch.fnmatchcase(part, glob) for part, glob in zip(parts[start:], self.pattern, strict=True))
            for start in starts
        )


def funcignore_rules(text: str) -> list[Rule]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "**" in line:
            raise ValueError(f".funcignore: {line!r} uses **, which this test's matcher does not read")
        negated = line.startswith("!")
        line = line.removeprefix("!")
        directory_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        rules.append(Rule(tuple(line.lstrip("/").split("/")), anchored, directory_only, negated))
    return rules


def ignored(path: str, rules: list[Rule]) -> bool:
    """Whether the package leaves `path` (a file, relative, POSIX) out: it or a directory above it is ignored."""
    parts = PurePosixPath(path).parts
    for depth in range(1, len(parts) + 1):
        is_dir = depth < len(parts)
        verdict = False
        for rule in rules:
            if rule.matches(parts[:depth], is_dir):
                verdict = not rule.negated
        if verdict:
            return True
    return False


def repository_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    return sorted(name for name in listed.split("\0") if name and (ROOT / name).is_file())


def deployed_files() -> list[str]:
    rules = funcignore_rules(FUNCIGNORE.read_text())
    return [name for name in repository_files() if not ignored(name, rules)]


def module_name(path: str) -> str:
    parts = PurePosixPath(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_matcher_reads_gitignore_rules() -> None:
    rules = funcignore_rules("/infra/\n*.md\nbuild/\n!keep.md\n/shared/cli/\n")
    assert ignored("infra/main.bicep", rules) and not ignored("shared/infra/x.py", rules)  # anchored
    assert ignored("README.md", rules) and ignored("docs/deep/x.md", rules) and not ignored("keep.md", rules)
    assert ignored("a/build/x.py", rules) and not ignored("a/build", rules)  # a directory rule skips a file
    assert ignored("shared/cli/__init__.py", rules) and not ignored("shared/client.py", rules)
    with pytest.raises(ValueError, match=r"\*\*"):
        funcignore_rules("docs/**/x\n")


def test_the_package_holds_the_app_and_nothing_local() -> None:
    files = deployed_files()
    assert {"function_app.py", "host.json", "requirements.txt", "shared/bootstrap.py",
            "shared/compliance/lexicon.json", "scoring/requirements.txt"} <= set(files)  # fmt: skip
    assert [name for name in files if name.startswith(NEVER_DEPLOYED)] == []
    assert "scoring/score.py" not in files
    assert [name for name in files if name.endswith(".md") or name == "local.settings.json"] == []
    rules = funcignore_rules(FUNCIGNORE.read_text())
    assert [path for path in LOCAL_STATE if not ignored(path, rules)] == []


def deploy_venv() -> Path:
    """A venv with requirements.txt alone, under .venv-deploy/<hash of requirements.txt>: built once per
    change of that file (a few minutes on a clean machine), reused by every later run."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    home = DEPLOY_VENVS / key
    python = home / "bin" / "python"
    installed = home / ".installed"
    if not installed.exists():
        shutil.rmtree(home, ignore_errors=True)
        venv.create(home, with_pip=True, clear=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "-r", REQUIREMENTS], check=True)  # fmt: skip
        installed.touch()
    return python


SPARK_JOB = "shared.spark.job"
IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except BaseException as error:
        failures[name] = "".join(traceback.format_exception_only(error)).strip()
print(json.dumps(failures))
"""


@pytest.mark.slow
def test_every_deployed_module_imports_with_only_requirements_txt(tmp_path: Path) -> None:
    """Run from a copy of the package (so a module that needs a left-out file fails here, not in Azure)."""
    package = tmp_path / "package"
    for name in deployed_files():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, package / name)
    modules = [module_name(name) for name in deployed_files() if name.endswith(".py")]
    assert "function_app" in modules and "shared.adapters.azureml" in modules
    result = subprocess.run([deploy_venv(), "-I", "-c", f"import sys; sys.path.insert(0, ''); {IMPORT_EACH}",
                             json.dumps(modules)], cwd=package, capture_output=True, text=True, check=True)  # fmt: skip
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    # Shipped for a Spark cluster to run (which has pyspark), never imported by the app itself.
    assert failures.pop(SPARK_JOB, "").startswith("ModuleNotFoundError: No module named 'pyspark'")
    assert failures == {}, "\n".join(f"{name}: {error}" for name, error in failures.items())
