"""Jobs: the steps people and timers run — train from a CSV, score a fleet as of a day, the main job.

Each job is a thin sequence over the functional core (read → prepare → train/score → write); the CLI and
the Function App's timers call these, so a job behaves the same from a laptop and from Azure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from shared.adapters import observability
from shared.adapters.archive import load_telemetry_history
from shared.adapters.registry import ModelRegistry
from shared.adapters.storage import ensure_container, upload_bytes
from shared.adapters.training_tracking import track_training
from shared.bootstrap import Services
from shared.config.settings import load_settings
from shared.core.alerts import AlertBatch, alerts_from_scores
from shared.core.preparation import prepare_telemetry
from shared.core.telemetry import DATE, InputError, read_cars_csv, read_telemetry_csv
from shared.handlers.lifecycle import note_batteries
from shared.models._lightgbm import BatteryForecaster, train_model
from shared.models.loader import load_model
from shared.models.report import training_report
from shared.models.scoring import score_fleet

SCORES_CONTAINER = "scores"

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """Default progress sink for callers that do not show progress."""


def parse_day(text: str, name: str = "--as-of") -> date:
    """A YYYY-MM-DD day, or `InputError` naming the argument."""
    try:
        return date.fromisoformat(str(text))
    except ValueError:
        raise InputError(f"{name} must be a day as YYYY-MM-DD, got {text!r}") from None


MODEL_KINDS = ("lightgbm", "lstm")


def train_from_csv(data_path: Path, model_dir: Path, *, cars_path: Path | None = None,
                   progress: Progress = _quiet, model_kind: str = "lightgbm"):
    """Read, prepare, backtest and train; write the model directory with metadata.json and report.md.

    model_kind "lstm" trains the PyTorch contender (shared/models/_lstm.py; needs requirements-lstm.txt) on the
    same backtest; it reads only the battery's own history, so the car table is not used, and it also
    writes its loss curves as training_results.png.
    """
    if model_kind not in MODEL_KINDS:
        raise InputError(f"--model must be one of {', '.join(MODEL_KINDS)}, got {model_kind!r}")
    progress(f"reading {data_path}")
    raw = read_telemetry_csv(data_path)
    cars = read_cars_csv(cars_path) if cars_path else None
    progress(f"preparing {len(raw):,} rows")
    clean, quality = prepare_telemetry(raw)
    progress(f"training on {clean['Battery_ID'].nunique():,} batteries, {len(clean):,} battery-days")
    if model_kind == "lstm":
        from shared.models._lstm import save_training_curves, train_lstm

        model = train_lstm(clean, quality=quality.to_dict(), progress=progress)
        model.save(model_dir)
        save_training_curves(model, model_dir)
    else:
        model = train_model(clean, cars, quality=quality.to_dict(), progress=progress)
        model.save(model_dir)
    progress("recording the training in MLflow")
    for warning in track_training(model, model_dir, cars=cars, quality=quality):
        progress(f"WARNING {warning}")
    report_path = Path(model_dir) / "report.md"
    report_path.write_text(training_report(model.metadata, quality))
    progress(f"model {model.version} written to {model_dir}")
    return model, report_path


def score_from_csv(data_path: Path, model_dir: Path, as_of: str | date, out_path: Path, *,
                   forecast_path: Path | None = None, threshold: float | None = None,
                   progress: Progress = _quiet) -> pd.DataFrame:
    """Batch-score every battery in service at `as_of` from a telemetry CSV, using data up to that day only."""
    day = parse_day(str(as_of))
    threshold = load_settings().alert_probability_threshold if threshold is None else threshold
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"--threshold must be in (0, 1], got {threshold}")
    progress(f"reading {data_path}")
    raw = read_telemetry_csv(data_path)
    raw = raw[raw[DATE] < pd.Timestamp(day) + pd.Timedelta(days=1)]
    if raw.empty:
        raise InputError(f"{data_path}: no rows on or before {day}")
    model = load_model(model_dir)
    progress(f"preparing {len(raw):,} rows up to {day}")
    clean, _ = prepare_telemetry(raw)
    progress("scoring the batteries in service")
    scores, forecast = score_fleet(model, clean, day, threshold=threshold)
    _write_csv(scores, out_path)
    if forecast_path is not None:
        _write_csv(forecast, forecast_path)
    return scores


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, date_format="%Y-%m-%d")


# --- the nightly jobs the Function App's timers run ---------------------------------------------------


def nightly_retrain(services: Services, *, past_due: bool = False) -> dict:
    """Retrain on the archived telemetry; promote only if the backtest beats the champion; return the outcome.

    With an Azure ML workspace configured, the AutoML job of the lab is submitted instead (it runs for up
    to an hour in the workspace; registration and deployment follow from the CLI or a pipeline).
    """
    settings = services.settings
    if settings.azureml_configured:
        from shared.adapters.azureml import submit_automl

        job = submit_automl(services.azureml_client(settings))
        return {"trained": "azureml-automl", "job": job.name, "past_due": past_due}
    raw = load_telemetry_history(services.blobs)
    if raw.empty:
        return {"trained": None, "reason": "no archived telemetry yet", "past_due": past_due}
    clean, quality = prepare_telemetry(raw)
    model = train_model(clean, quality=quality.to_dict())
    model_dir = services.work_dir / "candidates" / model.version
    model.save(model_dir)
    track_training(model, model_dir, quality=quality)
    decision = ModelRegistry(services.blobs).promote_if_better(model_dir)
    return {
        "trained": model.version,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "champion_before": decision.previous_champion,
        "past_due": past_due,
    }


def nightly_batch_score(services: Services) -> AlertBatch:
    """Score every battery in service as of yesterday with the champion; store the scores; return alerts.

    Yesterday, because the night's run sees the last complete day: the same day the streaming path
    scored when that day's record arrived, so both paths name the same alert and it is delivered once.
    """
    now = services.clock()
    as_of = now.date() - timedelta(days=1)
    model = champion_model(services)
    if model is None:
        return AlertBatch([], {"scored": 0, "reason": "no champion model registered yet"})
    raw = load_telemetry_history(services.blobs)
    raw = raw[raw[DATE] < pd.Timestamp(as_of) + pd.Timedelta(days=1)]
    if raw.empty:
        return AlertBatch([], {"scored": 0, "reason": f"no telemetry on or before {as_of}"})
    changed = note_batteries(services, raw, now)  # as the cars sent them: preparation renames a reset battery
    clean, _ = prepare_telemetry(raw)
    threshold = services.settings.alert_probability_threshold
    scores, _ = score_fleet(model, clean, as_of, threshold=threshold)
    observability.count_scored(len(scores))
    container = ensure_container(services.blobs, SCORES_CONTAINER)
    name = f"date={as_of.isoformat()}/scores-{model.version}.csv"
    upload_bytes(container, name, scores.to_csv(index=False, date_format="%Y-%m-%d").encode())
    alerts = alerts_from_scores(scores.assign(As_Of=pd.Timestamp(as_of)), threshold, now,
                                services.settings.service_booking_url, model_version=model.version)  # fmt: skip
    summary = {"as_of": as_of.isoformat(), "scored": len(scores), "alerts": len(alerts),
               "model_version": model.version, "scores_blob": f"{SCORES_CONTAINER}/{name}",
               "batteries_changed": changed}  # fmt: skip
    return AlertBatch(alerts, summary)


def champion_model(services: Services) -> BatteryForecaster | None:
    """The registry's champion, downloaded once per version into the work directory and kept loaded."""
    model_dir = ModelRegistry(services.blobs).download_champion(services.work_dir / "models")
    return None if model_dir is None else _load_cached(str(model_dir))


@functools.lru_cache(maxsize=2)
def _load_cached(model_dir: str) -> BatteryForecaster:
    return load_model(model_dir)


