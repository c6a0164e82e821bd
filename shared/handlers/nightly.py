"""Jobs: the steps people and timers run — train from a CSV, score a fleet as of a day, the main job.

Each job is a thin sequence over the functional core (read → prepare → train/score → write); the CLI and
the Function App's timers call these, so a job behaves the same from a laptop and from Azure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from shared.adapters import feedback_store, observability
from shared.adapters.archive import download_archive, read_archive
from shared.adapters.compaction import compact_archive
from shared.adapters.monitor_store import read_car_segments
from shared.adapters.registry import ModelRegistry
from shared.adapters.score_store import write_scores
from shared.adapters.training_tracking import track_training
from shared.bootstrap import Services
from shared.config.names import SCORES_CONTAINER
from shared.config.settings import load_settings
from shared.core.alerts import AlertBatch
from shared.core.feedback import batteries_in_cars
from shared.core.monitoring import SHADOW, feature_reference
from shared.core.preparation import prepare_telemetry
from shared.core.risk import HORIZON_DAYS
from shared.core.telemetry import DAILY_CYCLES, DATE, InputError, read_cars_csv, read_telemetry_csv
from shared.handlers.lifecycle import alerts_of_scores, note_batteries
from shared.models._lightgbm import BatteryForecaster, train_model
from shared.models.loader import load_model
from shared.models.report import training_report
from shared.models.scoring import IN_SERVICE_DAYS, score_fleet
from shared.models.training_sample import BatteryUsage, period_record, sample_batteries, trailing_period_start

Progress = Callable[[str], None]
# Days of the trailing period read at once for the sample's view: a month of the fleet's five columns.
USAGE_READ_DAYS = 31


def _quiet(message: str) -> None:
    """Default progress sink for callers that do not show progress."""


def parse_day(text: str, name: str = "--as-of") -> date:
    """A YYYY-MM-DD day, or `InputError` naming the argument."""
    try:
        return date.fromisoformat(str(text))
    except ValueError:
        raise InputError(f"{name} must be a day as YYYY-MM-DD, got {text!r}") from None


MODEL_KINDS = ("lightgbm", "lstm")


def train_from_csv(
    data_path: Path,
    model_dir: Path,
    *,
    cars_path: Path | None = None,
    progress: Progress = _quiet,
    model_kind: str = "lightgbm",
):
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


def score_from_csv(
    data_path: Path,
    model_dir: Path,
    as_of: str | date,
    out_path: Path,
    *,
    forecast_path: Path | None = None,
    threshold: float | None = None,
    progress: Progress = _quiet,
    engine: str = "pandas",
    master: str | None = None,
) -> pd.DataFrame:
    """Batch-score every battery in service at `as_of` from a telemetry CSV, using data up to that day only.

    engine "spark" runs the Spark job (shared/spark/job.py) on `master` instead, with the same output.
    """
    day = parse_day(str(as_of))
    threshold = load_settings().alert_probability_threshold if threshold is None else threshold
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"--threshold must be in (0, 1], got {threshold}")
    if engine == "spark":
        from shared.spark.engine import score_csv_on_spark

        progress(f"scoring {data_path} with Spark ({master or 'local[*]'})")
        scores, forecast = score_csv_on_spark(data_path, model_dir, day, threshold, master)
    else:
        scores, forecast = _score_csv_in_process(data_path, model_dir, day, threshold, progress)
    _write_csv(scores, out_path)
    if forecast_path is not None:
        _write_csv(forecast, forecast_path)
    return scores


def _score_csv_in_process(data_path: Path, model_dir: Path, day: date, threshold: float,
                          progress: Progress) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    progress(f"reading {data_path}")
    raw = read_telemetry_csv(data_path)
    raw = raw[raw[DATE] < pd.Timestamp(day) + pd.Timedelta(days=1)]
    if raw.empty:
        raise InputError(f"{data_path}: no rows on or before {day}")
    model = load_model(model_dir)
    progress(f"preparing {len(raw):,} rows up to {day}")
    clean, _ = prepare_telemetry(raw)
    progress("scoring the batteries in service")
    return score_fleet(model, clean, day, threshold=threshold)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, date_format="%Y-%m-%d")


# --- the nightly jobs the Function App's timers run ---------------------------------------------------


def nightly_retrain(services: Services, *, past_due: bool = False) -> dict:
    """Retrain on the archive's trailing period; promote only if the backtest beats the champion; return the outcome.

    Bounded by the settings, not by how long the archive is or how big the fleet grows: only the last
    RETRAIN_HISTORY_DAYS days are read, and past RETRAIN_MAX_BATTERIES batteries a stratified sample of
    them is trained on (shared/models/training_sample.py). The model's metadata records both.

    A model that does not beat the champion is kept as the shadow (KEEP_SHADOW_CANDIDATE), to be judged on
    matured outcomes (shared/handlers/monitoring.py): the fair comparison once the world has changed.

    With an Azure ML workspace configured, the AutoML job of the lab is submitted instead (it runs for up
    to an hour in the workspace; registration and deployment follow from the CLI or a pipeline).
    """
    settings = services.settings
    if settings.azureml_configured:
        from shared.adapters.azureml import submit_automl

        job = submit_automl(services.azureml_client(settings))
        return {"trained": "azureml-automl", "job": job.name, "past_due": past_due}
    last_day = services.clock().date() - timedelta(days=1)
    since = trailing_period_start(pd.Timestamp(last_day), settings.retrain_history_days)
    usage = trailing_period_usage(services, since.date(), last_day)
    if usage.empty:
        return {"trained": None, "reason": f"no archived telemetry since {since:%Y-%m-%d}", "past_due": past_due}
    sample = sample_batteries(usage, settings.retrain_max_batteries)
    training_data = {"period": period_record(usage, since, settings.retrain_history_days), "sample": sample.record()}
    del usage
    raw = read_archive(services.blobs, since.date(), last_day, skip_unreadable=settings.archive_skip_unreadable,
                       batteries=sample.battery_ids if sample.sampled else None).frame  # fmt: skip
    clean, quality = prepare_telemetry(raw)
    del raw  # the raw period is the largest frame of the night: free it before training
    model = train_model(clean, quality=quality.to_dict())
    model.metadata["training_data"] = training_data
    # the drift reference per segment: the car table reaches the app as the monitor's segments
    model.metadata["input_reference"] = feature_reference(clean, read_car_segments(services.blobs))
    model_dir = services.work_dir / "candidates" / model.version
    model.save(model_dir)
    track_training(model, model_dir, quality=quality)
    registry = ModelRegistry(services.blobs)
    decision = registry.promote_if_better(model_dir)
    shadow = not decision.promoted and settings.keep_shadow_candidate
    if shadow:
        registry.keep_shadow(model.version, decision.reason)
    return {
        "trained": model.version,
        "promoted": decision.promoted,
        "shadow": shadow,
        "reason": decision.reason,
        "champion_before": decision.previous_champion,
        "training_data": training_data,
        "past_due": past_due,
    }


def trailing_period_usage(services: Services, first: date, last: date) -> BatteryUsage:
    """The sample's view of days `first`..`last`, read USAGE_READ_DAYS days and five columns at a time."""
    usage = BatteryUsage()
    for start in range(0, (last - first).days + 1, USAGE_READ_DAYS):
        chunk_first = first + timedelta(days=start)
        chunk_last = min(last, chunk_first + timedelta(days=USAGE_READ_DAYS - 1))
        usage.add(read_archive(services.blobs, chunk_first, chunk_last, columns=BatteryUsage.columns,
                               skip_unreadable=services.settings.archive_skip_unreadable).frame)  # fmt: skip
    return usage


def nightly_batch_score(services: Services) -> AlertBatch:
    """Score every battery in service as of yesterday with the champion; store the scores; return alerts.

    Yesterday, because the night's run sees the last complete day: the same day the streaming path
    scored when that day's record arrived, so both paths name the same alert and it is delivered once.
    Bounded memory: only the days the model's window and the in-service rule look at are read
    (`scoring_days`), held compressed, and decoded, prepared and scored BATCH_SCORE_CHUNK_BATTERIES cars
    at a time, so peak memory follows the chunk × window (and the window's compressed files), not the
    years archived nor the whole fleet's decoded rows. The scores are one Parquet file,
    `scores/date=<as_of>/<model version>.parquet` with the forecast (shared/adapters/score_store.py). With a
    shadow in the registry, the same batteries are scored with it too and stored under `shadow/`; only the
    champion's scores alert.
    """
    if services.settings.spark is not None:
        return submit_spark_batch_score(services)
    settings = services.settings
    now = services.clock()
    as_of = now.date() - timedelta(days=1)
    model = champion_model(services)
    if model is None:
        return AlertBatch([], {"scored": 0, "reason": "no champion model registered yet"})
    first = as_of - timedelta(days=scoring_days(model.window_days) - 1)
    window = download_archive(services.blobs, first, as_of, skip_unreadable=settings.archive_skip_unreadable)
    threshold = settings.alert_probability_threshold
    shadow = shadow_model(services)
    models = [model] if shadow is None else [model, shadow]
    chunks, in_cars, changed = [], {}, 0
    for chunk in window.chunks_of_cars(settings.batch_score_chunk_batteries):
        changed += note_installed(services, chunk.frame, now, in_cars)
        clean = prepare_telemetry(chunk.frame)[0]
        chunks.append([_scored(each, clean, as_of, threshold) for each in models])
    files = {"files_read": len(window.names) - len(window.skipped), "skipped_files": list(window.skipped.values())}
    if not chunks:
        return AlertBatch([], {"scored": 0, "reason": f"no telemetry from {first} to {as_of}", **files})
    (scores, forecast), *shadow_scored = [_joined([chunk[i] for chunk in chunks]) for i in range(len(models))]
    observability.count_scored(len(scores))
    name = write_scores(services.blobs, as_of, model.version, scores, forecast)
    shadow_summary = {}
    if shadow is not None:
        [(shadow_scores, shadow_forecast)] = shadow_scored
        shadow_name = write_scores(services.blobs, as_of, shadow.version, shadow_scores, shadow_forecast, SHADOW)
        shadow_summary = {"shadow_version": shadow.version, "shadow_scores_blob": f"{SCORES_CONTAINER}/{shadow_name}"}
    alerts = alerts_of_scores(services, scores.assign(As_Of=pd.Timestamp(as_of)), now, model.version)
    replaced = feedback_store.record_replacements(services.tables, in_cars, now)
    summary = {"as_of": as_of.isoformat(), "scored": len(scores), "alerts": len(alerts),
               "model_version": model.version, "scores_blob": f"{SCORES_CONTAINER}/{name}",
               "days_read": f"{first}..{as_of}", "replacements_labelled": replaced,
               "batteries_changed": changed, **shadow_summary, **files}  # fmt: skip
    return AlertBatch(alerts, summary)


def note_installed(services: Services, telemetry: pd.DataFrame, now: datetime, in_cars: dict[str, str]) -> int:
    """Tell the lifecycle the battery each car in `telemetry` (records as sent: preparation renames a reset
    battery) carries now, and add it to `in_cars` for the replacement labels; how many cars changed battery."""
    in_cars.update(batteries_in_cars(telemetry))
    return note_batteries(services, telemetry, now)


def _scored(model: BatteryForecaster, clean: pd.DataFrame, as_of: date, threshold: float
            ) -> tuple[pd.DataFrame, np.ndarray]:  # fmt: skip
    """One chunk's scores and their (n, 30) forecast (a matrix: the long rows would cost 30 ids a battery)."""
    scores, rows = score_fleet(model, clean, as_of, threshold=threshold)
    return scores, rows[DAILY_CYCLES].to_numpy(np.float64).reshape(len(scores), HORIZON_DAYS)


def _joined(parts: list[tuple[pd.DataFrame, np.ndarray]]) -> tuple[pd.DataFrame, np.ndarray]:
    """One model's chunks as one scores frame and its forecast."""
    return pd.concat([scores for scores, _ in parts], ignore_index=True), np.concatenate([f for _, f in parts])


def scoring_days(window_days: int) -> int:
    """Days of archive the batch score reads up to its as-of day: the model's window, and at least the
    in-service rule's (a battery silent for IN_SERVICE_DAYS is out of service)."""
    return max(window_days, IN_SERVICE_DAYS)


def compact_telemetry(services: Services) -> dict:
    """Compact the archive's finished days (before today on the app's clock) into one file each."""
    summary = compact_archive(services.blobs, services.clock().date(),
                              skip_unreadable=services.settings.archive_skip_unreadable)  # fmt: skip
    return summary.to_dict()


def submit_spark_batch_score(services: Services, **clients) -> AlertBatch:
    """With SPARK_TARGET set: submit the night's score as a Spark job (shared/spark/submit.py) instead.

    The job writes scores/date=<as_of>/spark-<model>/ in the storage account; it runs for minutes after
    this timer returns, so the night's alerts come from the streaming path and `alert_spark_scores`, not
    from this batch. What the in-process score does besides scoring stays here, as it needs no model: the
    window's batteries noted for the lifecycle and the replacement labels, a chunk of cars at a time.
    Databricks is called on the app's outbound session (services.gateway); `clients` go to `submit_score`.
    """
    from shared.core.windows import DEFAULT_WINDOW_DAYS
    from shared.spark.submit import score_arguments, submit_score

    settings, spark = services.settings, services.settings.spark
    now = services.clock()
    as_of = now.date() - timedelta(days=1)
    metadata = ModelRegistry(services.blobs).champion_metadata()
    if metadata is None:
        return AlertBatch([], {"scored": 0, "reason": "no champion model registered yet"})
    window_days = int(metadata.get("window_days", DEFAULT_WINDOW_DAYS))
    arguments = score_arguments(spark, as_of, metadata["version"], settings.alert_probability_threshold,
                                window_days + IN_SERVICE_DAYS)  # fmt: skip
    run = submit_score(spark, arguments, services.work_dir, **{"session": services.gateway, **clients})
    first = as_of - timedelta(days=scoring_days(window_days) - 1)
    window = download_archive(services.blobs, first, as_of, skip_unreadable=settings.archive_skip_unreadable)
    in_cars, changed = {}, 0
    for chunk in window.chunks_of_cars(settings.batch_score_chunk_batteries):
        changed += note_installed(services, chunk.frame, now, in_cars)
    replaced = feedback_store.record_replacements(services.tables, in_cars, now)
    scores_uri = arguments[arguments.index("--scores-out") + 1]
    return AlertBatch([], {"as_of": as_of.isoformat(), "scored": 0, "submitted": run,
                           "model_version": metadata["version"], "scores_uri": scores_uri,
                           "days_read": f"{first}..{as_of}", "replacements_labelled": replaced,
                           "batteries_changed": changed})  # fmt: skip


def champion_model(services: Services) -> BatteryForecaster | None:
    """The registry's champion, downloaded once per version into the work directory and kept loaded."""
    model_dir = ModelRegistry(services.blobs).download_champion(services.work_dir / "models")
    return None if model_dir is None else _load_cached(str(model_dir))


def shadow_model(services: Services) -> BatteryForecaster | None:
    """The registry's shadow (a candidate kept to be judged on matured outcomes), loaded like the champion."""
    model_dir = ModelRegistry(services.blobs).download_shadow(services.work_dir / "models")
    return None if model_dir is None else _load_cached(str(model_dir))


@functools.lru_cache(maxsize=4)
def _load_cached(model_dir: str) -> BatteryForecaster:
    return load_model(model_dir)
