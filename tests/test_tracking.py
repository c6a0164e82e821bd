"""MLflow tracking: where runs go, and what a run records (against a real local SQLite tracking store)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import requests
import urllib3
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
from mlflow.tracking import MlflowClient
from PIL import Image
from requests.adapters import BaseAdapter

from shared.adapters.tracking import (
    TRAINING_RESULTS_PNG,
    azureml_tracking_uri,
    start_training_run,
    tracking_uri,
)
from shared.config.settings import load_settings

WORKSPACE = {"AZUREML_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
             "AZUREML_RESOURCE_GROUP": "rg-battery", "AZUREML_WORKSPACE": "ws-battery"}  # fmt: skip
WORKSPACE_MLFLOW_URI = "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/0001/ws-battery"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite tracking store for the module (creating one takes seconds)."""
    return f"sqlite:///{(tmp_path_factory.mktemp('mlflow') / 'mlflow.db').as_posix()}"


def refuse_workspace(settings):
    raise AssertionError("the workspace must not be asked")


def test_mlflow_tracking_uri_wins_over_a_configured_workspace(tmp_path):
    environ = {**WORKSPACE, "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert tracking_uri(environ, tmp_path, workspace_uri=refuse_workspace) == "http://127.0.0.1:5000"


def test_a_configured_workspace_is_asked_for_its_uri(tmp_path):
    asked = []

    def workspace_uri(settings):
        asked.append(settings.azureml_workspace)
        return WORKSPACE_MLFLOW_URI

    assert tracking_uri({**WORKSPACE, "MLFLOW_TRACKING_URI": "  "}, tmp_path, workspace_uri) == WORKSPACE_MLFLOW_URI
    assert asked == ["ws-battery"]


def test_without_either_runs_go_to_sqlite_in_the_given_folder(tmp_path):
    partial = {"AZUREML_SUBSCRIPTION_ID": WORKSPACE["AZUREML_SUBSCRIPTION_ID"]}  # not a whole workspace
    uri = tracking_uri(partial, tmp_path / "store", workspace_uri=refuse_workspace)
    assert uri == f"sqlite:///{(tmp_path / 'store' / 'mlflow.db').as_posix()}"
    assert (tmp_path / "store").is_dir()


def test_the_default_store_is_in_the_temporary_directory_not_the_project(tmp_path, monkeypatch):
    """Azure runs the app from a read-only package: the default must be writable wherever the app runs."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what tempfile.gettempdir() answers
    uri = tracking_uri({}, workspace_uri=refuse_workspace)
    assert uri == f"sqlite:///{(tmp_path / 'battery-mlflow' / 'mlflow.db').as_posix()}"
    assert (tmp_path / "battery-mlflow").is_dir()


class WorkspaceArm(BaseAdapter):
    """Azure Resource Manager answering GET workspace with the workspace's MLflow URI, recording requests."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def send(self, request, **kwargs) -> requests.Response:
        self.paths.append(urllib3.util.parse_url(request.url).path)
        body = json.dumps({"id": self.paths[-1], "name": "ws-battery", "location": "westeurope",
                           "properties": {"mlFlowTrackingUri": WORKSPACE_MLFLOW_URI}}).encode()  # fmt: skip
        response = requests.Response()
        response.status_code = 200
        response.headers = requests.structures.CaseInsensitiveDict({"Content-Type": "application/json"})
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(body), status=200, preload_content=False)
        response.url, response.request = request.url, request
        return response

    def close(self) -> None:
        pass


class FakeCredential:
    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken("token", 4_102_444_800)


def test_the_workspace_uri_comes_from_azure_ai_ml():
    arm = WorkspaceArm()
    session = requests.Session()
    session.mount("https://", arm)
    uri = azureml_tracking_uri(load_settings(WORKSPACE), FakeCredential(), transport=RequestsTransport(session=session))
    assert uri == WORKSPACE_MLFLOW_URI
    assert arm.paths and arm.paths[0].endswith("/resourceGroups/rg-battery/providers/"
                                               "Microsoft.MachineLearningServices/workspaces/ws-battery")  # fmt: skip


def test_a_run_records_params_metrics_curves_figures_and_model_files(store, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.json").write_text("{}")
    curves = pd.DataFrame({"train_loss": [0.6, 0.3, 0.2], "validation_loss": [0.7, 0.4, 0.3],
                           "train_accuracy": [0.8, 0.9, 0.95]}, index=pd.Index([1, 2, 3], name="epoch"))  # fmt: skip
    with start_training_run("tests", {"learning_rate": 0.05, "epochs": 3}, {"model_kind": "test"}, uri=store) as run:
        run.log_metrics({"eval_loss": 0.3, "eval_accuracy": 0.95})
        run.log_training_curves(curves, "test curves")
        run.log_dict({"rows": 3}, "quality.json")
        run.log_model_dir(model_dir)

    client = MlflowClient(tracking_uri=store)
    recorded = client.get_run(run.run_id)
    assert recorded.info.status == "FINISHED"
    assert recorded.data.params == {"learning_rate": "0.05", "epochs": "3"}
    assert recorded.data.tags["model_kind"] == "test"
    assert recorded.data.metrics["eval_accuracy"] == 0.95
    history = client.get_metric_history(run.run_id, "curve_validation_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.7), (2, 0.4), (3, 0.3)]
    artifacts = {a.path for a in client.list_artifacts(run.run_id)} | {
        a.path for a in client.list_artifacts(run.run_id, "model")
    }
    assert {TRAINING_RESULTS_PNG, "quality.json", "model/weights.json"} <= artifacts
    png = Path(client.download_artifacts(run.run_id, TRAINING_RESULTS_PNG, str(tmp_path)))
    assert Image.open(png).size[0] >= 800  # two panels (loss, accuracy)
    experiment = client.get_experiment(recorded.info.experiment_id)
    assert experiment.artifact_location.endswith("/artifacts/tests")  # beside the SQLite store


def test_a_run_that_raises_is_marked_failed_and_the_error_propagates(store):
    with pytest.raises(RuntimeError, match="training broke"), start_training_run("tests", {}, uri=store) as run:
        raise RuntimeError("training broke")
    assert MlflowClient(tracking_uri=store).get_run(run.run_id).info.status == "FAILED"
