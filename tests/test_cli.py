"""The CLI contract: --help everywhere, exit code 2 with a clear message on bad input."""

import subprocess
import sys

import pytest

from shared.cli import COMMANDS, build_parser, main
from shared.core.telemetry import COLUMNS

HEADER = ",".join(COLUMNS)
GOOD = "2017-03-19,17,CAR-00017,1538,5,61.2,0.15,196.4,200"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: python -m shared " + command in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "the file is empty"),
        (HEADER.replace(",Car_ID", "") + "\n" + GOOD.replace(",CAR-00017", "") + "\n", "missing column(s): Car_ID"),
        (
            f"{HEADER}\n{GOOD}\n{GOOD.replace(',61.2,', ',lots,')}\n",
            "column Daily_Trip_Duration: not a number on line 3",
        ),
        *[
            (
                f"{HEADER}\n{GOOD}\n{GOOD.replace('2017-03-19', day)}\n",
                f"column Date: outside the dates this system holds (1677-09-22 to 2262-04-11) on line 3 ('{day}')",
            )
            for day in ("9999-12-31", "0001-01-01", "3000-01-01")
        ],
    ],
)
@pytest.mark.parametrize("command", ["train", "score", "prepare"])
def test_bad_csv_stops_with_exit_code_2_naming_file_and_column(tmp_path, capsys, command, text, expected):
    data = tmp_path / "telemetry.csv"
    data.write_text(text)
    model_dir = tmp_path / "model"
    args = {
        "train": ["train", "--data", str(data), "--model-dir", str(model_dir)],
        "score": [
            "score",
            "--data",
            str(data),
            "--model-dir",
            str(model_dir),
            "--as-of",
            "2017-03-19",
            "--out",
            str(tmp_path / "scores.csv"),
        ],
        "prepare": ["prepare", "--data", str(data), "--out", str(tmp_path / "clean.csv")],
    }[command]
    assert main(args) == 2
    error_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert error_line.startswith(f"error: {data}")
    assert expected in error_line


def test_score_rejects_a_malformed_day(tmp_path, capsys):
    data = tmp_path / "telemetry.csv"
    data.write_text(f"{HEADER}\n{GOOD}\n")
    code = main(
        [
            "score",
            "--data",
            str(data),
            "--model-dir",
            str(tmp_path),
            "--as-of",
            "19/03/2017",
            "--out",
            str(tmp_path / "s.csv"),
        ]
    )
    assert code == 2
    assert "--as-of must be a day as YYYY-MM-DD, got '19/03/2017'" in capsys.readouterr().err


def test_module_entry_point_exits_2_on_bad_input(tmp_path):
    data = tmp_path / "empty.csv"
    data.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "shared", "prepare", "--data", str(data), "--out", str(tmp_path / "c.csv")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "empty.csv: the file is empty" in result.stderr
