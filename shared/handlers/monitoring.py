"""The nightly model monitor: judge matured scores, measure input drift, retrain when the champion slips.

Every night, after the batch score (MONITOR_SCHEDULE):

1. Matured accuracy. The scores of day D mature on D + 30: the archive then shows which batteries reached
   their rated cycles and what they used each day. Each stored model's scores (champion and shadow,
   shared/adapters/score_store.py) of the matured days not judged yet are joined with that telemetry and
   scored per segment of the fleet (shared/core/monitoring.py), into the monitor store
   (shared/adapters/monitor_store.py). At most CATCH_UP_DAYS days a night, so a monitor that was off for a
   while catches up in bounded time and memory.
2. Drift: the last week's daily inputs against the champion's training reference (PSI, MONITOR_PSI_THRESHOLD).
3. The shadow: once it has JUDGED_DAYS matured days in common with the champion, the champion rule decides
   on those figures whether it replaces the champion (the registry logs the decision).
4. The trigger: the champion's pooled matured Brier or NRMSE more than MONITOR_DEGRADATION_MARGIN above its
   backtest's, or drift, retrains now (nightly_retrain: locally, or the AutoML job in Azure ML), unless a
   retrain it triggered is less than MONITOR_RETRAIN_COOLDOWN_DAYS old. The decision is stored either way.
5. The champion's matured figures and the PSIs go to its MLflow training run as metrics, by day.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import date, timedelta

import pandas as pd
from mlflow.exceptions import MlflowException

from shared.adapters import monitor_store
from shared.adapters.archive import read_archive
from shared.adapters.registry import ModelRegistry
from shared.adapters.score_store import read_scores
from shared.adapters.tracking import log_run_metrics
from shared.bootstrap import Services
from shared.core import monitoring as m
from shared.core.risk import HORIZON_DAYS
from shared.core.telemetry import BATTERY_ID, CAR_ID, DAILY_CYCLES, DATE, LIFETIME_CYCLES
from shared.handlers.nightly import nightly_retrain
from shared.models.champion import model_metrics

log = logging.getLogger(__name__)

CATCH_UP_DAYS = 7  # matured days judged in one night at most
_LATER_COLUMNS = [DATE, BATTERY_ID, DAILY_CYCLES, LIFETIME_CYCLES]


def nightly_monitor(services: Services) -> dict:
    """Run the night's monitoring (module docstring) as of yesterday; the summary of what it found and did."""
    settings, blobs = services.settings, services.blobs
    last_day = services.clock().date() - timedelta(days=1)
    registry = ModelRegistry(blobs)
    champion = registry.champion()
    if champion is None:
        return {"monitored": None, "reason": "no champion model registered yet"}
    judged = judge_matured_days(services, last_day)
    metadata = registry.metadata(champion.version)
    drift = measure_drift(services, metadata, last_day)
    history = monitor_store.read_accuracy(blobs, last_day - timedelta(days=HORIZON_DAYS + 2 * m.JUDGED_DAYS))
    champion_matured = m.pooled_metrics(_latest_days(history, champion.version))
    drifted = [f"{row.Segment_Kind}={row.Segment}: {row.Feature}" for row in drift[drift[m.DRIFTED]].itertuples()]
    summary = {"as_of": last_day.isoformat(), "champion": champion.version, "judged": judged, "drifted": drifted,
               "champion_matured": champion_matured}  # fmt: skip
    summary["shadow"] = judge_shadow(registry, history, champion.version, champion_matured)
    reasons = m.retrain_reasons(champion_matured, model_metrics(metadata, champion.version), drift,
                                settings.monitor_degradation_margin)  # fmt: skip
    summary["retrain"] = decide_retrain(services, last_day, champion.version, reasons)
    summary["mlflow"] = _track(champion.record.get("mlflow_run_id"), champion_matured, drift, last_day)
    return summary


def judge_matured_days(services: Services, last_day: date) -> list[str]:
    """Store the matured accuracy of every model's scores not judged yet; the blobs written."""
    blobs, threshold = services.blobs, services.settings.alert_probability_threshold
    newest = last_day - timedelta(days=HORIZON_DAYS)
    done = monitor_store.scored_days_stored(blobs)
    todo = {}
    for offset in range(CATCH_UP_DAYS - 1, -1, -1):
        day = newest - timedelta(days=offset)
        stored = [scored for scored in read_scores(blobs, day) if (day, scored.version) not in done]
        if stored:
            todo[day] = stored
    if not todo:
        return []
    first, last = min(todo) + timedelta(days=1), max(todo) + timedelta(days=HORIZON_DAYS)
    later = read_archive(blobs, first, last, columns=_LATER_COLUMNS,
                         skip_unreadable=services.settings.archive_skip_unreadable).frame  # fmt: skip
    segments = monitor_store.read_car_segments(blobs)
    written = []
    for day, stored in todo.items():
        for scored in stored:
            outcomes = m.matured_outcomes(scored.scores, scored.forecast, later, day)
            accuracy, reliability = m.accuracy_tables(outcomes, segments, threshold, scored_on=day,
                                                      model_version=scored.version, role=scored.role)  # fmt: skip
            written.append(monitor_store.write_accuracy(blobs, day, scored.version, accuracy, reliability))
    return written


def measure_drift(services: Services, metadata: dict, last_day: date) -> pd.DataFrame:
    """The PSI of the champion's inputs over the last DRIFT_DAYS days, stored; empty for a model trained before
    it kept a reference (no drift is claimed then)."""
    reference = metadata.get("input_reference")
    if not reference:
        return pd.DataFrame(columns=m.DRIFT_COLUMNS).astype({m.DRIFTED: bool})
    recent = read_archive(services.blobs, last_day - timedelta(days=m.DRIFT_DAYS - 1), last_day,
                          columns=[DATE, BATTERY_ID, CAR_ID, *m.DRIFT_FEATURES],
                          skip_unreadable=services.settings.archive_skip_unreadable).frame  # fmt: skip
    drift = m.population_stability(reference, recent, services.settings.monitor_psi_threshold,
                                   monitor_store.read_car_segments(services.blobs))  # fmt: skip
    drift = drift.assign(**{m.DAY: pd.Timestamp(last_day), m.MODEL_VERSION: metadata["version"]})[m.DRIFT_COLUMNS]
    monitor_store.write_drift(services.blobs, last_day, drift)
    return drift


def judge_shadow(registry: ModelRegistry, history: pd.DataFrame, champion: str, champion_matured: dict) -> dict | None:
    """Compare the shadow with the champion on their latest JUDGED_DAYS common matured days; promote it if the
    champion rule says so. None without a shadow."""
    shadow = registry.shadow_version()
    if shadow is None:
        return None
    common = sorted(set(_days_of(history, shadow)) & set(_days_of(history, champion)))[-m.JUDGED_DAYS :]
    shadow_matured = m.pooled_metrics(history[history[m.SCORED_ON].isin(common) & (history[m.MODEL_VERSION] == shadow)])
    champion_common = m.pooled_metrics(history[history[m.SCORED_ON].isin(common)
                                               & (history[m.MODEL_VERSION] == champion)])  # fmt: skip
    verdict = {"version": shadow, "common_days": len(common), "matured": shadow_matured,
               "champion_on_common_days": champion_common}  # fmt: skip
    comparable = all(figures.get(name) is not None for figures in (shadow_matured, champion_common)
                     for name in (registry.rule.primary, registry.rule.secondary))  # fmt: skip
    if len(common) < m.JUDGED_DAYS or not comparable:
        return {**verdict, "decided": False, "reason": f"{len(common)} of {m.JUDGED_DAYS} common matured days"}
    decision = registry.promote_shadow_if_better(shadow_matured, champion_common)
    return {**verdict, "decided": True, "promoted": decision.promoted, "reason": decision.reason}


def decide_retrain(services: Services, last_day: date, champion: str, reasons: list[str]) -> dict:
    """Retrain now if there are reasons and no cooldown; store the decision (day, reason, triggered, cooldown)."""
    cooldown = m.cooldown_until(monitor_store.read_retrain_decisions(services.blobs))
    reason = "; ".join(reasons)
    triggered = bool(reasons) and (cooldown is None or last_day >= cooldown)
    outcome: dict = {}
    until = None
    if triggered:
        outcome = nightly_retrain(services)
        until = last_day + timedelta(days=services.settings.monitor_retrain_cooldown_days)
    elif reasons:
        reason = f"{reason}; not retrained: cooldown until {cooldown}"
    decision = pd.DataFrame([{m.DAY: pd.Timestamp(last_day), m.MODEL_VERSION: champion, m.REASON: reason,
                              m.TRIGGERED: triggered, m.COOLDOWN_UNTIL: pd.Timestamp(until) if until else pd.NaT,
                              m.RETRAIN_OUTCOME: json.dumps(outcome, default=str) if outcome else ""}])  # fmt: skip
    monitor_store.write_retrain_decision(services.blobs, decision)
    return {"triggered": triggered, "reason": reason, "cooldown_until": None if until is None else until.isoformat(),
            "outcome": outcome}  # fmt: skip


def _latest_days(history: pd.DataFrame, version: str) -> pd.DataFrame:
    """The model's accuracy rows of its latest JUDGED_DAYS matured days."""
    days = _days_of(history, version)[-m.JUDGED_DAYS :]
    return history[(history[m.MODEL_VERSION] == version) & history[m.SCORED_ON].isin(days)]


def _days_of(history: pd.DataFrame, version: str) -> list[pd.Timestamp]:
    return sorted(set(history.loc[history[m.MODEL_VERSION] == version, m.SCORED_ON]))


def _track(run_id: str | None, matured: dict, drift: pd.DataFrame, last_day: date) -> str:
    """Log the night's figures on the champion's MLflow run; what happened, in words (never raises: the
    monitoring is stored in Blob whatever MLflow says)."""
    if not run_id:
        return "no MLflow run recorded for the champion"
    metrics = {f"matured_{name}": value for name, value in matured.items()
               if name not in ("days", "batteries") and value is not None}  # fmt: skip
    fleet = drift[(drift[m.SEGMENT_KIND] == m.ALL_SEGMENTS) & drift[m.PSI].notna()]
    metrics |= {f"psi_{row.Feature}": row.PSI for row in fleet.itertuples()}
    metrics["psi_max_segment"] = float(drift[m.PSI].max()) if drift[m.PSI].notna().any() else None
    metrics = {name: value for name, value in metrics.items() if value is not None}
    try:
        log_run_metrics(run_id, metrics, step=last_day.toordinal(), environ=os.environ)
    except MlflowException as error:
        log.warning("monitoring metrics not logged to MLflow run %s: %s", run_id, error)
        return f"not logged: {error}"
    return f"{len(metrics)} metrics logged to run {run_id}"
