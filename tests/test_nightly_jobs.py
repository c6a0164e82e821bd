"""nightly_retrain_timer and nightly_batch_score_timer: the real function_app through the local host.

Real Azurite (archive, registry, scores, alert queue) and the real trained test model; the Azure ML branch
runs the real azure-ai-ml client on a recording transport (tests/_recording_transport.py), so the job it
would submit is seen request by request with nothing leaving the machine.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pandas as pd
from _models import fleet, model_dir
from _recording_transport import RecordingTransport, StaticToken
from _services import LAST_DAY, NIGHT, TELEMETRY

from shared.adapters.archive import archive_telemetry
from shared.adapters.azureml import workspace_client
from shared.adapters.observability import summary_of
from shared.adapters.registry import ModelRegistry
from shared.adapters.storage import download_bytes, list_blob_names
from shared.handlers.nightly import SCORES_CONTAINER
from shared.models.scoring import BATCH_SCORE_COLUMNS

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
WORKSPACE_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-battery/providers/"
    "Microsoft.MachineLearningServices/workspaces/ws-battery"
)
AZUREML = {"AZUREML_SUBSCRIPTION_ID": SUBSCRIPTION, "AZUREML_RESOURCE_GROUP": "rg-battery",
           "AZUREML_WORKSPACE": "ws-battery"}  # fmt: skip


def logged_outcome(caplog, step: str) -> dict:
    """The summary the function logged for `step` (function_app logs one per run, as record attributes)."""
    [summary] = [fields for of, fields in filter(None, map(summary_of, caplog.records)) if of == step]
    return summary


def unbeatable_champion(root: Path) -> Path:
    """A champion whose backtest nothing can beat (Brier and NRMSE 0): any candidate must lose to it."""
    perfect = {"nrmse": 0.0, "mae": 0.0, "brier": 0.0, "average_precision": 1.0,
               "recall_at_threshold": 1.0, "precision_at_threshold": 1.0}  # fmt: skip
    path = root / "perfect-1"
    path.mkdir(parents=True)
    metadata = {"version": "perfect-1", "backtest": {"metrics": {"model": perfect}}}
    (path / "metadata.json").write_text(json.dumps(metadata))
    return path


def test_a_candidate_that_loses_to_the_champion_is_kept_but_not_promoted(harness, tmp_path, caplog):
    registry = ModelRegistry(harness.services.blobs)
    registry.promote_if_better(unbeatable_champion(tmp_path))
    pointer = registry.champion()
    telemetry = fleet().telemetry
    half = telemetry[telemetry["Car_ID"].isin(sorted(set(telemetry["Car_ID"]))[:20])]  # enough to backtest
    archive_telemetry(harness.services.blobs, half, NIGHT, batch_id="fleet")

    with caplog.at_level(logging.INFO, logger="function_app"):
        run = harness.host.fire_timer("nightly_retrain_timer")

    assert run.succeeded, run.error
    outcome = logged_outcome(caplog, "nightly_retrain")
    assert outcome["promoted"] is False and outcome["champion_before"] == "perfect-1"
    assert "does not beat the champion's 0" in outcome["reason"]
    assert registry.champion() == pointer  # same record, same ETag: the pointer never moved
    candidate = outcome["trained"]
    assert registry.versions() == sorted(["perfect-1", candidate])  # the loser is kept, for comparison
    assert outcome["shadow"] is True and registry.shadow_version() == candidate  # and scored beside it
    last = registry.decisions()[-1]
    assert (last["version"], last["promoted"], last["reason"]) == (candidate, False, outcome["reason"])


def test_an_empty_archive_trains_nothing_and_says_so(harness, caplog):
    with caplog.at_level(logging.INFO, logger="function_app"):
        run = harness.host.fire_timer("nightly_retrain_timer", past_due=True)

    assert run.succeeded, run.error
    outcome = logged_outcome(caplog, "nightly_retrain")
    assert {key: outcome[key] for key in ("trained", "past_due")} == {"trained": None, "past_due": True}
    assert re.fullmatch(r"no archived telemetry since \d{4}-\d{2}-\d{2}", outcome["reason"])
    registry = ModelRegistry(harness.services.blobs)
    assert (registry.versions(), registry.champion()) == ([], None)


def test_with_a_workspace_the_retrain_submits_the_automl_job_instead(harness, caplog):
    data_version = {
        "id": f"{WORKSPACE_PATH}/data/daily-battery-time-series/versions/4",
        "name": "4",
        "properties": {"dataType": "mltable", "dataUri": "azureml://datastores/workspaceblobstore/paths/x/"},
    }
    arm = RecordingTransport(WORKSPACE_PATH, {
        ("GET", "/"): (200, {"id": WORKSPACE_PATH, "name": "ws-battery", "location": "westeurope", "properties": {}}),
        ("GET", "/data/daily-battery-time-series"): (200, {"properties": {"latestVersion": "4"}}),
        ("GET", "/data/daily-battery-time-series/versions/4"): (200, data_version),
    })  # fmt: skip
    services = harness.configure(**AZUREML)
    services.azureml_client = lambda settings: workspace_client(settings, StaticToken(), transport=arm)
    archive_telemetry(harness.services.blobs, TELEMETRY, NIGHT, batch_id="fleet")  # would train locally

    with caplog.at_level(logging.INFO, logger="function_app"):
        run = harness.host.fire_timer("nightly_retrain_timer")

    assert run.succeeded, run.error
    outcome = logged_outcome(caplog, "nightly_retrain")
    compute, job = arm.writes()
    assert (compute["method"], compute["path"]) == ("PUT", "/computes/auto-ml-compute")
    assert outcome == {"trained": "azureml-automl", "job": job["path"].removeprefix("/jobs/"), "past_due": False}
    properties = job["body"]["properties"]
    assert (properties["jobType"], properties["experimentName"]) == ("AutoML", "Battery-Cycles-Forecast")
    task = properties["taskDetails"]
    assert (task["taskType"], task["targetColumnName"]) == ("Forecasting", "Daily_Cycles_Used")
    assert task["trainingData"]["uri"] == data_version["id"]  # the newest registered data
    assert {sent["host"] for sent in arm.sent} == {"management.azure.com"}
    assert {sent["authorization"] for sent in arm.sent} == {"Bearer recorded-token"}
    assert ModelRegistry(harness.services.blobs).versions() == []  # nothing trained here


def test_the_batch_score_writes_yesterdays_scores_under_the_champions_version(harness):
    registry = ModelRegistry(harness.services.blobs)
    champion = registry.promote_if_better(model_dir()).version
    archive_telemetry(harness.services.blobs, TELEMETRY, NIGHT, batch_id="fleet")

    run = harness.host.fire_timer("nightly_batch_score_timer")

    assert run.succeeded, run.error
    assert run.enqueued == {"maintenance-alerts": 2}
    container = harness.services.blobs.get_container_client(SCORES_CONTAINER)
    name = f"date={LAST_DAY}/{champion}.parquet"
    assert list_blob_names(container) == [name]
    scores = pd.read_parquet(io.BytesIO(download_bytes(container, name)))
    assert list(scores.columns) == [*BATCH_SCORE_COLUMNS, "alert", "reasons", "forecast_daily_cycles"]
    assert scores["forecast_daily_cycles"].map(len).eq(30).all()  # the monitor judges the forecast once matured
    assert sorted(scores["Battery_ID"]) == ["B-PAST", "B-SAFE", "B-SOON"]  # one row per battery in service
    by_battery = scores.set_index("Battery_ID")
    assert by_battery["alert"].to_dict() == {"B-PAST": True, "B-SAFE": False, "B-SOON": True}
    assert by_battery.loc["B-PAST", "Lifetime_Cycles_Used"] == 201.0  # the last day's counter: as of yesterday
    assert {alert["model_version"] for alert in harness.queued()} == {champion}
