"""The design lives in the repository: docs/architecture.md and docs/contracts.md, linked from the README,
and no tracked file points at a design document outside it (a person who clones the repo has no
../shared/)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ("../shared/", "DESIGN.md")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / name for name in names.decode().split("\0") if name]
    return [path for path in paths if path.is_file() and b"\0" not in path.read_bytes()[:8192]]


def test_no_tracked_file_references_a_design_document_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    found = {str(path.relative_to(ROOT)): [needle for needle in OUTSIDE if needle in path.read_text(errors="replace")]
             for path in tracked_text_files() if path != this}  # fmt: skip
    assert {path: needles for path, needles in found.items() if needles} == {}


def test_the_readme_links_the_architecture_and_the_contracts_and_every_relative_link_resolves() -> None:
    readme = (ROOT / "README.md").read_text()
    links = {target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", readme)
             if not target.startswith(("http://", "https://", "#", "mailto:"))}  # fmt: skip
    assert {"docs/architecture.md", "docs/contracts.md"} <= links
    assert sorted(link for link in links if not (ROOT / link).exists()) == []
