"""Azure ML: the lab's settings in the entities, and the requests MLClient would send for them.

No workspace is reachable here. The entities are built offline as azure-ai-ml builds them; the
operations run against an MLClient whose azure-core transport is a real `RequestsTransport` over a
requests Session with a recording adapter: every request the SDK would send to Azure Resource Manager
is recorded and answered from a small table of canned ARM responses.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
import urllib3
import yaml
from azure.ai.ml import load_compute, load_data, load_job, load_model, load_online_deployment, load_online_endpoint
from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from requests.adapters import BaseAdapter

from shared.adapters import azureml
from shared.cli import build_parser, main
from shared.config.settings import SettingsError, load_settings
from shared.core.telemetry import COLUMNS, InputError

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
WORKSPACE_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-battery/providers/"
    "Microsoft.MachineLearningServices/workspaces/ws-battery"
)
SETTINGS = load_settings(
    {"AZUREML_SUBSCRIPTION_ID": SUBSCRIPTION, "AZUREML_RESOURCE_GROUP": "rg-battery", "AZUREML_WORKSPACE": "ws-battery"}
)


# --- the entities -------------------------------------------------------------------------------------


def test_automl_job_has_the_labs_settings() -> None:
    job = azureml.automl_job("7")
    spec = job._to_dict()
    assert spec["experiment_name"] == "Battery-Cycles-Forecast"
    assert (spec["type"], spec["task"]) == ("automl", "forecasting")
    assert spec["target_column_name"] == "Daily_Cycles_Used"
    assert spec["primary_metric"] == "normalized_root_mean_squared_error"
    assert spec["compute"] == "azureml:auto-ml-compute"
    assert dict(spec["limits"]) == {"exit_score": 0.1355, "timeout_minutes": 60}
    assert dict(spec["training_data"]) == {"type": "mltable", "path": "azureml:daily-battery-time-series:7"}
    # What goes over the wire (the REST body) has the series id as a list and the horizon as a number.
    task = job._to_rest_object().properties.task_details.as_dict()
    assert task["forecastingSettings"] == {
        "timeColumnName": "Date",
        "timeSeriesIdColumnNames": ["Battery_ID"],
        "forecastHorizon": {"mode": "Custom", "value": 30},
        "frequency": "D",
    }
    assert task["limitSettings"]["timeout"] == "PT1H"


def test_automl_job_without_a_version_names_the_latest_data() -> None:
    assert azureml.automl_job()._to_dict()["training_data"]["path"] == "azureml:daily-battery-time-series@latest"


def test_compute_is_up_to_one_standard_ds3_v2_node_and_none_while_idle() -> None:
    spec = azureml.compute_target()._to_dict()
    assert (spec["name"], spec["type"], spec["size"]) == ("auto-ml-compute", "amlcompute", "STANDARD_DS3_v2")
    assert (spec["min_instances"], spec["max_instances"]) == (0, 1)


def test_mltable_folder_holds_the_csv_and_how_to_read_it(tmp_path: Path) -> None:
    clean = pd.DataFrame(
        [[pd.Timestamp("2017-03-19"), "17", "CAR-00017", 1538, 5, 61.2, 0.15, 196.4, 200]], columns=COLUMNS
    )
    folder = azureml.write_mltable(clean, tmp_path / "mltable")
    mltable = yaml.safe_load((folder / "MLTable").read_text())
    assert mltable["paths"] == [{"file": "./daily-battery-time-series.csv"}]
    assert mltable["transformations"][0]["read_delimited"]["header"] == "all_files_same_headers"
    assert (folder / "daily-battery-time-series.csv").read_text().splitlines() == [
        ",".join(COLUMNS),
        "2017-03-19,17,CAR-00017,1538,5,61.2,0.15,196.4,200",
    ]
    data = azureml.telemetry_data_asset(folder)._to_dict()
    assert (data["name"], data["type"], data.get("version")) == ("daily-battery-time-series", "mltable", None)


def test_models_local_and_from_the_best_automl_trial(tmp_path: Path) -> None:
    local = azureml.model_asset(tmp_path)._to_dict()
    assert (local["name"], local["type"], local["path"]) == ("battery-cycles-forecaster", "custom_model", str(tmp_path))
    automl = azureml.automl_model_asset("job_3", "job")._to_dict()
    assert automl["type"] == "mlflow_model"
    assert automl["path"] == "azureml://jobs/job_3/outputs/artifacts/outputs/mlflow-model/"


def test_endpoint_and_deployment(tmp_path: Path) -> None:
    endpoint = azureml.online_endpoint("key")._to_dict()
    assert endpoint["name"] == "battery-cycles"
    assert endpoint["description"] == "The best AutoML model to predict battery cycles."
    assert endpoint["auth_mode"] == "key"
    assert azureml.online_endpoint()._to_dict()["auth_mode"] == "aad_token"  # keyless unless asked
    with pytest.raises(InputError, match="auth mode must be one of aad_token, key"):
        azureml.online_endpoint("aml_token")

    folder = azureml.stage_scoring_code(tmp_path / "code")
    spec = azureml.online_deployment("azureml:battery-cycles-forecaster:3", folder)._to_dict()
    assert (spec["endpoint_name"], spec["model"]) == ("battery-cycles", "azureml:battery-cycles-forecaster:3")
    assert dict(spec["code_configuration"]) == {"code": str(folder), "scoring_script": "scoring/score.py"}
    assert (folder / spec["code_configuration"]["scoring_script"]).is_file()
    assert spec["environment"]["conda_file"]["dependencies"][2]["pip"] == azureml.scoring_requirements()
    assert "azureml-inference-server-http==1.5.1" in azureml.scoring_requirements()
    assert (spec["instance_type"], spec["instance_count"]) == ("Standard_DS3_v2", 1)
    assert spec["app_insights_enabled"] is True


def test_staged_code_imports_shared_from_itself_without_the_function_app_packages(tmp_path: Path) -> None:
    """What Azure ML does: load score.py by path from the uploaded folder, with another working dir."""
    folder = azureml.stage_scoring_code(tmp_path / "code")
    assert not list(folder.rglob("__pycache__")) and not (folder / "tests").exists()
    probe = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('entry_module', {str(folder / 'scoring' / 'score.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(json.dumps({'shared': sys.modules['shared'].__file__, 'modules': sorted(sys.modules)}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"}, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout)
    assert loaded["shared"] == str(folder / "shared" / "__init__.py")
    function_app_only = {"azure.storage.blob", "azure.data.tables", "azure.eventhub", "azure.functions",
                         "azure.ai.ml", "azure.identity", "azure.storage.queue"}  # fmt: skip
    assert function_app_only.isdisjoint(loaded["modules"])


def test_staged_code_holds_only_the_shared_modules_the_endpoint_imports(tmp_path: Path) -> None:
    folder = azureml.stage_scoring_code(tmp_path / "code")
    staged = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert {"scoring/score.py", "shared/__init__.py", "shared/endpoint/server.py", "shared/models/loader.py",
            "shared/models/_lstm.py", "shared/models/_mlflow.py"} <= staged  # fmt: skip
    left_out = ("shared/devtools/", "shared/cli/", "shared/handlers/", "shared/compliance/", "shared/bootstrap.py")
    assert [name for name in staged if name.startswith(left_out)] == []
    expected = {path.relative_to(azureml.PROJECT_ROOT).as_posix() for path in azureml.endpoint_modules()}
    assert staged == expected | {"scoring/score.py"}


def test_dry_run_yaml_is_plain_yaml() -> None:
    documents = list(yaml.safe_load_all(azureml.to_yaml(azureml.compute_target(), azureml.online_endpoint())))
    assert [d["name"] for d in documents] == ["auto-ml-compute", "battery-cycles"]


# --- the requests MLClient would send -----------------------------------------------------------------


class FakeCredential:
    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken("fake-token", int(time.time()) + 3600)


class RecordingArm(BaseAdapter):
    """A requests adapter standing in for Azure Resource Manager: records requests, answers canned JSON.

    `answers` maps (method, path regex) to (status, body); an unmatched GET is 404 (not there yet), an
    unmatched PUT echoes its body as the created resource, as ARM does (plus `extra_properties`).
    """

    def __init__(self, answers: dict[tuple[str, str], tuple[int, dict]], extra_properties: dict | None = None) -> None:
        super().__init__()
        self.answers = answers
        self.extra_properties = extra_properties or {}
        self.sent: list[dict] = []

    def send(self, request, **kwargs) -> requests.Response:
        url = urllib3.util.parse_url(request.url)
        path = url.path.removeprefix(WORKSPACE_PATH) or "/"
        body = json.loads(request.body) if request.body else None
        self.sent.append({"method": request.method, "host": url.host, "path": path, "body": body,
                          "authorization": request.headers.get("Authorization")})  # fmt: skip
        status, payload = self._answer(request.method, path, body)
        return self._response(request, status, payload)

    def _answer(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        for (want_method, pattern), answer in self.answers.items():
            if method == want_method and re.fullmatch(pattern, path):
                return answer
        if method == "PUT":
            resource = {**body, "id": WORKSPACE_PATH + path, "name": path.rsplit("/", 1)[-1]}
            resource["properties"] = {
                **resource.get("properties", {}),
                **self.extra_properties,
                "provisioningState": "Succeeded",
            }
            return 201, resource
        return 404, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}}

    @staticmethod
    def _response(request, status: int, payload: dict) -> requests.Response:
        content = json.dumps(payload).encode()
        response = requests.Response()
        response.status_code = status
        response.headers = requests.structures.CaseInsensitiveDict(
            {"Content-Type": "application/json", "Content-Length": str(len(content))}
        )
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(content), status=status, preload_content=False)
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        pass

    def writes(self) -> list[dict]:
        return [r for r in self.sent if r["method"] in ("PUT", "POST", "PATCH", "DELETE")]


WORKSPACE = {"id": WORKSPACE_PATH, "name": "ws-battery", "location": "westeurope", "properties": {}}


def recording_client(answers: dict, extra_properties: dict | None = None) -> tuple:
    arm = RecordingArm({("GET", "/"): (200, WORKSPACE), **answers}, extra_properties)
    session = requests.Session()
    session.mount("https://", arm)
    client = azureml.workspace_client(SETTINGS, FakeCredential(), transport=RequestsTransport(session=session))
    return client, arm


def test_workspace_client_needs_all_three_settings() -> None:
    with pytest.raises(SettingsError, match="set AZUREML_RESOURCE_GROUP, AZUREML_WORKSPACE"):
        azureml.workspace_client(load_settings({"AZUREML_SUBSCRIPTION_ID": SUBSCRIPTION}), FakeCredential())


def test_submit_automl_creates_the_missing_compute_then_the_job_on_the_latest_data() -> None:
    data_version = {
        "id": f"{WORKSPACE_PATH}/data/daily-battery-time-series/versions/4",
        "name": "4",
        "properties": {"dataType": "mltable", "dataUri": "azureml://datastores/workspaceblobstore/paths/x/"},
    }
    client, arm = recording_client({
        ("GET", "/data/daily-battery-time-series"): (200, {"properties": {"latestVersion": "4"}}),
        ("GET", "/data/daily-battery-time-series/versions/4"): (200, data_version),
    })  # fmt: skip
    job = azureml.submit_automl(client)

    compute, submitted = arm.writes()
    assert (compute["method"], compute["path"]) == ("PUT", "/computes/auto-ml-compute")
    assert compute["body"]["properties"]["properties"]["vmSize"] == "STANDARD_DS3_v2"
    assert compute["body"]["properties"]["properties"]["scaleSettings"]["minNodeCount"] == 0
    assert compute["body"]["properties"]["properties"]["scaleSettings"]["maxNodeCount"] == 1
    assert submitted["method"] == "PUT" and submitted["path"] == f"/jobs/{job.name}"
    properties = submitted["body"]["properties"]
    assert (properties["jobType"], properties["experimentName"]) == ("AutoML", "Battery-Cycles-Forecast")
    assert properties["computeId"] == f"{WORKSPACE_PATH}/computes/auto-ml-compute"
    task = properties["taskDetails"]
    assert (task["taskType"], task["targetColumnName"]) == ("Forecasting", "Daily_Cycles_Used")
    assert task["primaryMetric"] == "NormalizedRootMeanSquaredError"
    assert task["trainingData"]["uri"] == f"{WORKSPACE_PATH}/data/daily-battery-time-series/versions/4"
    assert task["limitSettings"]["timeout"] == "PT1H" and task["limitSettings"]["exitScore"] == 0.1355
    assert task["forecastingSettings"] == {"forecastHorizon": {"value": 30, "mode": "Custom"},
                                           "timeColumnName": "Date", "frequency": "D",
                                           "timeSeriesIdColumnNames": ["Battery_ID"]}  # fmt: skip
    assert {r["host"] for r in arm.sent} == {"management.azure.com"}
    assert {r["authorization"] for r in arm.sent} == {"Bearer fake-token"}


def test_submit_automl_leaves_an_existing_compute_alone() -> None:
    existing = {"id": f"{WORKSPACE_PATH}/computes/auto-ml-compute", "name": "auto-ml-compute",
                "properties": {"computeType": "AmlCompute", "properties": {"vmSize": "STANDARD_DS3_v2"}}}  # fmt: skip
    client, arm = recording_client({("GET", "/computes/auto-ml-compute"): (200, existing)})
    azureml.submit_automl(client, data_version="2")
    assert [r["path"].split("/")[1] for r in arm.writes()] == ["jobs"]


def test_register_the_best_automl_trial() -> None:
    parent = {"id": f"{WORKSPACE_PATH}/jobs/parent", "name": "parent", "properties": {
        "jobType": "AutoML", "status": "Completed", "experimentName": "Battery-Cycles-Forecast",
        "properties": {"automl_best_child_run_id": "parent_5"}, "taskDetails": {
            "taskType": "Forecasting", "targetColumnName": "Daily_Cycles_Used",
            "trainingData": {"jobInputType": "mltable", "uri": "azureml:daily-battery-time-series:1"}}}}  # fmt: skip
    container = {"properties": {"latestVersion": "2", "nextVersion": "3"}}
    client, arm = recording_client({
        ("GET", "/jobs/parent"): (200, parent),
        ("GET", "/models/battery-cycles-forecaster"): (200, container),
        ("GET", "/models/battery-cycles-forecaster/versions"): (200, {"value": []}),
    }, extra_properties={"flavors": {}})  # fmt: skip
    child = azureml.best_child_job(client, "parent")
    model = azureml.register_model(client, azureml.automl_model_asset(child, "parent"))

    (put,) = arm.writes()
    assert put["path"] == "/models/battery-cycles-forecaster/versions/3"
    assert put["body"]["properties"]["modelType"] == "mlflow_model"
    assert put["body"]["properties"]["modelUri"] == "azureml://jobs/parent_5/outputs/artifacts/outputs/mlflow-model/"
    assert model.version == "3"


def test_create_the_endpoint_sends_its_name_description_and_key_auth() -> None:
    client, arm = recording_client({})
    client.online_endpoints.begin_create_or_update(azureml.online_endpoint("key")).result()
    (put,) = arm.writes()
    assert put["path"] == "/onlineEndpoints/battery-cycles"
    assert put["body"]["properties"]["description"] == "The best AutoML model to predict battery cycles."
    assert put["body"]["properties"]["authMode"] == "Key"


def test_the_endpoint_takes_entra_id_tokens_by_default() -> None:
    client, arm = recording_client({})
    client.online_endpoints.begin_create_or_update(azureml.online_endpoint()).result()
    (put,) = arm.writes()
    assert put["body"]["properties"]["authMode"] == "AADToken"


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_dry_runs_print_yaml_and_need_no_workspace(tmp_path: Path, capsys, monkeypatch) -> None:
    for name in ("AZUREML_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["azureml", "submit-automl", "--dry-run"]) == 0
    compute, job = yaml.safe_load_all(capsys.readouterr().out)
    assert (compute["size"], job["experiment_name"], job["limits"]["exit_score"]) == (
        "STANDARD_DS3_v2",
        "Battery-Cycles-Forecast",
        0.1355,
    )
    assert main(["azureml", "deploy", "--dry-run", "--model", "battery-cycles-forecaster:3",
                 "--work-dir", str(tmp_path / "code")]) == 0  # fmt: skip
    endpoint, deployment = yaml.safe_load_all(capsys.readouterr().out)
    assert (endpoint["name"], deployment["model"]) == ("battery-cycles", "azureml:battery-cycles-forecaster:3")
    assert main(["azureml", "register-model", "--dry-run", "--automl-job", "parent", "--child-job", "parent_2"]) == 0
    assert "azureml://jobs/parent_2/outputs/artifacts/outputs/mlflow-model/" in capsys.readouterr().out


# --- every dry-run loads back to the entity it printed -------------------------------------------------

LOADERS = {"amlcompute": load_compute, "automl": load_job, "mltable": load_data, "custom_model": load_model,
           "mlflow_model": load_model}  # fmt: skip


def load_entity(document: dict):
    """The entity Azure ML's own loader makes of one dry-run document (as `az ml ... create -f` would)."""
    stream = io.StringIO(yaml.safe_dump(document))
    if "endpoint_name" in document:
        return load_online_deployment(stream)
    if "auth_mode" in document:
        return load_online_endpoint(stream)
    return LOADERS[document["type"]](stream)


def request_body(entity) -> dict:
    """What the SDK sends for the entity, before it resolves asset references and uploads local paths.

    Loading strips the `azureml:` prefix of `azureml:NAME:VERSION`; the SDK resolves both forms to the same
    asset (test_a_loaded_job_sends_the_same_request shows it for the job), so the prefix is dropped here.
    """
    if isinstance(entity, ManagedOnlineEndpoint):
        rest = entity._to_rest_online_endpoint("westeurope")
    elif isinstance(entity, ManagedOnlineDeployment):
        rest = entity._to_rest_object("westeurope")
    else:
        rest = entity._to_rest_object()
    body = rest.serialize() if hasattr(rest, "serialize") else rest.as_dict()  # two generations of models
    text = json.dumps(body, default=str).replace('"azureml:', '"')
    return json.loads(text)


def plain(entity) -> dict:
    return json.loads(json.dumps(entity._to_dict(), default=str))


def dry_run_cases(tmp_path: Path) -> dict[str, tuple[list[str], list]]:
    """Each dry-run action: the CLI arguments, and the entities it must print (built as the CLI builds them)."""
    from _mlflow_model import clean_telemetry

    clean_telemetry().to_csv(tmp_path / "telemetry.csv", index=False, date_format="%Y-%m-%d")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    return {
        "register-data": (["--data", str(tmp_path / "telemetry.csv"), "--work-dir", str(tmp_path / "mltable")],
                          [azureml.telemetry_data_asset(tmp_path / "mltable")]),
        "submit-automl": (["--data-version", "7"], [azureml.compute_target(), azureml.automl_job("7")]),
        "register-model": (["--model-dir", str(model_dir)], [azureml.model_asset(model_dir)]),
        "deploy": (["--model", "battery-cycles-forecaster:3", "--work-dir", str(tmp_path / "code")],
                   [azureml.online_endpoint(),
                    azureml.online_deployment("azureml:battery-cycles-forecaster:3", tmp_path / "code")]),
    }  # fmt: skip


def dry_run_actions() -> set[str]:
    """The azureml actions that take --dry-run, read off the CLI's own parser."""
    azureml_parser = next(action for action in build_parser()._subparsers._group_actions[0].choices.items()
                          if action[0] == "azureml")[1]  # fmt: skip
    actions = azureml_parser._subparsers._group_actions[0].choices
    return {name for name, parser in actions.items()
            if any("--dry-run" in option.option_strings for option in parser._actions)}  # fmt: skip


def test_every_dry_run_action_has_a_round_trip_case(tmp_path: Path) -> None:
    assert dry_run_actions() == set(dry_run_cases(tmp_path))


@pytest.mark.parametrize("action", ["register-data", "submit-automl", "register-model", "deploy"])
def test_dry_run_yaml_loads_back_to_the_same_entities(action: str, tmp_path: Path, capsys) -> None:
    """The printed YAML, read by azure-ai-ml's loaders, gives entities equal to the ones the CLI built, both
    as YAML and as the request body the SDK would send (which is where a column list read as one string
    column, "['Battery_ID']", shows)."""
    arguments, expected = dry_run_cases(tmp_path)[action]
    assert main(["azureml", action, "--dry-run", *arguments]) == 0
    documents = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d is not None]
    if action == "register-data":  # the last document is the MLTable file the asset points at
        *documents, mltable = documents
        assert mltable == yaml.safe_load((tmp_path / "mltable" / "MLTable").read_text())
    loaded = [load_entity(document) for document in documents]
    assert [plain(entity) for entity in loaded] == [plain(entity) for entity in expected]
    assert [request_body(entity) for entity in loaded] == [request_body(entity) for entity in expected]


def test_the_forecast_series_id_is_a_list_of_column_names_after_the_round_trip() -> None:
    job = load_entity(yaml.safe_load(azureml.to_yaml(azureml.automl_job("7"))))
    assert job.forecasting_settings.time_series_id_column_names == ["Battery_ID"]


def test_a_loaded_job_sends_the_same_request() -> None:
    """Through MLClient and the recording transport: the job loaded from the dry-run YAML and the job the
    CLI submits send one body (but for the random display name each submission gets)."""
    data_version = {
        "id": f"{WORKSPACE_PATH}/data/daily-battery-time-series/versions/7",
        "name": "7",
        "properties": {"dataType": "mltable", "dataUri": "azureml://datastores/workspaceblobstore/paths/x/"},
    }
    bodies = []
    for job in (azureml.automl_job("7"), load_entity(yaml.safe_load(azureml.to_yaml(azureml.automl_job("7"))))):
        client, arm = recording_client({("GET", "/data/daily-battery-time-series/versions/7"): (200, data_version)})
        client.jobs.create_or_update(job)
        (put,) = arm.writes()
        put["body"]["properties"].pop("displayName")
        bodies.append(put["body"])
    assert bodies[0] == bodies[1]
    assert bodies[1]["properties"]["taskDetails"]["forecastingSettings"]["timeSeriesIdColumnNames"] == ["Battery_ID"]


def test_cli_without_a_workspace_names_the_missing_settings(monkeypatch, capsys) -> None:
    for name in ("AZUREML_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["azureml", "submit-automl"]) == 2
    assert "AZUREML_SUBSCRIPTION_ID" in capsys.readouterr().err


# --- an AutoML (MLflow) model directory ---------------------------------------------------------------

# The shape of an AutoML forecasting model's conda.yaml: Python 3.9 and the pandas/numpy pins of
# azureml-automl-runtime.
AUTOML_CONDA = {
    "name": "project_environment",
    "channels": ["conda-forge", "anaconda"],
    "dependencies": ["python=3.9.19", "pip=22.1.2", "numpy~=1.23.5", "pandas~=1.5.3", "py-xgboost=1.5.2",
                     {"pip": ["azureml-automl-runtime==1.58.0", "azureml-mlflow==1.58.0", "mlflow==2.11.3",
                              "inference-schema"]}],
}  # fmt: skip


def mlflow_model_dir(folder: Path, conda: dict | None = None) -> Path:
    """A wrapped-model directory as `azureml wrap-automl` writes it, with a real pyfunc's conda.yaml unless given."""
    from _mlflow_model import save_stand_in

    save_stand_in(folder / "mlflow-model")
    if conda is not None:
        (folder / "mlflow-model" / "conda.yaml").write_text(yaml.safe_dump(conda))
    (folder / "metadata.json").write_text(json.dumps({"model_kind": "mlflow-pyfunc", "mlflow_model": "mlflow-model"}))
    return folder


def test_an_mlflow_models_environment_is_its_conda_yaml_joined_with_the_scoring_requirements(tmp_path: Path) -> None:
    model_dir = mlflow_model_dir(tmp_path / "model")
    own = yaml.safe_load((model_dir / "mlflow-model" / "conda.yaml").read_text())
    folder = azureml.stage_scoring_code(tmp_path / "code")

    spec = azureml.online_deployment("azureml:battery-cycles-forecaster:4", folder,
                                     environment=azureml.scoring_environment(model_dir))._to_dict()  # fmt: skip

    conda = spec["environment"]["conda_file"]
    python = next(d for d in own["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python in conda["dependencies"] and conda["channels"] == own["channels"]
    merged = {r.name: r.specifier for r in map(Requirement, conda["dependencies"][-1]["pip"])}
    theirs = list(map(Requirement, next(d["pip"] for d in own["dependencies"] if isinstance(d, dict))))
    ours = list(map(Requirement, [*azureml.scoring_requirements(), "mlflow-skinny==3.17.2"]))
    assert set(merged) == {r.name for r in theirs + ours}
    assert "pandas" in {r.name for r in theirs} & {r.name for r in ours}  # both sides name it
    for requirement in theirs + ours:  # each side's range holds in the merged line
        assert set(requirement.specifier) <= set(merged[requirement.name])
    assert azureml.model_asset(model_dir)._to_dict()["description"].startswith("AutoML (MLflow) forecaster")


def test_a_package_both_sides_name_gets_both_ranges() -> None:
    model = {"dependencies": ["python=3.11.7", "numpy", {"pip": ["pandas>=2.0", "--extra-index-url https://x"]}]}
    conda = azureml.mlflow_model_conda(model, ["numpy>=2.0,<3", "pandas>=2.2,<4", "msgspec==0.22.0"])
    assert conda["dependencies"][0] == "python=3.11.7" and "numpy" not in conda["dependencies"]
    pip = conda["dependencies"][-1]["pip"]
    assert pip[0] == "--extra-index-url https://x" and "msgspec==0.22.0" in pip
    pandas = SpecifierSet(next(line for line in pip if line.startswith("pandas")).removeprefix("pandas"))
    assert ("2.2.0" in pandas, "2.1.0" in pandas, "4.0" in pandas) == (True, False, False)


def test_a_real_automl_models_pins_conflict_with_the_scoring_code_and_say_so(tmp_path: Path, capsys) -> None:
    model_dir = mlflow_model_dir(tmp_path / "model", AUTOML_CONDA)
    with pytest.raises(azureml.EnvironmentConflict) as conflict:
        azureml.scoring_environment(model_dir)
    message = str(conflict.value)
    assert "python=3.9.19 (the scoring code needs Python 3.11 or later)" in message
    assert "numpy: the model needs ~=1.23.5, the scoring code <3,>=2.0" in message
    assert "pandas: the model needs ~=1.5.3, the scoring code <4,>=2.2" in message

    assert main(["azureml", "deploy", "--dry-run", "--model", "battery-cycles-forecaster:4", "--model-dir",
                 str(model_dir), "--work-dir", str(tmp_path / "code")]) == 2  # fmt: skip
    assert "python=3.9.19" in capsys.readouterr().err


def test_cli_wraps_a_downloaded_mlflow_model_and_deploys_it_with_its_environment(tmp_path: Path, capsys) -> None:
    from _mlflow_model import TRAINED_UNTIL, clean_telemetry, save_stand_in

    save_stand_in(tmp_path / "downloaded")
    clean_telemetry().to_csv(tmp_path / "telemetry.csv", index=False, date_format="%Y-%m-%d")
    assert main(["azureml", "wrap-automl", "--mlflow-model", str(tmp_path / "downloaded"), "--data",
                 str(tmp_path / "telemetry.csv"), "--trained-until", TRAINED_UNTIL, "--out",
                 str(tmp_path / "model")]) == 0  # fmt: skip
    wrapped = json.loads(capsys.readouterr().out)
    assert wrapped["model_dir"] == str(tmp_path / "model") and wrapped["calibration_errors"] >= 100
    assert set(wrapped["metrics"]) == {"model", "seasonal_naive", "recent_mean"}

    assert main(["azureml", "deploy", "--dry-run", "--model", "battery-cycles-forecaster:4", "--model-dir",
                 str(tmp_path / "model"), "--work-dir", str(tmp_path / "code")]) == 0  # fmt: skip
    _, deployment = yaml.safe_load_all(capsys.readouterr().out)
    assert "mlflow-skinny==3.17.2" in deployment["environment"]["conda_file"]["dependencies"][-1]["pip"]
    assert main(["azureml", "wrap-automl", "--mlflow-model", str(tmp_path / "downloaded"), "--data",
                 str(tmp_path / "telemetry.csv"), "--trained-until", "30/04/2016"]) == 2  # fmt: skip
    assert "--trained-until must be a day as YYYY-MM-DD" in capsys.readouterr().err
