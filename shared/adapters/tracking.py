"""Tracking: every training run recorded in MLflow — parameters, metrics, curves, figures and the model files.

Where runs go (`tracking_uri`), first match wins:
1. MLFLOW_TRACKING_URI, the standard variable, when set;
2. the Azure ML workspace's MLflow tracking URI when AZUREML_SUBSCRIPTION_ID, AZUREML_RESOURCE_GROUP and
   AZUREML_WORKSPACE are set (asked of the workspace through azure-ai-ml; logging to it also needs the
   `azureml-mlflow` plugin installed, which registers the azureml:// scheme);
3. a SQLite store in the machine's temporary directory, <tempdir>/battery-mlflow/mlflow.db (/tmp on
   Linux), with artifacts beside it in battery-mlflow/artifacts: writable wherever the app runs, also when
   Azure runs it from a read-only package; browse it with
   `mlflow ui --backend-store-uri sqlite:////tmp/battery-mlflow/mlflow.db` (the UI is in the full `mlflow`
   package).

The run API talks to an `MlflowClient` bound to one explicit URI, never to MLflow's process-wide active
run, so two trainings in one process (tests, a Function App host) cannot log into each other's runs.
Only this module imports mlflow; the Function App needs just the client (`mlflow-skinny`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from shared.config.settings import Settings, load_settings
from shared.models.report import training_curves_figure

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCAL_STORE_DIR = "battery-mlflow"  # under tempfile.gettempdir(), unless the caller names a directory
LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "artifacts"  # beside the store
TRAINING_RESULTS_PNG = "training_results.png"
MODEL_ARTIFACT_PATH = "model"


def tracking_uri(
    environ: Mapping[str, str],
    store_dir: str | Path | None = None,
    workspace_uri: Callable[[Settings], str] | None = None,
) -> str:
    """Where training runs are tracked (see the module docstring for the order); the local SQLite store
    goes in `store_dir` (default: <tempdir>/battery-mlflow, created if missing).

    `workspace_uri` asks the workspace for its MLflow URI (default: `azureml_tracking_uri`, over the
    network); it is called only when a workspace is configured and MLFLOW_TRACKING_URI is not set.
    """
    explicit = environ.get("MLFLOW_TRACKING_URI", "").strip()
    if explicit:
        return explicit
    settings = load_settings(environ)
    if settings.azureml_configured:
        return (workspace_uri or azureml_tracking_uri)(settings)
    store = Path(store_dir or Path(tempfile.gettempdir()) / LOCAL_STORE_DIR).resolve() / LOCAL_STORE
    store.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store.as_posix()}"


def azureml_tracking_uri(settings: Settings, credential: Any = None, **client_options: Any) -> str:
    """The MLflow tracking URI of the workspace the settings name, as azure-ai-ml reports it."""
    from shared.adapters.azureml import workspace_client

    client = workspace_client(settings, credential, **client_options)
    uri = client.workspaces.get(settings.azureml_workspace).mlflow_tracking_uri
    if not uri:
        raise MlflowException(f"workspace {settings.azureml_workspace} reported no MLflow tracking URI")
    return uri


@dataclass(frozen=True)
class TrainingRun:
    """One MLflow run in progress: log to it while training; `run_id` goes into the model's metadata."""

    client: MlflowClient
    run_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp = _now_ms()
        self.client.log_batch(self.run_id, metrics=[
            Metric(name, float(value), timestamp, step or 0) for name, value in metrics.items()
        ])  # fmt: skip

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        """A matplotlib figure as a PNG (or whatever `artifact_file`'s suffix says) artifact."""
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """A JSON (or YAML, by suffix) artifact: a data-quality report, a fairness table, ..."""
        self.client.log_dict(self.run_id, dict(dictionary), artifact_file)

    def log_model_dir(self, model_dir: str | Path, artifact_path: str = MODEL_ARTIFACT_PATH) -> None:
        """Every file of a saved model directory, under `artifact_path`."""
        self.client.log_artifacts(self.run_id, str(model_dir), artifact_path)

    def log_training_curves(self, curves: pd.DataFrame, title: str | None = None) -> None:
        """Per-step curves: each column as a stepped metric, and all of them as training_results.png.

        `curves` is indexed by step (epoch, iteration, training-set size, ...; its name labels the x
        axis) with columns "<split>_<quantity>", e.g. train_loss, validation_loss, train_accuracy: one
        panel per quantity, one line per split.
        """
        timestamp = _now_ms()
        metrics = [
            Metric(f"curve_{column}", float(value), timestamp, int(step))
            for column in curves.columns
            for step, value in curves[column].dropna().items()
        ]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])
        self.log_figure(training_curves_figure(curves, title), TRAINING_RESULTS_PNG)


@contextmanager
def start_training_run(
    experiment: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None, *, uri: str
) -> Iterator[TrainingRun]:
    """A run in `experiment` (created if new) at `uri` with `params` and `tags` logged; it ends FINISHED,
    or FAILED if the block raises (the error still propagates)."""
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(_experiment_id(client, experiment, uri), tags=dict(tags or {}))
    training = TrainingRun(client=client, run_id=run.info.run_id)
    client.log_batch(training.run_id, params=[Param(name, str(value)) for name, value in params.items()],
                     tags=[RunTag("project_root", PROJECT_ROOT.name)])  # fmt: skip
    try:
        yield training
    except BaseException:
        client.set_terminated(training.run_id, "FAILED")
        raise
    client.set_terminated(training.run_id, "FINISHED")


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, creating it (with artifacts beside a local SQLite store) if it is new."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):
        store = Path(uri.removeprefix("sqlite:///"))
        artifacts = (store.resolve().parent / LOCAL_ARTIFACTS / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except MlflowException:  # another process created it in the meantime
        return client.get_experiment_by_name(name).experiment_id


def _now_ms() -> int:
    return int(time.time() * 1000)


def log_run_metrics(run_id: str, metrics: Mapping[str, float], step: int, environ: Mapping[str, str]) -> None:
    """Add metrics to an existing (finished) run, e.g. the monitor's matured figures on the champion's training
    run, `step` ordering them (the day); a run the store does not know raises MlflowException."""
    client = MlflowClient(tracking_uri=tracking_uri(environ))
    timestamp = _now_ms()
    client.log_batch(run_id, metrics=[Metric(name, float(value), timestamp, step) for name, value in metrics.items()])
