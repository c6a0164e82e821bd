"""`python -m shared spark submit`: what the nightly timer sends to the Spark target, sent or only shown.

With --dry-run nothing is sent and no workspace is needed: Azure ML's job is printed as YAML (as the
other azureml dry-runs; `az ml job create -f` takes it), Databricks' run-now request as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.config.settings import SettingsError, load_settings


def add_spark(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("spark", help="submit the nightly batch score to the Spark target (SPARK_TARGET)",
                            description=__doc__.split("\n\n")[0])  # fmt: skip
    actions = parser.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="submit (or with --dry-run show) the Spark score of a day")
    submit.add_argument("--as-of", required=True, help="score as of this day, YYYY-MM-DD")
    submit.add_argument("--model-version", required=True, help="model version in the registry (models/<version>/)")
    submit.add_argument("--threshold", type=float, help="alert threshold (default ALERT_PROBABILITY_THRESHOLD)")
    submit.add_argument("--work-dir", type=Path, default=Path("data/spark"), help="where the code is staged")
    submit.add_argument("--dry-run", action="store_true", help="print what would be submitted; send nothing")
    return parser


def run_spark(args: argparse.Namespace) -> int:
    from shared.handlers.nightly import parse_day
    from shared.spark.submit import (
        azureml_spark_job,
        databricks_run_request,
        score_arguments,
        stage_spark_code,
        submit_score,
    )

    settings = load_settings()
    if settings.spark is None:
        raise SettingsError('SPARK_TARGET is not set: set it to databricks or azureml (README, "Spark")')
    threshold = settings.alert_probability_threshold if args.threshold is None else args.threshold
    arguments = score_arguments(settings.spark, parse_day(args.as_of), args.model_version, threshold)
    if not args.dry_run:
        print(json.dumps(submit_score(settings.spark, arguments, args.work_dir)))
    elif settings.spark.target == "databricks":
        body = databricks_run_request(settings.spark, arguments)
        print(json.dumps({"url": settings.spark.databricks_host + "/api/2.1/jobs/run-now", "body": body}, indent=2))
    else:
        from shared.adapters.azureml import to_yaml

        print(to_yaml(azureml_spark_job(settings.spark, arguments, stage_spark_code(args.work_dir / "spark-code"))),
              end="")  # fmt: skip
    return 0
