"""`azureml`: register data, run AutoML, wrap, register and deploy models in an Azure ML workspace.

Every action but wrap-automl takes --dry-run, which prints the YAML of what would be submitted and needs
no workspace; azure-ai-ml is imported only when an action runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shared.cli.common import RunCommand, progress
from shared.core.telemetry import InputError

if TYPE_CHECKING:
    from azure.ai.ml import MLClient


def workspace() -> MLClient:
    """The workspace client, built only by actions that submit (a dry run needs no AZUREML_* setting)."""
    from shared.adapters import azureml
    from shared.config.settings import load_settings

    return azureml.workspace_client(load_settings())


def register_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="telemetry CSV (raw or clean)")
    parser.add_argument("--work-dir", type=Path, default=Path("data/azureml/mltable"),
                        help="where to write the MLTable folder (default data/azureml/mltable)")  # fmt: skip


def register_data(args: argparse.Namespace) -> int:
    from shared.adapters import azureml
    from shared.core.preparation import prepare_telemetry
    from shared.core.telemetry import read_telemetry_csv

    progress(f"preparing {args.data}")
    clean, _ = prepare_telemetry(read_telemetry_csv(args.data))
    folder = azureml.write_mltable(clean, args.work_dir)
    entity = azureml.telemetry_data_asset(folder)
    if args.dry_run:
        print(azureml.to_yaml(entity) + f"---\n# {folder / 'MLTable'}\n" + (folder / "MLTable").read_text())
        return 0
    data = azureml.register_data(workspace(), folder)
    print(json.dumps({"data_asset": data.name, "version": data.version}))
    return 0


def submit_automl_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-version", help="data asset version (default: the latest)")


def submit_automl(args: argparse.Namespace) -> int:
    from shared.adapters import azureml

    if args.dry_run:
        print(azureml.to_yaml(azureml.compute_target(), azureml.automl_job(args.data_version)))
        return 0
    job = azureml.submit_automl(workspace(), args.data_version)
    print(json.dumps({"job": job.name, "experiment": job.experiment_name, "studio_url": job.studio_url}))
    return 0


def wrap_automl_flags(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mlflow-model", type=Path, help="a downloaded MLflow model folder (with MLmodel)")
    source.add_argument("--automl-job", help="AutoML parent job: download its best_model output")
    parser.add_argument(
        "--data", type=Path, required=True, help="telemetry CSV (raw or clean) reaching 30+ days past --trained-until"
    )
    parser.add_argument(
        "--trained-until", required=True, help="last Date of the data the AutoML job trained on (YYYY-MM-DD)"
    )
    parser.add_argument("--out", type=Path, default=Path("data/automl-model"),
                        help="model directory to write (default data/automl-model)")  # fmt: skip


def wrap_automl(args: argparse.Namespace) -> int:
    from shared.adapters import azureml
    from shared.core.preparation import prepare_telemetry
    from shared.core.telemetry import read_telemetry_csv
    from shared.handlers.nightly import parse_day
    from shared.models._mlflow import wrap_mlflow_model

    trained_until = str(parse_day(args.trained_until, "--trained-until"))
    source = {"mlflow_model": str(args.mlflow_model)} if args.mlflow_model else {"automl_job": args.automl_job}
    mlflow_model = args.mlflow_model or azureml.download_best_model(
        workspace(), args.automl_job, args.out.with_name(args.out.name + "-download")
    )
    progress(f"preparing {args.data}")
    clean, quality = prepare_telemetry(read_telemetry_csv(args.data))
    progress(f"calibrating {mlflow_model} on the telemetry after {trained_until}")
    model = wrap_mlflow_model(mlflow_model, clean, trained_until, args.out, quality=quality.to_dict(), source=source)
    print(json.dumps({"version": model.version, "model_dir": str(args.out),
                      "calibration_errors": model.calibration.n_errors,
                      "metrics": model.metadata["backtest"]["metrics"]}, indent=2))  # fmt: skip
    return 0


def register_model_flags(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="local model directory written by train")
    source.add_argument("--automl-job", help="AutoML parent job: register its best trial's model")
    parser.add_argument("--child-job", help="with --automl-job: this trial instead of the best")


def register_model(args: argparse.Namespace) -> int:
    from shared.adapters import azureml

    if args.child_job and not args.automl_job:
        raise InputError("--child-job needs --automl-job")
    if args.model_dir is not None and not args.model_dir.is_dir():
        raise InputError(f"--model-dir {args.model_dir}: no such directory")
    ml_client = None if args.dry_run else workspace()
    if args.model_dir is not None:
        entity = azureml.model_asset(args.model_dir)
    elif args.dry_run:
        entity = azureml.automl_model_asset(
            args.child_job or "<best trial of " + args.automl_job + ">", args.automl_job
        )
    else:
        child = args.child_job or azureml.best_child_job(ml_client, args.automl_job)
        entity = azureml.automl_model_asset(child, args.automl_job)
    if args.dry_run:
        print(azureml.to_yaml(entity))
        return 0
    model = azureml.register_model(ml_client, entity)
    print(json.dumps({"model": model.name, "version": model.version}))
    return 0


def deploy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registered model as NAME:VERSION")
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="the local directory that was registered; for a wrapped AutoML model "
        "its MLflow conda.yaml joins the environment",
    )
    parser.add_argument("--deployment", default="blue", help="deployment name (default blue)")
    parser.add_argument(
        "--auth-mode",
        choices=("aad_token", "key"),
        default="aad_token",
        help="endpoint auth: Entra ID tokens (default; set SCORING_AUTH=aad_token) or a key (SCORING_KEY)",
    )
    parser.add_argument("--instance-type", default="Standard_DS3_v2")
    parser.add_argument("--work-dir", type=Path, default=Path("data/azureml/code"),
                        help="where to stage scoring/ and shared/ (default data/azureml/code)")  # fmt: skip


def deploy(args: argparse.Namespace) -> int:
    from shared.adapters import azureml

    name, _, version = args.model.partition(":")
    if not name or not version:
        raise InputError(f"--model must be NAME:VERSION, got {args.model!r}")
    environment = azureml.scoring_environment(args.model_dir)
    folder = azureml.stage_scoring_code(args.work_dir)
    deployment = azureml.online_deployment(
        f"azureml:{name}:{version}", folder, args.deployment, args.instance_type, environment=environment
    )
    if args.dry_run:
        print(azureml.to_yaml(azureml.online_endpoint(args.auth_mode), deployment))
        return 0
    print(json.dumps(dict(azureml.deploy(workspace(), deployment, args.auth_mode)), indent=2))
    return 0


# action -> (help, declare its flags, run it, takes --dry-run); wrap-automl is the one local action
AZUREML_ACTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], RunCommand, bool]] = {
    "register-data": ("prepare telemetry and register it as a new version of the MLTable data asset "
                      "daily-battery-time-series", register_data_flags, register_data, True),
    "submit-automl": ("submit the lab's AutoML forecasting run (creates compute auto-ml-compute if missing)",
                      submit_automl_flags, submit_automl, True),
    "wrap-automl": ("make an AutoML (MLflow) model a model directory score.py serves: calibrate its failure "
                    "risk on telemetry after its training data", wrap_automl_flags, wrap_automl, False),
    "register-model": ("register a local model directory, or the best trial of an AutoML run",
                       register_model_flags, register_model, True),
    "deploy": ("deploy a registered model to the managed online endpoint battery-cycles", deploy_flags, deploy,
               True),
}  # fmt: skip


def add_azureml(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "azureml",
        help="Azure ML: register data, run AutoML, register and deploy models (each with --dry-run)",
        description="Azure ML with azure-ai-ml, in the workspace named by AZUREML_SUBSCRIPTION_ID, "
        "AZUREML_RESOURCE_GROUP and AZUREML_WORKSPACE (credentials: DefaultAzureCredential). --dry-run "
        "prints the YAML of what would be submitted and needs no workspace.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, (help_text, add_flags, run, submits) in AZUREML_ACTIONS.items():
        action_parser = actions.add_parser(action, help=help_text, description=help_text)
        if submits:
            action_parser.add_argument("--dry-run", action="store_true", help="print the YAML, submit nothing")
        add_flags(action_parser)
        action_parser.set_defaults(run_action=run)
    return parser


def run_azureml(args: argparse.Namespace) -> int:
    return args.run_action(args)
