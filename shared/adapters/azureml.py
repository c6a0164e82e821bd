"""Azure ML: the lab's AutoML retraining, model registration and the online endpoint, with `azure-ai-ml` (v2).

Two layers. The entity builders (`telemetry_data_asset`, `compute_target`, `automl_job`, `model_asset`,
`online_endpoint`, `online_deployment`) are pure: they need no workspace, so the lab's exact settings are
tested offline and `--dry-run` prints them as YAML (`to_yaml`). The operations (`register_data`,
`submit_automl`, `register_model`, `deploy`) take an `MLClient` (from `workspace_client`) and send those
entities; the nightly retrain timer calls `submit_automl` when a workspace is configured.

The lab deployed to Azure Container Instances (ACI) with the v1 SDK (`azureml-core`: `Model.deploy` with
`AciWebservice.deploy_configuration`). The v2 SDK has no ACI target; Azure ML's successor is the
managed online endpoint built here. Both run the same entry script (`scoring/score.py`, `init()`/`run()`
under azmlinfsrv), so the request/response contract is the same; the differences are operational:
managed endpoints give HTTPS, key or Azure AD auth, autoscale, blue/green traffic splits and managed
VM sizes, where ACI gave a single HTTP container with an optional key.
"""

from __future__ import annotations

import ast
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from azure.ai.ml import Input, MLClient, automl
from azure.ai.ml.automl import ForecastingJob
from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import (
    AmlCompute,
    CodeConfiguration,
    Data,
    Environment,
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    Model,
    OnlineRequestSettings,
)
from azure.core.exceptions import ResourceNotFoundError
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from shared.config.settings import Settings, SettingsError
from shared.core.telemetry import BATTERY_ID, DAILY_CYCLES, DATE, InputError
from shared.endpoint.server import SERVER_ENVIRONMENT
from shared.models._lightgbm import METADATA_FILE
from shared.models._mlflow import MLFLOW_DIR
from shared.models._mlflow import MODEL_KIND as MLFLOW_KIND

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCORING_DIR = PROJECT_ROOT / "scoring"
ENTRY_SCRIPT = "scoring/score.py"  # relative to the staged code folder (see `stage_scoring_code`)

# The lab's names and settings (issue 3).
DATA_ASSET = "daily-battery-time-series"
DATA_FILE = "daily-battery-time-series.csv"
EXPERIMENT = "Battery-Cycles-Forecast"
COMPUTE_NAME = "auto-ml-compute"
COMPUTE_SIZE = "STANDARD_DS3_v2"
FORECAST_HORIZON_DAYS = 30
PRIMARY_METRIC = "normalized_root_mean_squared_error"
TIMEOUT_MINUTES = 60
EXIT_SCORE = 0.1355
MODEL_NAME = "battery-cycles-forecaster"
ENDPOINT_NAME = "battery-cycles"
ENDPOINT_DESCRIPTION = "The best AutoML model to predict battery cycles."
DEPLOYMENT_NAME = "blue"
ENDPOINT_AUTH_MODES = ("aad_token", "key")
INSTANCE_TYPE = "Standard_DS3_v2"
# A 1,000-battery request takes about a second locally; leave room for a cold instance.
REQUEST_TIMEOUT_MS = 30_000
BASE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
PYTHON_VERSION = "3.11"  # also the oldest Python the `shared` package runs on (datetime.UTC)
# Where AutoML v2 writes the best trial's model (MLflow format) among a child job's outputs, and the
# parent job's named output holding the same model.
AUTOML_MODEL_OUTPUT = "outputs/mlflow-model"
AUTOML_BEST_MODEL_OUTPUT = "best_model"
# The MLflow client the endpoint loads an MLflow model with, pinned in the project's requirements.
MLFLOW_PACKAGE = "mlflow-skinny"


# --- workspace ----------------------------------------------------------------------------------------


def workspace_client(settings: Settings, credential: Any = None, **client_options: Any) -> MLClient:
    """An MLClient for the workspace the settings name; `credential` defaults to DefaultAzureCredential.

    `client_options` go to the azure-core pipeline (tests pass `transport=` to record requests).
    """
    missing = [
        name
        for name, value in (
            ("AZUREML_SUBSCRIPTION_ID", settings.azureml_subscription_id),
            ("AZUREML_RESOURCE_GROUP", settings.azureml_resource_group),
            ("AZUREML_WORKSPACE", settings.azureml_workspace),
        )
        if not value
    ]
    if missing:
        raise SettingsError(f"no Azure ML workspace configured: set {', '.join(missing)}")
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return MLClient(
        credential,
        settings.azureml_subscription_id,
        settings.azureml_resource_group,
        settings.azureml_workspace,
        **client_options,
    )


def to_yaml(*entities: Any) -> str:
    """The entities as Azure ML YAML documents (what `--dry-run` prints), from their `_to_dict()`.

    Each document loads back (`azure.ai.ml.load_job`, `load_compute`, ...) to an entity that sends the same
    request body as the original: tests/test_azureml.py round-trips every dry-run.
    """
    return yaml.safe_dump_all([_yaml_document(entity) for entity in entities], sort_keys=False)


def _yaml_document(entity: Any) -> dict:
    # _to_dict() holds OrderedDicts; a JSON round trip turns them into plain data YAML can write.
    document = json.loads(json.dumps(entity._to_dict()))
    if isinstance(entity, ForecastingJob):
        # azure-ai-ml dumps this list as its str(), "['Battery_ID']", which load_job reads back as one
        # column of that name; the YAML schema takes a list.
        settings = entity.forecasting_settings
        document["forecasting"]["time_series_id_column_names"] = list(settings.time_series_id_column_names)
    return document


# --- data ---------------------------------------------------------------------------------------------


def write_mltable(clean: pd.DataFrame, folder: Path) -> Path:
    """Write prepared telemetry as an MLTable folder: the CSV plus the `MLTable` file that reads it.

    AutoML forecasting jobs only take MLTable input. The CSV keeps the data set's columns and ISO dates,
    exactly what the lab's `daily-battery-time-series` held.
    """
    folder.mkdir(parents=True, exist_ok=True)
    clean.to_csv(folder / DATA_FILE, index=False, date_format="%Y-%m-%d")
    mltable = {
        "type": "mltable",
        "paths": [{"file": f"./{DATA_FILE}"}],
        "transformations": [
            {"read_delimited": {"delimiter": ",", "encoding": "utf8", "header": "all_files_same_headers"}}
        ],
    }
    (folder / "MLTable").write_text(yaml.safe_dump(mltable, sort_keys=False))
    return folder


def telemetry_data_asset(folder: Path) -> Data:
    """The data asset `daily-battery-time-series`; no version, so each registration makes a new one."""
    return Data(
        name=DATA_ASSET,
        path=str(folder),
        type=AssetTypes.MLTABLE,
        description="Prepared daily battery telemetry (one row per battery and day).",
    )


def register_data(ml_client: MLClient, folder: Path) -> Data:
    """Upload an MLTable folder (`write_mltable`) and register it as the next version of the asset."""
    return ml_client.data.create_or_update(telemetry_data_asset(folder))


# --- AutoML -------------------------------------------------------------------------------------------


def compute_target() -> AmlCompute:
    """The lab's training cluster: up to one STANDARD_DS3_v2 node, none while idle (the lab kept one always on,
    billed around the clock; AutoML waits a few minutes for the node instead)."""
    return AmlCompute(name=COMPUTE_NAME, size=COMPUTE_SIZE, min_instances=0, max_instances=1)


def automl_job(data_version: str | None = None) -> ForecastingJob:
    """The lab's AutoML run: forecast Daily_Cycles_Used per Battery_ID, 30 days ahead, daily.

    It trains on the given version of the telemetry data asset; without one the entity names
    `@latest` (what `--dry-run` shows), and `submit_automl` pins the newest version before submitting.
    """
    data = f"azureml:{DATA_ASSET}:{data_version}" if data_version else f"azureml:{DATA_ASSET}@latest"
    job = automl.forecasting(
        compute=COMPUTE_NAME,
        experiment_name=EXPERIMENT,
        training_data=Input(type=AssetTypes.MLTABLE, path=data),
        target_column_name=DAILY_CYCLES,
        primary_metric=PRIMARY_METRIC,
        n_cross_validations="auto",
    )
    job.set_forecast_settings(
        time_column_name=DATE,
        time_series_id_column_names=[BATTERY_ID],
        forecast_horizon=FORECAST_HORIZON_DAYS,
        frequency="D",
    )
    job.set_limits(timeout_minutes=TIMEOUT_MINUTES, exit_score=EXIT_SCORE)
    return job


def ensure_compute(ml_client: MLClient) -> AmlCompute:
    """The training cluster, created (and waited for) only if the workspace does not have it yet."""
    try:
        return ml_client.compute.get(COMPUTE_NAME)
    except ResourceNotFoundError:
        return ml_client.compute.begin_create_or_update(compute_target()).result()


def submit_automl(ml_client: MLClient, data_version: str | None = None) -> ForecastingJob:
    """Create the compute if missing and submit the AutoML job (on the newest data unless told)."""
    ensure_compute(ml_client)
    version = data_version or ml_client.data.get(DATA_ASSET, label="latest").version
    return ml_client.jobs.create_or_update(automl_job(version))


# --- models -------------------------------------------------------------------------------------------


def model_asset(model_dir: Path, version_tag: str | None = None) -> Model:
    """A local model directory (`python -m shared train`, or `azureml wrap-automl`) as a custom model asset."""
    wrapped = model_kind(model_dir) == MLFLOW_KIND
    return Model(
        name=MODEL_NAME,
        path=str(model_dir),
        type=AssetTypes.CUSTOM_MODEL,
        description="AutoML (MLflow) forecaster with calibrated 30-day failure risk."
        if wrapped
        else "Global LightGBM battery-cycle forecaster with calibrated 30-day failure risk.",
        tags={"model_version": version_tag} if version_tag else {},
    )


def model_kind(model_dir: Path) -> str | None:
    """The model_kind a model directory's metadata names (None without one: an older LightGBM directory)."""
    metadata = Path(model_dir) / METADATA_FILE
    return json.loads(metadata.read_text()).get("model_kind") if metadata.is_file() else None


def automl_model_asset(best_child_job: str, parent_job: str | None = None) -> Model:
    """The best AutoML trial's MLflow model, referenced where the job left it (no download needed)."""
    return Model(
        name=MODEL_NAME,
        path=f"azureml://jobs/{best_child_job}/outputs/artifacts/{AUTOML_MODEL_OUTPUT}/",
        type=AssetTypes.MLFLOW_MODEL,
        description=f"Best AutoML trial of {EXPERIMENT}.",
        tags={"automl_parent_job": parent_job or "", "automl_child_job": best_child_job},
    )


def best_child_job(ml_client: MLClient, parent_job: str) -> str:
    """The best trial of an AutoML job, from the `automl_best_child_run_id` AutoML sets when it finishes."""
    job = ml_client.jobs.get(parent_job)
    for source in (job.tags or {}, job.properties or {}):
        if source.get("automl_best_child_run_id"):
            return source["automl_best_child_run_id"]
    raise ValueError(
        f"AutoML job {parent_job!r} names no best trial yet (status {job.status}); "
        "wait for it to finish or pass the child job with --child-job"
    )


def download_best_model(ml_client: MLClient, parent_job: str, folder: Path) -> Path:
    """Download an AutoML job's best model (its `best_model` output, MLflow format); the folder with MLmodel."""
    ml_client.jobs.download(name=parent_job, download_path=str(folder), output_name=AUTOML_BEST_MODEL_OUTPUT)
    found = sorted(path.parent for path in Path(folder).rglob("MLmodel"))
    if len(found) != 1:
        raise InputError(
            f"the download of {parent_job}'s {AUTOML_BEST_MODEL_OUTPUT} holds {len(found)} MLflow "
            f"models under {folder}; expected one"
        )
    return found[0]


def register_model(ml_client: MLClient, model: Model) -> Model:
    """Register a model asset (`model_asset` uploads the directory; `automl_model_asset` only points)."""
    return ml_client.models.create_or_update(model)


# --- endpoint -----------------------------------------------------------------------------------------


def scoring_requirements(path: Path = SCORING_DIR / "requirements.txt", only: list[str] | None = None) -> list[str]:
    """The pip requirements of the scoring environment, one per line, comments dropped (`only`: these packages)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    requirements = [line for line in lines if line]
    if only is None:
        return requirements
    wanted = {canonicalize_name(name) for name in only}
    return [line for line in requirements if canonicalize_name(Requirement(line).name) in wanted]


def scoring_environment(model_dir: Path | None = None) -> Environment:
    """The endpoint's environment: Azure ML's Ubuntu base image plus scoring/requirements.txt.

    For a wrapped MLflow (AutoML) model directory it is the MLflow model's own conda.yaml joined with
    those requirements and the MLflow client (`mlflow_model_conda`): the model's pickle needs its
    packages, score.py needs ours, in one process.
    """
    if model_dir is not None and model_kind(model_dir) == MLFLOW_KIND:
        model_conda = yaml.safe_load((Path(model_dir) / MLFLOW_DIR / "conda.yaml").read_text())
        requirements = [
            *scoring_requirements(),
            *scoring_requirements(PROJECT_ROOT / "requirements.txt", only=[MLFLOW_PACKAGE]),
        ]
        conda = mlflow_model_conda(model_conda, requirements)
        return Environment(name="battery-scoring-mlflow", image=BASE_IMAGE, conda_file=conda)
    conda = {
        "name": "battery-scoring",
        "channels": ["conda-forge"],
        "dependencies": [f"python={PYTHON_VERSION}", "pip", {"pip": scoring_requirements()}],
    }
    return Environment(name="battery-scoring", image=BASE_IMAGE, conda_file=conda)


class EnvironmentConflict(InputError):
    """The MLflow model's dependencies and the scoring code's cannot be installed side by side."""


def mlflow_model_conda(model_conda: dict, requirements: list[str]) -> dict:
    """One conda environment for an MLflow model and the scoring code, or EnvironmentConflict naming why not.

    The model's conda.yaml is the base (its Python, channels and packages: its pickle was made with
    them). Its Python must be at least PYTHON_VERSION, which `shared` needs. A package both sides name
    must have overlapping version ranges; the merged environment asks for both ranges on one pip line.
    Everything else either side names is kept as it is.
    """
    conda_entries = [d for d in model_conda.get("dependencies", []) if isinstance(d, str)]
    model_pip = [line for d in model_conda.get("dependencies", []) if isinstance(d, dict) for line in d.get("pip", [])]
    ours = {canonicalize_name(r.name): r for r in map(Requirement, requirements)}
    conflicts, kept_conda, merged = [], [], {}
    for entry in conda_entries:
        name, spec = _conda_spec(entry)
        if name == "python":
            if not _overlap(spec, SpecifierSet(f">={PYTHON_VERSION}")):
                conflicts.append(f"{entry} (the scoring code needs Python {PYTHON_VERSION} or later)")
            kept_conda.append(entry)
        elif name in ours:
            merged[name] = spec
        else:
            kept_conda.append(entry)
    kept_pip = []
    for line in model_pip:
        requirement = _requirement(line)
        if requirement is None or canonicalize_name(requirement.name) not in ours:
            kept_pip.append(line)  # pip options, URLs and packages only the model names stay as written
        else:
            merged[canonicalize_name(requirement.name)] = requirement.specifier
    for name, spec in merged.items():
        if not _overlap(spec, ours[name].specifier):
            conflicts.append(f"{name}: the model needs {spec}, the scoring code {ours[name].specifier}")
    if conflicts:
        raise EnvironmentConflict(
            "the MLflow model's environment (its conda.yaml) and the scoring code's "
            "requirements conflict: " + "; ".join(conflicts)
        )
    combined = [f"{r.name}{r.specifier & merged[n]}" if merged.get(n) else str(r) for n, r in ours.items()]
    return {
        "name": "battery-scoring-mlflow",
        "channels": model_conda.get("channels") or ["conda-forge"],
        "dependencies": [*kept_conda, {"pip": [*kept_pip, *combined]}],
    }


def _conda_spec(entry: str) -> tuple[str, SpecifierSet]:
    """A conda dependency ("python=3.9.19", "numpy~=1.23.5", "pip") as a name and a pip-style range.

    Conda's single "=" is a prefix match: "=3.9" is "==3.9.*".
    """
    entry = entry.split("::")[-1].strip()
    cut = next((i for i, char in enumerate(entry) if char in "=<>!~ "), len(entry))
    name, spec = canonicalize_name(entry[:cut]), entry[cut:].replace(" ", "")
    if spec.startswith("=") and not spec.startswith("=="):
        spec = "==" + spec[1:] + ("" if spec.endswith("*") else ".*")
    return name, SpecifierSet(spec)


def _requirement(line: str) -> Requirement | None:
    try:
        return Requirement(line)
    except InvalidRequirement:
        return None


def _overlap(first: SpecifierSet, second: SpecifierSet) -> bool:
    """Whether some version satisfies both ranges, tried on the versions they name and the next one up."""
    candidates = set()
    for specifier in [*first, *second]:
        try:
            version = Version(specifier.version.removesuffix(".*"))
        except InvalidVersion:
            return True  # a range we cannot read is left to the installer to judge
        release = list(version.release)
        release[-1] += 1
        candidates |= {version, Version(".".join(map(str, release)))}
    if not candidates:
        return True  # neither side limits the version
    return any(first.contains(v, prereleases=True) and second.contains(v, prereleases=True) for v in candidates)


def stage_scoring_code(folder: Path) -> Path:
    """Copy what the endpoint runs — scoring/score.py and the `shared` modules it imports — into a fresh folder.

    Azure ML uploads the code folder and runs `scoring/score.py` from it; score.py puts the folder (its
    parent's parent) on sys.path, so `import shared` works there as it does from the repo root. Staging
    keeps tests, node_modules, .venv and every part of `shared` the endpoint never imports (devtools/, the
    CLI, the handlers, compliance, ...) out of the upload.
    """
    if folder.exists():
        shutil.rmtree(folder)
    for module in endpoint_modules():
        target = folder / module.relative_to(PROJECT_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(module, target)
    (folder / "scoring").mkdir(parents=True)
    shutil.copy2(SCORING_DIR / "score.py", folder / "scoring" / "score.py")
    return folder


def endpoint_modules(entry: Path = SCORING_DIR / "score.py") -> list[Path]:
    """The `shared` files `entry` imports, directly or through each other, with their packages' __init__.py.

    Every import statement counts, also those inside functions (loading an LSTM or an MLflow model imports
    its kind's module only then), so the staged code holds all the endpoint can run.
    """
    found: set[Path] = set()
    pending = [entry]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] != "shared":
                    continue
                packages = [PROJECT_ROOT.joinpath(*parts[:depth], "__init__.py") for depth in range(1, len(parts) + 1)]
                module = PROJECT_ROOT.joinpath(*parts).with_suffix(".py")
                for path in [*packages, module]:
                    if path.is_file() and path not in found:
                        found.add(path)
                        pending.append(path)
    return sorted(found)


def online_endpoint(auth_mode: str = "aad_token") -> ManagedOnlineEndpoint:
    """The managed online endpoint `battery-cycles`: Entra ID tokens (the app's identity, no secret) unless
    `auth_mode="key"` (a key, like the lab's ACI service). infra/ creates it the same way."""
    if auth_mode not in ENDPOINT_AUTH_MODES:
        raise InputError(f"auth mode must be one of {', '.join(ENDPOINT_AUTH_MODES)}, got {auth_mode!r}")
    return ManagedOnlineEndpoint(name=ENDPOINT_NAME, description=ENDPOINT_DESCRIPTION, auth_mode=auth_mode)


def online_deployment(
    model: Model | str,
    code_folder: Path,
    name: str = DEPLOYMENT_NAME,
    instance_type: str = INSTANCE_TYPE,
    worker_count: int = 2,
    environment: Environment | None = None,
) -> ManagedOnlineDeployment:
    """One deployment of the endpoint: the model, the staged code with score.py, the scoring environment
    (`scoring_environment()` unless given: pass `scoring_environment(model_dir)` for an MLflow model).

    `WORKER_COUNT` sets azmlinfsrv's worker processes; the instance admits as many concurrent requests.
    SERVER_ENVIRONMENT gives the server the endpoint's timeouts, as the local server has them.
    """
    return ManagedOnlineDeployment(
        name=name,
        endpoint_name=ENDPOINT_NAME,
        model=model,
        code_configuration=CodeConfiguration(code=str(code_folder), scoring_script=ENTRY_SCRIPT),
        environment=environment or scoring_environment(),
        instance_type=instance_type,
        instance_count=1,
        environment_variables={"WORKER_COUNT": str(worker_count), **SERVER_ENVIRONMENT},
        app_insights_enabled=True,
        request_settings=OnlineRequestSettings(
            request_timeout_ms=REQUEST_TIMEOUT_MS, max_concurrent_requests_per_instance=worker_count
        ),
    )


def deploy(ml_client: MLClient, deployment: ManagedOnlineDeployment, auth_mode: str = "aad_token") -> Mapping[str, str]:
    """Create or update the endpoint and the deployment, send it all traffic; return where to call it.

    With key auth the key is not returned or printed: `key_hint` says how to fetch it, so it never lands in logs.
    """
    ml_client.online_endpoints.begin_create_or_update(online_endpoint(auth_mode)).result()
    ml_client.online_deployments.begin_create_or_update(deployment).result()
    endpoint = ml_client.online_endpoints.get(ENDPOINT_NAME)
    endpoint.traffic = {deployment.name: 100}
    endpoint = ml_client.online_endpoints.begin_create_or_update(endpoint).result()
    if auth_mode == "key":
        return {"scoring_uri": endpoint.scoring_uri, "auth_mode": auth_mode, "key_hint": key_hint(ml_client)}
    return {
        "scoring_uri": endpoint.scoring_uri,
        "auth_mode": auth_mode,
        "auth_hint": "SCORING_AUTH=aad_token; the caller's identity needs AzureML Data Scientist on the workspace",
    }


def key_hint(ml_client: MLClient) -> str:
    """How to fetch the endpoint key (for SCORING_KEY) without this program ever printing it."""
    return (
        f"az ml online-endpoint get-credentials --name {ENDPOINT_NAME} "
        f"--resource-group {ml_client.resource_group_name} --workspace-name {ml_client.workspace_name} "
        f"(or MLClient.online_endpoints.get_keys('{ENDPOINT_NAME}').primary_key)"
    )
