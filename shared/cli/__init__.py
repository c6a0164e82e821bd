"""`python -m shared <command>`: the same functions the Function App uses, for people and scripts.

Each command is a small `add_<name>` function that declares its arguments and a `run_<name>` that calls
`shared/`, in the module of its area: data.py (simulate, prepare, train, score, explain, report),
registry.py, azureml.py, compliance.py, local.py (demo, headunit-sim, serve, send-telemetry). COMMANDS
below is the one table from command name to that pair. Exit codes: 0 done, 2 bad input (the message
names the file, column and rows), 1 anything else.
"""

from __future__ import annotations

import argparse
import sys

from shared.cli import azureml, compliance, data, local, registry
from shared.cli.common import Command
from shared.config.settings import SettingsError
from shared.core.telemetry import InputError
from shared.spark import cli as spark_cli

COMMANDS: dict[str, Command] = {
    "simulate": (data.add_simulate, data.run_simulate),
    "prepare": (data.add_prepare, data.run_prepare),
    "train": (data.add_train, data.run_train),
    "score": (data.add_score, data.run_score),
    "explain": (data.add_explain, data.run_explain),
    "report": (data.add_report, data.run_report),
    "demo": (local.add_demo, local.run_demo),
    "registry": (registry.add_registry, registry.run_registry),
    "headunit-sim": (local.add_headunit_sim, local.run_headunit_sim),
    "serve": (local.add_serve, local.run_serve),
    "azureml": (azureml.add_azureml, azureml.run_azureml),
    "send-telemetry": (local.add_send_telemetry, local.run_send_telemetry),
    "compliance": (compliance.add_compliance, compliance.run_compliance),
    "spark": (spark_cli.add_spark, spark_cli.run_spark),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared",
        description="Battery alerting backend: simulate, prepare, train, score, serve and deploy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, run in COMMANDS.values():
        add(sub).set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (InputError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
