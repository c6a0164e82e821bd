"""Model monitoring: how right the scores were, once their 30 days have passed, and how far the inputs drifted.

Every nightly score matures: HORIZON_DAYS days after the day it was scored on, the archive shows whether the
battery reached its rated cycles and what it really used each day. The functions here turn a day's stored
scores and the telemetry that followed into the accuracy table (per segment of the fleet), and compare the
model's input features with the distribution it was trained on (population stability index). Pure: frames
in, frames out; the monitor handler (shared/handlers/monitoring.py) reads and writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from shared.core.metrics import forecast_metrics, probability_metrics, reliability_table
from shared.core.risk import HORIZON_DAYS, PROBABILITY
from shared.core.telemetry import (
    BATTERY_ID,
    CAR_ID,
    DAILY_CYCLES,
    DATE,
    LIFETIME_CYCLES,
    PLAUSIBLE_RANGES,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
)

# The stored scores' forecast column (shared/adapters/score_store.py): the 30 forecast days of a battery.
FORECAST = "forecast_daily_cycles"

# --- the tables the monitor stores (shared/adapters/monitor_store.py) ---------------------------------

SCORED_ON = "Scored_On"  # the day the scores were computed as of (the scores' date= partition)
MATURED_ON = "Matured_On"  # the last day of the horizon: the scores are judged on telemetry up to it
MODEL_VERSION = "Model_Version"
ROLE = "Role"  # CHAMPION (its scores alerted) or SHADOW (scored beside it, never alerted)
SEGMENT_KIND = "Segment_Kind"  # ALL_SEGMENTS, or a car attribute among SEGMENT_KINDS
SEGMENT = "Segment"  # the attribute's value ("all" for the whole fleet)
BATTERIES = "Batteries"  # batteries whose outcome is known (scored, not censored, not already past rated)
POSITIVES = "Positives"  # of them, the ones that reached their rated cycles within the horizon
BRIER = "Brier"
RECALL = "Recall"  # at the alert threshold; NaN without positives
PRECISION = "Precision"  # at the alert threshold; NaN without alerts
AVERAGE_PRECISION = "Average_Precision"
NRMSE = "NRMSE"  # the daily-cycles forecast over the matured days, RMSE / range of the actual values
TOTAL_ERROR = "Total_Error"  # mean relative error of the 30-day total, batteries that reported every day
ALERTS = "Alerts"  # batteries at or above the threshold among all scored (alert volume), labelled or not

CHAMPION = "champion"
SHADOW = "shadow"
ROLES = (CHAMPION, SHADOW)
ALL_SEGMENTS = "all"
SEGMENT_COLUMNS = {"make": "Make", "region": "Region", "engine_type": "Engine_Type", "battery_model": "Battery_Model"}
SEGMENT_KINDS = tuple(SEGMENT_COLUMNS)  # the car attribute (column of the car table) behind each kind
ACCURACY_COLUMNS = [SCORED_ON, MATURED_ON, MODEL_VERSION, ROLE, SEGMENT_KIND, SEGMENT, BATTERIES, POSITIVES,
                    BRIER, RECALL, PRECISION, AVERAGE_PRECISION, NRMSE, ALERTS, TOTAL_ERROR]  # fmt: skip

# Reliability (calibration) bins of the same scores: equal-width probability bins.
BIN = "Bin"  # "0.0-0.1", ...
COUNT = "Count"
MEAN_PREDICTED = "Mean_Predicted"
OBSERVED_RATE = "Observed_Rate"
RELIABILITY_COLUMNS = [SCORED_ON, MODEL_VERSION, ROLE, SEGMENT_KIND, SEGMENT, BIN, COUNT, MEAN_PREDICTED,
                       OBSERVED_RATE]  # fmt: skip

# Input drift of the model's main features on a day, against the training reference.
DAY = "Day"
FEATURE = "Feature"
PSI = "PSI"
THRESHOLD = "Threshold"
DRIFTED = "Drifted"
RECORDS = "Records"  # recent daily records measured
DRIFT_COLUMNS = [DAY, MODEL_VERSION, FEATURE, PSI, THRESHOLD, DRIFTED, SEGMENT_KIND, SEGMENT, RECORDS]

# The monitor's retrain decision of a night.
REASON = "Reason"  # why it triggered, or why not ("" when nothing was wrong)
TRIGGERED = "Triggered"  # True: the retrain ran that night
COOLDOWN_UNTIL = "Cooldown_Until"  # no other trigger before this day (set by a trigger; NaT otherwise)
RETRAIN_OUTCOME = "Retrain_Outcome"  # the retrain's outcome (JSON text), empty when not triggered
RETRAIN_COLUMNS = [DAY, MODEL_VERSION, REASON, TRIGGERED, COOLDOWN_UNTIL, RETRAIN_OUTCOME]

# --- settings of the measures (their thresholds are app settings: shared/config/settings.py) ------------

DRIFT_FEATURES = (TRIP_MINUTES, TRIPS, DAILY_CYCLES)  # the daily inputs every forecaster's features derive from
REFERENCE_DAYS = 28  # the training data's last days that make the drift reference (the model's level window)
DRIFT_DAYS = 14  # the recent days compared with it: whole weeks, so weekday habits weigh as in the reference
# A segment's drift is measured only with this many recent records: below it, sampling noise alone reaches the
# threshold (a PSI over PSI_BINS bins of n records from an unchanged distribution is about PSI_BINS / n).
MIN_DRIFT_RECORDS = 300
PSI_BINS = 10  # quantile bins of the reference
PSI_FLOOR = 1e-4  # an empty bin's share, so the logarithm stays finite
JUDGED_DAYS = 7  # matured days pooled to judge a model: one day's fleet is a noisy sample
UNKNOWN_SEGMENT = "unknown"  # a car missing from the car table, or without the attribute


@dataclass(frozen=True)
class MaturedOutcomes:
    """What happened to the batteries scored on one day, row for row with the scores.

    label: reached rated cycles within the horizon; labelled: the outcome is known (reached, or reported on
    the horizon's last day below rated: the counter counts days it did not report, so that proves it did
    not); already_past: at or past rated when scored (trivially positive, counted apart as in the backtest).
    actual: (n, HORIZON_DAYS) daily cycles used, NaN on days not reported.
    """

    scores: pd.DataFrame
    forecast: np.ndarray
    actual: np.ndarray
    label: np.ndarray
    labelled: np.ndarray
    already_past: np.ndarray

    @property
    def judged(self) -> np.ndarray:
        return self.labelled & ~self.already_past


def matured_outcomes(
    scores: pd.DataFrame, forecast: np.ndarray, later: pd.DataFrame, scored_on: date
) -> MaturedOutcomes:
    """Join one day's scores (BATTERY_ID, PROBABILITY, LIFETIME_CYCLES, RATED_CYCLES rows, and their (n, 30)
    forecast) with the telemetry of the HORIZON_DAYS days after `scored_on` (raw archived records, any
    order; 12-hour rows add up; implausible values are left out, as preparation drops glitches)."""
    n = len(scores)
    row = pd.Index(scores[BATTERY_ID].astype(str)).get_indexer(later[BATTERY_ID].astype(str))
    offset = (later[DATE].dt.normalize() - pd.Timestamp(scored_on)).dt.days.to_numpy() - 1
    cycles = later[DAILY_CYCLES].to_numpy(np.float64, na_value=np.nan)
    lifetime = later[LIFETIME_CYCLES].to_numpy(np.float64, na_value=np.nan)
    plausible = np.ones(len(later), bool)
    for column in (DAILY_CYCLES, LIFETIME_CYCLES):
        low, high = PLAUSIBLE_RANGES[column]
        values = later[column].to_numpy(np.float64, na_value=np.nan)
        plausible &= (values >= low) & (values <= high)  # NaN compares False: a blank cell is left out too
    keep = (row >= 0) & (offset >= 0) & (offset < HORIZON_DAYS) & plausible
    cell = row[keep] * HORIZON_DAYS + offset[keep]
    reported = np.bincount(cell, minlength=n * HORIZON_DAYS).reshape(n, HORIZON_DAYS) > 0
    actual = np.bincount(cell, weights=cycles[keep], minlength=n * HORIZON_DAYS).reshape(n, HORIZON_DAYS)
    actual[~reported] = np.nan
    highest = np.full(n, -np.inf)
    np.maximum.at(highest, row[keep], lifetime[keep])
    rated = scores[RATED_CYCLES].to_numpy(np.float64)
    already_past = scores[LIFETIME_CYCLES].to_numpy(np.float64) >= rated
    label = (highest >= rated) | already_past
    return MaturedOutcomes(
        scores=scores.reset_index(drop=True),
        forecast=np.asarray(forecast, np.float64).reshape(n, HORIZON_DAYS),
        actual=actual,
        label=label,
        labelled=label | reported[:, -1],
        already_past=already_past,
    )


def accuracy_tables(outcomes: MaturedOutcomes, segments: pd.DataFrame, threshold: float, *, scored_on: date,
                    model_version: str, role: str) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """(ACCURACY_COLUMNS, RELIABILITY_COLUMNS) frames of one model's matured scores: the fleet, then every
    value of each car attribute `segments` has (Car_ID + columns named by SEGMENT_COLUMNS)."""
    probability = outcomes.scores[PROBABILITY].to_numpy(np.float64)
    groups = [(*key.split("=", 1), member) for key, member in _segment_members(outcomes.scores, segments)]
    matured_on = pd.Timestamp(scored_on) + pd.Timedelta(days=HORIZON_DAYS)
    accuracy, reliability = [], []
    for kind, segment, member in groups:
        judged = member & outcomes.judged
        label = outcomes.label[judged]
        scored = probability_metrics(probability[judged], label, threshold)
        known = np.isfinite(outcomes.actual[member]).any()
        error = forecast_metrics(outcomes.actual[member], outcomes.forecast[member]) if known else {}
        key = {SCORED_ON: pd.Timestamp(scored_on), MODEL_VERSION: model_version, ROLE: role, SEGMENT_KIND: kind,
               SEGMENT: segment}  # fmt: skip
        accuracy.append({**key, MATURED_ON: matured_on, BATTERIES: int(judged.sum()), POSITIVES: int(label.sum()),
                         BRIER: scored["brier"], RECALL: scored["recall_at_threshold"],
                         PRECISION: scored["precision_at_threshold"], AVERAGE_PRECISION: scored["average_precision"],
                         NRMSE: error.get("nrmse"), ALERTS: int((probability[member] >= threshold).sum()),
                         TOTAL_ERROR: error.get("total_error")})  # fmt: skip
        bins = reliability_table(probability[judged], label)
        reliability += [{**key, BIN: b["bin"], COUNT: b["count"], MEAN_PREDICTED: b["mean_predicted"],
                         OBSERVED_RATE: b["observed_rate"]} for b in bins]  # fmt: skip
    accuracy_frame = pd.DataFrame(accuracy, columns=ACCURACY_COLUMNS).astype({m: np.float64 for m in _MEASURES})
    reliability_frame = pd.DataFrame(reliability, columns=RELIABILITY_COLUMNS)
    return accuracy_frame, reliability_frame.astype({MEAN_PREDICTED: np.float64, OBSERVED_RATE: np.float64})


_MEASURES = (BRIER, RECALL, PRECISION, AVERAGE_PRECISION, NRMSE, TOTAL_ERROR)


# --- input drift ----------------------------------------------------------------------------------------


def feature_reference(daily: pd.DataFrame, segments: pd.DataFrame | None = None, days: int = REFERENCE_DAYS,
                      bins: int = PSI_BINS) -> dict:  # fmt: skip
    """The distribution of DRIFT_FEATURES over the last `days` days of clean daily records (training data),
    for the fleet and for each segment of `segments` (Car_ID + SEGMENT_COLUMNS' columns) with at least
    MIN_DRIFT_RECORDS records: {"<kind>=<segment>": {feature: {"edges": inner quantile edges, "shares":
    share of records per bin}}}, JSON-ready, so it travels in the model's metadata. Per segment, because a
    change in one region is a fraction of the fleet's records and hardly moves the fleet's distribution."""
    recent = daily[daily[DATE] > daily[DATE].max() - pd.Timedelta(days=days)]
    reference = {}
    for key, member in _segment_members(recent, segments):
        rows = recent[member]
        if key != _FLEET_KEY and len(rows) < MIN_DRIFT_RECORDS:
            continue
        reference[key] = {}
        for feature in DRIFT_FEATURES:
            values = _finite(rows[feature])
            edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])) if len(values) else values
            reference[key][feature] = {"edges": edges.tolist(), "shares": _shares(values, edges).tolist()}
    return reference


def population_stability(reference: dict, recent: pd.DataFrame, threshold: float,
                         segments: pd.DataFrame | None = None) -> pd.DataFrame:  # fmt: skip
    """PSI of each referenced feature's recent raw records (implausible values left out), for the fleet and
    each referenced segment, against the reference bins: sum over bins of (recent - reference) × ln(recent /
    reference); FEATURE, PSI, THRESHOLD, DRIFTED (PSI ≥ threshold), SEGMENT_KIND, SEGMENT, RECORDS rows. A
    segment with fewer than MIN_DRIFT_RECORDS recent records has PSI NaN and is not drifted."""
    rows = []
    members = dict(_segment_members(recent, segments))
    for key, features in reference.items():
        kind, _, segment = key.partition("=")
        member = members.get(key, np.zeros(len(recent), bool))
        for feature, bins in features.items():
            low, high = PLAUSIBLE_RANGES[feature]
            values = _finite(recent.loc[member, feature]) if feature in recent else np.array([])
            values = values[(values >= low) & (values <= high)]
            expected = np.maximum(np.asarray(bins["shares"], np.float64), PSI_FLOOR)
            actual = np.maximum(_shares(values, np.asarray(bins["edges"], np.float64)), PSI_FLOOR)
            enough = len(values) >= (MIN_DRIFT_RECORDS if key != _FLEET_KEY else 1)
            psi = float(np.sum((actual - expected) * np.log(actual / expected))) if enough else np.nan
            rows.append({FEATURE: feature, PSI: psi, THRESHOLD: threshold, DRIFTED: bool(psi >= threshold),
                         SEGMENT_KIND: kind, SEGMENT: segment, RECORDS: len(values)})  # fmt: skip
    return pd.DataFrame(rows, columns=[FEATURE, PSI, THRESHOLD, DRIFTED, SEGMENT_KIND, SEGMENT, RECORDS])


_FLEET_KEY = f"{ALL_SEGMENTS}={ALL_SEGMENTS}"


def _segment_members(records: pd.DataFrame, segments: pd.DataFrame | None) -> list[tuple[str, np.ndarray]]:
    """("<kind>=<segment>", row mask) for the fleet and every segment value of the records' cars."""
    members = [(_FLEET_KEY, np.ones(len(records), bool))]
    if segments is None or CAR_ID not in records:
        return members
    cars = records[[CAR_ID]].astype(str).merge(segments.astype("string"), on=CAR_ID, how="left")
    for kind, column in SEGMENT_COLUMNS.items():
        if column in cars:
            values = cars[column].fillna(UNKNOWN_SEGMENT).to_numpy(str)
            members += [(f"{kind}={value}", values == value) for value in sorted(set(values))]
    return members


def _finite(column: pd.Series) -> np.ndarray:
    values = column.to_numpy(np.float64, na_value=np.nan)
    return values[np.isfinite(values)]


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


# --- judging a model and deciding to retrain ---------------------------------------------------------


def pooled_metrics(accuracy: pd.DataFrame) -> dict:
    """One model's fleet-wide matured figures over the rows given, in the backtest's metric names (so the
    champion rule reads them): brier and the rates weighted by batteries judged, nrmse the mean."""
    fleet = accuracy[accuracy[SEGMENT_KIND] == ALL_SEGMENTS]
    weights = fleet[BATTERIES].to_numpy(np.float64)
    pooled = {"days": len(fleet), "batteries": int(weights.sum())}
    for name, column in (("brier", BRIER), ("average_precision", AVERAGE_PRECISION), ("recall_at_threshold", RECALL),
                         ("precision_at_threshold", PRECISION)):  # fmt: skip
        values = fleet[column].to_numpy(np.float64)
        known = np.isfinite(values) & (weights > 0)
        pooled[name] = float(np.average(values[known], weights=weights[known])) if known.any() else None
    for name, column in (("nrmse", NRMSE), ("total_error", TOTAL_ERROR)):
        values = fleet[column].to_numpy(np.float64)
        pooled[name] = float(np.nanmean(values)) if np.isfinite(values).any() else None
    return pooled


def retrain_reasons(matured: dict, backtest: dict, drift: pd.DataFrame, margin: float) -> list[str]:
    """Why the champion should be retrained, in words (empty: it should not): its pooled matured Brier or 30-day
    total error more than `margin` (relative) above its backtest figure, or a feature's PSI at its threshold
    in a segment. Not NRMSE: divided by the range of the values, it is smaller over the backtest's many days
    than over a week of matured days for the same errors, so the two do not compare."""
    reasons = []
    for name, title in (("brier", "Brier"), ("total_error", "30-day total error")):
        now, then = matured.get(name), backtest.get(name)
        if now is not None and then is not None and now > then * (1.0 + margin):
            reasons.append(f"matured {title} {now:.4g} over {matured['days']} days is more than {margin:.0%} above "
                           f"the backtest's {then:.4g}")  # fmt: skip
    for row in drift[drift[DRIFTED]].itertuples():
        where = "the fleet" if row.Segment_Kind == ALL_SEGMENTS else f"{row.Segment_Kind} {row.Segment}"
        reasons.append(f"input drift in {where}: {row.Feature} PSI {row.PSI:.3g} ≥ {row.Threshold:g}")
    return reasons


def cooldown_until(decisions: pd.DataFrame) -> date | None:
    """The end of the cooldown the last triggered retrain set (RETRAIN_COLUMNS history), or None."""
    triggered = decisions[decisions[TRIGGERED].astype(bool)]
    return None if triggered.empty else pd.Timestamp(triggered[COOLDOWN_UNTIL].max()).date()
