"""Submitting the nightly Spark score: a Databricks job run, or an Azure ML serverless Spark job.

Both run shared/spark/job.py with the same arguments (`score_arguments`): the archive, the champion's
model folder and the night's output folders as abfss:// URIs in the app's storage account. Nothing here
imports pyspark: the Function App only sends the job.

Databricks: `POST {DATABRICKS_HOST}/api/2.1/jobs/run-now` of an existing job (its spark_python_task is
job.py; README "Spark"), with the arguments as `python_params` and an idempotency token per night and
model, so a timer run that is retried does not start a second run. Plain requests against the documented
REST API: it is one call, and a requests Session is what the tests record on.

Azure ML: an `azure.ai.ml` Spark job on serverless Spark compute, its code folder the
`shared` package staged as the endpoint's is (`stage_spark_code`); `to_yaml` prints it for `--dry-run`.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import requests

from shared.config.names import SPARK_OUTPUT_PREFIX
from shared.config.spark import SparkSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENTRY_FILE = "shared/spark/job.py"  # relative to the staged code folder
EXPERIMENT = "battery-nightly-spark"
# Azure Databricks' Microsoft Entra application: the scope of a token for its REST API.
DATABRICKS_SCOPE = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d/.default"
RUN_NOW_PATH = "/api/2.1/jobs/run-now"
DATABRICKS_ATTEMPTS = 3
DATABRICKS_TIMEOUT_S = 30
RETRIED_STATUSES = (408, 429, 500, 502, 503, 504)
# What the executors import (shared/spark/job.py): the third-party packages of the scoring code.
SPARK_CONDA = {
    "name": "battery-spark",
    "channels": ["conda-forge"],
    "dependencies": ["python=3.11", "pip", {"pip": ["numpy>=2.0,<3", "pandas>=2.2,<4", "pyarrow>=15",
                                                   "lightgbm==4.7.0"]}],
}  # fmt: skip


class SparkSubmitError(RuntimeError):
    """The Spark target refused the job, or could not be reached after the retries; the message says which."""


def score_arguments(settings: SparkSettings, as_of: date, model_version: str, threshold: float,
                    history_days: int | None = None) -> list[str]:  # fmt: skip
    """job.py's arguments for the night: read the archive up to as_of, write scores/date=<as_of>/spark-<model>/."""
    output = f"date={as_of.isoformat()}/{SPARK_OUTPUT_PREFIX}{model_version}"
    arguments = ["score", "--telemetry", settings.uri("telemetry"), "--format", "parquet",
                 "--model", settings.uri("models", f"{model_version}/"), "--as-of", as_of.isoformat(),
                 "--threshold", repr(float(threshold)),
                 "--scores-out", settings.uri("scores", f"{output}/scores"),
                 "--forecast-out", settings.uri("scores", f"{output}/forecast")]  # fmt: skip
    return [*arguments, "--history-days", str(history_days)] if history_days else arguments


# --- Databricks ---------------------------------------------------------------------------------------


def databricks_run_request(settings: SparkSettings, arguments: list[str]) -> dict:
    """The run-now body; the idempotency token is the night and model, so a retried night starts one run."""
    as_of = arguments[arguments.index("--as-of") + 1]
    model = arguments[arguments.index("--model") + 1].rstrip("/").rsplit("/", 1)[-1]
    return {"job_id": settings.databricks_job_id, "python_params": arguments,
            "idempotency_token": f"battery-score-{as_of}-{model}"[:64]}  # fmt: skip


def submit_databricks(settings: SparkSettings, arguments: list[str], *, session: requests.Session | None = None,
                      credential: Any = None, pause: Callable[[float], None] = time.sleep) -> dict:  # fmt: skip
    """Start the Databricks job run; return Databricks' answer ({"run_id": ..., "number_in_job": ...}).

    408, 429, 5xx and connection failures are retried (DATABRICKS_ATTEMPTS in all, backing off); any other
    4xx is a SparkSubmitError with Databricks' message. The token is DATABRICKS_TOKEN, else one for
    DATABRICKS_SCOPE from `credential` (default DefaultAzureCredential: the app's managed identity).
    """
    session = session or requests.Session()
    body = databricks_run_request(settings, arguments)
    url = settings.databricks_host + RUN_NOW_PATH
    for attempt in range(1, DATABRICKS_ATTEMPTS + 1):
        headers = {"Authorization": f"Bearer {_databricks_token(settings, credential)}"}
        try:
            response = session.post(url, json=body, headers=headers, timeout=DATABRICKS_TIMEOUT_S)
        except (requests.ConnectionError, requests.Timeout) as error:
            failure = f"{type(error).__name__}"
        else:
            if response.ok:
                return response.json()
            failure = f"HTTP {response.status_code}: {_message(response)}"
            if response.status_code not in RETRIED_STATUSES:
                raise SparkSubmitError(f"Databricks refused run-now of job {settings.databricks_job_id}: {failure}")
        if attempt < DATABRICKS_ATTEMPTS:
            pause(2.0**attempt)
    raise SparkSubmitError(f"Databricks run-now of job {settings.databricks_job_id} failed {DATABRICKS_ATTEMPTS} "
                           f"times, last: {failure}")  # fmt: skip


def _databricks_token(settings: SparkSettings, credential: Any) -> str:
    if settings.databricks_token:
        return settings.databricks_token
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return credential.get_token(DATABRICKS_SCOPE).token


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message") or response.json())
    except ValueError:
        return response.text[:300]


# --- Azure ML serverless Spark ------------------------------------------------------------------------


def stage_spark_code(folder: Path) -> Path:
    """Copy the `shared` package into a fresh folder: the code Azure ML uploads and runs ENTRY_FILE from."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(PROJECT_ROOT / "shared", folder / "shared", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder


def azureml_spark_job(settings: SparkSettings, arguments: list[str], code_folder: Path):
    """The Azure ML Spark job that runs job.py with `arguments` on serverless compute.

    A `SparkJob`, what azure.ai.ml's `spark(...)` builder makes a standalone job of (the builder's own
    result is a pipeline node, whose YAML `load_job` does not take).
    """
    from azure.ai.ml.entities import Environment, ManagedIdentityConfiguration, SparkJob

    return SparkJob(
        experiment_name=EXPERIMENT,
        display_name=f"battery-score-{arguments[arguments.index('--as-of') + 1]}",
        code=str(code_folder),
        entry={"file": ENTRY_FILE},
        args=shlex.join(arguments),
        driver_cores=4, driver_memory="28g", executor_cores=4, executor_memory="28g",
        executor_instances=settings.executor_instances,
        resources={"instance_type": settings.instance_type, "runtime_version": settings.runtime_version},
        environment=Environment(conda_file=SPARK_CONDA,  # anonymous: versioned by its content
                                image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"),
        identity=ManagedIdentityConfiguration(),
    )  # fmt: skip


def submit_score(settings: SparkSettings, arguments: list[str], work_dir: Path, **clients: Any) -> dict:
    """Send the night's job to the configured target; return what identifies the run there.

    `clients`: `ml_client` (Azure ML) or `session`/`credential` (Databricks), for tests and callers that
    hold one; by default each is made from the app settings and its managed identity.
    """
    if settings.target == "databricks":
        run = submit_databricks(settings, arguments, session=clients.get("session"),
                                credential=clients.get("credential"))  # fmt: skip
        return {"target": "databricks", "job_id": settings.databricks_job_id, "run_id": run.get("run_id")}
    ml_client = clients.get("ml_client")
    if ml_client is None:
        from shared.adapters.azureml import workspace_client
        from shared.config.settings import load_settings

        ml_client = workspace_client(load_settings())
    job = azureml_spark_job(settings, arguments, stage_spark_code(work_dir / "spark-code"))
    return {"target": "azureml", "job": ml_client.jobs.create_or_update(job).name}
