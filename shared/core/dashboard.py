"""The operations dashboard's figures: pure functions over the frames the stores give (no I/O here).

Why separate from the page: the browser test and the unit tests check the same numbers the page shows,
computed once here from small frames (alert rows, the latest scores, the car segments), never from the
fleet's raw telemetry, so the page stays fast at 100,000 cars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from shared.core.monitoring import (
    ALL_SEGMENTS,
    AVERAGE_PRECISION,
    BATTERIES,
    BRIER,
    DAY,
    DRIFTED,
    FEATURE,
    MODEL_VERSION,
    NRMSE,
    POSITIVES,
    PRECISION,
    PSI,
    RECALL,
    RECORDS,
    ROLE,
    SCORED_ON,
    SEGMENT,
    SEGMENT_COLUMNS,
    SEGMENT_KIND,
    THRESHOLD,
    TOTAL_ERROR,
)
from shared.core.risk import DAYS_TO_RATED_LIFE, PROBABILITY
from shared.core.telemetry import BATTERY_ID, CAR_ID

# The alert rows' columns as the alert store reads them for the dashboard (alert_store.read_alert_rows).
ALERT_TYPE, SEVERITY, CREATED_AT, STATE = "type", "severity", "created_at", "state"
ALERT_ROW_COLUMNS = [CAR_ID, ALERT_TYPE, SEVERITY, CREATED_AT, STATE]
SEGMENT_ATTRIBUTES = tuple(SEGMENT_COLUMNS.values())  # the monitor's segments: Make, Region, Engine_Type, ...
ACCURACY_METRICS = (BRIER, RECALL, PRECISION, AVERAGE_PRECISION, NRMSE, TOTAL_ERROR)
RISK_BINS = 10  # the fleet's risk distribution: probability in tenths
HIGHEST_RISK_ROWS = 20


@dataclass(frozen=True)
class DeliveryHealth:
    """What happened to the alerts and the events of the dashboard's window, from where each is recorded:
    alert states (the alert store), poisoned alert messages (the poison queue), dead-lettered events, malformed
    alert messages, scoring errors and parked requests given up on (the dead-letter container, per arrival
    day), parked batches waiting (the parked container)."""

    alert_states: dict[str, int] = field(default_factory=dict)
    poisoned_messages: int = 0
    dead_lettered_events: int = 0
    dead_lettered_alert_messages: int = 0  # queued alerts that were not an alert (deadletter/alerts/)
    scoring_error_batches: int = 0  # batches with batteries the endpoint could not score (deadletter/scoring/)
    dead_lettered_parked: int = 0
    parked_batches: int = 0

    def rows(self) -> list[tuple[str, str, int]]:
        """(key, label, count) in the order the page shows them; key is the page's data-metric name."""
        states = self.alert_states
        return [
            ("delivered", "alerts delivered", states.get("delivered", 0)),
            ("suppressed", "alerts suppressed (cooldown, owner's answer)", states.get("suppressed", 0)),
            ("rejected", "alerts rejected by the head unit or channel", states.get("rejected", 0)),
            (
                "failed_or_unknown",
                "alerts failed or unknown (retrying or given up)",
                states.get("failed", 0) + states.get("unknown", 0),
            ),
            (
                "waiting",
                "alerts queued, held or being delivered",
                states.get("queued", 0) + states.get("held", 0) + states.get("delivering", 0),
            ),
            (
                "ended",
                "alerts expired, superseded, retracted or resolved",
                sum(states.get(name, 0) for name in ("expired", "superseded", "retracted", "resolved")),
            ),
            ("poisoned", "alert messages poisoned (maintenance-alerts-poison)", self.poisoned_messages),
            ("dead_lettered", "telemetry events dead-lettered", self.dead_lettered_events),
            (
                "alert_messages_dead_lettered",
                "malformed alert messages dead-lettered",
                self.dead_lettered_alert_messages,
            ),
            ("scoring_errors", "batches with per-battery scoring errors", self.scoring_error_batches),
            ("parked_dead_lettered", "parked batches dead-lettered", self.dead_lettered_parked),
            ("parked", "telemetry batches parked, waiting to be re-scored", self.parked_batches),
        ]


def alerts_per_day(alerts: pd.DataFrame) -> pd.DataFrame:
    """Alerts per creation day and (type, severity): a frame indexed by day, one column per pair, zeros
    where none; sorted by day and column. Empty frame for no alerts."""
    if alerts.empty:
        return pd.DataFrame()
    day = pd.to_datetime(alerts[CREATED_AT], utc=True).dt.strftime("%Y-%m-%d").rename("day")
    counts = alerts.groupby([day, alerts[ALERT_TYPE], alerts[SEVERITY]]).size()
    table = counts.unstack([ALERT_TYPE, SEVERITY], fill_value=0).sort_index().sort_index(axis=1)
    return table.astype(np.int64)


def alert_state_counts(alerts: pd.DataFrame) -> dict[str, int]:
    """How many alerts are in each state."""
    return {str(state): int(count) for state, count in alerts[STATE].value_counts().sort_index().items()}


def risk_distribution(scores: pd.DataFrame, bins: int = RISK_BINS) -> pd.DataFrame:
    """Batteries per failure-probability bin [lower, upper) (the last bin includes 1.0): columns lower,
    upper, batteries."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    probability = scores[PROBABILITY].to_numpy(dtype=np.float64)
    probability = probability[np.isfinite(probability)]
    counts = np.bincount(np.clip((probability * bins).astype(np.int64), 0, bins - 1), minlength=bins)
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "batteries": counts.astype(np.int64)})


def highest_risk(scores: pd.DataFrame, rows: int = HIGHEST_RISK_ROWS) -> pd.DataFrame:
    """The `rows` batteries most likely to reach rated life within 30 days, highest first (ties: fewer
    days to rated life, then battery id)."""
    ranked = scores.assign(_days=scores[DAYS_TO_RATED_LIFE].fillna(np.inf))
    ranked = ranked.sort_values([PROBABILITY, "_days", BATTERY_ID], ascending=[False, True, True], kind="stable")
    return ranked.drop(columns="_days").head(rows).reset_index(drop=True)


def segment_alert_rates(alerts: pd.DataFrame, segments: pd.DataFrame) -> pd.DataFrame:
    """Per segment (each of Make, Region, Engine_Type and its values): cars, alerts, cars alerted and the
    share of cars alerted. `segments` has Car_ID and the attributes; alerts of cars without a segment row
    count under "unknown". Columns attribute, value, cars, alerts, cars_alerted, alerted_share."""
    columns = ["attribute", "value", "cars", "alerts", "cars_alerted", "alerted_share"]
    if segments.empty:
        return pd.DataFrame(columns=columns)
    cars = segments.drop_duplicates(CAR_ID).set_index(CAR_ID)
    per_car = alerts.groupby(CAR_ID).size() if not alerts.empty else pd.Series(dtype=np.int64)
    rows = []
    for attribute in (name for name in SEGMENT_ATTRIBUTES if name in cars.columns):
        value = cars[attribute].astype("string").fillna("unknown")
        fleet = value.value_counts()
        alerted_value = value.reindex(per_car.index).fillna("unknown")
        alert_count = per_car.groupby(alerted_value).sum()
        alerted_cars = per_car.groupby(alerted_value).size()
        for name in sorted(set(fleet.index) | set(alert_count.index)):
            n_cars = int(fleet.get(name, 0))
            n_alerted = int(alerted_cars.get(name, 0))
            rows.append(
                (
                    attribute,
                    str(name),
                    n_cars,
                    int(alert_count.get(name, 0)),
                    n_alerted,
                    n_alerted / n_cars if n_cars else float("nan"),
                )
            )
    return pd.DataFrame(rows, columns=columns)


def car_history_days(as_of: date, days: int) -> tuple[date, date]:
    """The first and last day of a car lookup's telemetry: the `days` days up to `as_of`."""
    return (pd.Timestamp(as_of) - pd.Timedelta(days=days - 1)).date(), as_of


def model_summary(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per model (champion and shadows), its matured accuracy over the whole fleet pooled across the scored
    days shown (batteries-weighted mean of each metric), with the days judged and the last one; the
    champion first, then by version. Columns Role, Model_Version, Days, Last_Scored_On, Batteries, Positives
    and ACCURACY_METRICS."""
    fleet = accuracy[accuracy[SEGMENT_KIND] == ALL_SEGMENTS]
    columns = [ROLE, MODEL_VERSION, "Days", "Last_Scored_On", BATTERIES, POSITIVES, *ACCURACY_METRICS]
    if fleet.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (role, version), group in fleet.groupby([ROLE, MODEL_VERSION], sort=False):
        weights = group[BATTERIES].to_numpy(dtype=np.float64)
        means = {
            metric: _weighted_mean(group[metric].to_numpy(dtype=np.float64), weights) for metric in ACCURACY_METRICS
        }
        last = pd.Timestamp(group[SCORED_ON].max()).strftime("%Y-%m-%d")
        rows.append(
            {
                ROLE: role,
                MODEL_VERSION: version,
                "Days": group[SCORED_ON].nunique(),
                "Last_Scored_On": last,
                BATTERIES: int(group[BATTERIES].sum()),
                POSITIVES: int(group[POSITIVES].sum()),
                **means,
            }
        )
    summary = pd.DataFrame(rows, columns=columns)
    order = summary[ROLE].map({"champion": 0}).fillna(1)
    return summary.assign(_order=order).sort_values(["_order", MODEL_VERSION]).drop(columns="_order")


def accuracy_over_time(accuracy: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric of the whole fleet per scored day (rows, "YYYY-MM-DD") and model (columns "role
    version"); NaN where a model has no figure that day."""
    fleet = accuracy[accuracy[SEGMENT_KIND] == ALL_SEGMENTS]
    if fleet.empty:
        return pd.DataFrame()
    day = pd.to_datetime(fleet[SCORED_ON]).dt.strftime("%Y-%m-%d")
    model = fleet[ROLE].astype(str) + " " + fleet[MODEL_VERSION].astype(str)
    return fleet.groupby([day.rename("day"), model.rename("model")])[metric].mean().unstack("model").sort_index()


def latest_drift(drift: pd.DataFrame) -> pd.DataFrame:
    """The newest day's drift over the whole fleet, per feature (Feature, PSI, Threshold, Drifted, Day,
    Model_Version), the most drifted first."""
    fleet = drift[drift[SEGMENT_KIND] == ALL_SEGMENTS]
    if fleet.empty:
        return fleet
    newest = fleet[pd.to_datetime(fleet[DAY]) == pd.to_datetime(fleet[DAY]).max()]
    shown = newest[[FEATURE, PSI, THRESHOLD, DRIFTED, DAY, MODEL_VERSION]]
    return shown.sort_values(PSI, ascending=False, kind="stable").reset_index(drop=True)


def drifted_segments(drift: pd.DataFrame) -> pd.DataFrame:
    """The segments (not the whole fleet) whose feature drifted past the threshold on the newest day: a
    region's change can drift it while the fleet's distribution hardly moves. Segment_Kind, Segment,
    Feature, PSI, Threshold, Records; the most drifted first."""
    if drift.empty:
        return drift
    newest = drift[pd.to_datetime(drift[DAY]) == pd.to_datetime(drift[DAY]).max()]
    shown = newest[(newest[SEGMENT_KIND] != ALL_SEGMENTS) & newest[DRIFTED].astype(bool)]
    columns = [SEGMENT_KIND, SEGMENT, FEATURE, PSI, THRESHOLD, RECORDS]
    return shown[columns].sort_values(PSI, ascending=False, kind="stable").reset_index(drop=True)


def drift_over_time(drift: pd.DataFrame) -> pd.DataFrame:
    """The whole fleet's PSI per day (rows, "YYYY-MM-DD") and feature (columns)."""
    fleet = drift[drift[SEGMENT_KIND] == ALL_SEGMENTS]
    if fleet.empty:
        return pd.DataFrame()
    day = pd.to_datetime(fleet[DAY]).dt.strftime("%Y-%m-%d").rename("day")
    return fleet.groupby([day, fleet[FEATURE]])[PSI].mean().unstack(FEATURE).sort_index()


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    known = np.isfinite(values) & (weights > 0)
    return float(np.average(values[known], weights=weights[known])) if known.any() else float("nan")
