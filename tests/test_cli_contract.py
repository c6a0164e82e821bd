"""The CLI is a fixed contract (docs and scripts call it): every command and flag of today stays.

Commands and flags may be added (the contract extends only by adding); none listed here may go or be
renamed. The table is the contract itself, written out, not read from the parser under test.
"""

from __future__ import annotations

import argparse

from shared.cli import build_parser

CONTRACT = {
    "simulate": ["--cars", "--end", "--out", "--seed", "--start"],
    "prepare": ["--data", "--out"],
    "train": ["--cars", "--data", "--model", "--model-dir"],
    "score": ["--as-of", "--data", "--engine", "--forecast-out", "--master", "--model-dir", "--out", "--threshold"],
    "explain": ["--as-of", "--battery", "--data", "--model-dir"],
    "report": ["--model-dir", "--out"],
    "demo": ["--cars", "--check", "--end", "--out", "--replay-days", "--seed", "--start"],
    "registry publish": ["--connection", "--container", "--model-dir"],
    "registry promote": ["--connection", "--container", "--model-dir"],
    "registry champion": ["--connection", "--container"],
    "registry list": ["--connection", "--container"],
    "registry download": ["--connection", "--container", "--model-dir", "--version"],
    "headunit-sim": ["--port", "--signing-key-env"],
    "serve": ["--model-dir", "--port", "--workers"],
    "azureml register-data": ["--data", "--dry-run", "--work-dir"],
    "azureml submit-automl": ["--data-version", "--dry-run"],
    "azureml wrap-automl": ["--automl-job", "--data", "--mlflow-model", "--out", "--trained-until"],
    "azureml register-model": ["--automl-job", "--child-job", "--dry-run", "--model-dir"],
    "azureml deploy": ["--deployment", "--dry-run", "--instance-type", "--model", "--model-dir", "--work-dir"],
    "send-telemetry": ["--connection", "--data", "--day", "--eventhub"],
    "compliance train": ["--alpha", "--data", "--epochs", "--glossary", "--learning-rate", "--model-dir", "--seed"],
    "compliance unread": ["--data", "--model-dir", "--out", "--top"],
    "compliance score": ["--data", "--model-dir", "--out"],
    "compliance alerts": ["--alerts-out", "--data", "--model-dir", "--out"],
    "compliance publish": ["--connection", "--model-dir"],
    "spark submit": ["--as-of", "--dry-run", "--model-version", "--threshold", "--work-dir"],
}


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Every leaf command of the parser with its long flags."""
    subparsers = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not subparsers:
        flags = {option for action in parser._actions for option in action.option_strings}
        return {" ".join(prefix): {flag for flag in flags if flag.startswith("--")} - {"--help"}}
    found: dict[str, set[str]] = {}
    for name, child in subparsers[0].choices.items():
        found.update(_commands(child, (*prefix, name)))
    return found


def test_every_command_and_flag_of_the_contract_is_still_there():
    commands = _commands(build_parser())
    missing = {name: sorted(set(flags) - commands.get(name, set())) for name, flags in CONTRACT.items()}
    assert {name: flags for name, flags in missing.items() if flags or name not in commands} == {}
