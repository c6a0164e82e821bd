"""The model comparison page: metrics of every candidate and the baselines, the best model marked by the
champion rule, embedded figures, the fairness table when recorded, and the CLI that writes it."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
from _models import model_dir

from shared.cli import main
from shared.core.telemetry import InputError
from shared.models.comparison import BEST_MARK, best_candidate, comparison_html, load_candidates

pytestmark = pytest.mark.slow  # trains the shared small model once


def second_model(tmp_path: Path, brier_factor: float, fairness: dict | None = None) -> Path:
    """A copy of the trained model directory as another version whose Brier score is scaled."""
    directory = tmp_path / f"candidate-{brier_factor}"
    shutil.copytree(model_dir(), directory)
    metadata = json.loads((directory / "metadata.json").read_text())
    metadata["version"] = f"{metadata['version']}-x{brier_factor}"
    metadata["backtest"]["metrics"]["model"]["brier"] *= brier_factor
    if fairness is not None:
        metadata["fairness"] = fairness
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return directory


def best_row(page: str) -> str:
    rows = re.findall(r"<tr class='best'>(.*?)</tr>", page)
    assert len(rows) == 1, rows
    return rows[0]


def test_the_page_marks_the_candidate_the_champion_rule_picks_and_embeds_pngs(tmp_path: Path) -> None:
    worse = second_model(tmp_path, 1.5)
    better = second_model(tmp_path, 0.5)
    candidates = load_candidates([model_dir(), worse, better])
    assert best_candidate(candidates).model_dir == better
    page = comparison_html(candidates)
    assert page.count("<table") >= 2 and "baseline: Seasonal naive" in page and "baseline: Recent mean" in page
    assert BEST_MARK in best_row(page) and candidates[2].metadata["version"] in best_row(page)
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) >= 2
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)


def test_the_fairness_table_and_data_quality_are_rendered_when_recorded(tmp_path: Path) -> None:
    fairness = {
        "limit": {"recall_gap": 0.05},
        "by_group": [
            {"attribute": "Region", "group": "North", "recall": 0.61, "selection_rate": 0.2},
            {"attribute": "Region", "group": "South", "recall": 0.83, "selection_rate": 0.3},
        ],
    }
    page = comparison_html(load_candidates([model_dir(), second_model(tmp_path, 1.1, fairness)]))
    assert "<td class='text'>North</td>" in page and "<td>0.61</td>" in page
    assert "No fairness assessment recorded" in page  # the first model has none
    assert "rows in" in page


def test_cli_report_writes_one_self_contained_html_file(tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    assert main(["report", "--model-dir", str(model_dir()), str(second_model(tmp_path, 0.9)), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and BEST_MARK in page
    assert "src='http" not in page and "href=" not in page  # nothing fetched from elsewhere


def test_a_directory_without_a_backtest_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(json.dumps({"version": "v1"}))
    with pytest.raises(InputError, match=str(tmp_path)):
        load_candidates([tmp_path])
