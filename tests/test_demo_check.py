"""`python -m shared demo --check` (`make run CHECK=1`, CI's main job): the exit status follows the check.

The passing side is CI's own run (`.ci/run`); here a run whose check must fail: three cars over nine
months, none of whose batteries in service comes near its rated cycles, so there is no recall to judge.
"""

from __future__ import annotations

import json

import pytest

from shared.cli import main

pytestmark = pytest.mark.slow


def test_demo_check_exits_1_and_says_why_when_the_check_fails(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--cars", "3", "--start", "2015-01-01", "--end", "2015-09-30",
                 "--seed", "1", "--replay-days", "2", "--check"]) == 1  # fmt: skip
    output = capsys.readouterr()
    assert "## Check against the simulator's truth" in output.out  # the run itself went through
    assert json.loads((tmp_path / "summary.json").read_text())["check"]["due_within_30_days"] == 0
    assert "check failed: no battery was due to reach rated life within 30 days" in output.err
