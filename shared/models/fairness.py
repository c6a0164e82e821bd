"""Fairness: does the alert treat every kind of car alike? Measured on the backtest, per car group.

The backtest's evaluation outcomes (one row per battery and origin: did it reach rated life within 30
days, would it have been alerted) are joined with the car table, and for each of Make, Region,
Engine_Type and a model-year band fairlearn's `MetricFrame` gives the alert's recall (share of failing
batteries warned), precision, false-positive rate and selection rate per group. A gap is the largest
minus the smallest group value; a gap over its limit (default: recall 0.05, i.e. one group's failing
batteries warned 5 points less often than another's) beyond sampling noise (below) is flagged, and
`train` warns about it.

Why it matters here: in the cold region batteries wear much faster from the first hard frost
(simulation.py). A model that cannot see the region forecasts a Nordic battery's first frost weeks like
everyone's, under-forecasts them, and warns its owner late: a lower Nordic recall.

Noise, and how the report keeps it apart from bias:
- Groups with fewer than MIN_GROUP_POSITIVES failing batteries are reported but left out of the gaps:
  a recall over five batteries moves 20 points with one of them.
- Each gap (highest minus lowest group) comes with a BOOTSTRAP_CONFIDENCE interval from resampling CARS
  (one car's batteries and origins rise and fall together, so they are resampled as one), and a gap
  counts as exceeding its limit only when the whole interval is above it. A recall is a share of a few
  hundred failing batteries at most, so with five groups the largest minus the smallest is several
  points even when the model treats every group alike; without the interval an unbiased model would be
  flagged on most fleets, and a warning nobody can act on would teach people to ignore the real ones.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.core.telemetry import CAR_ID, InputError

ATTRIBUTES = ("Make", "Region", "Engine_Type", "Model_Year_Band")
METRICS = ("recall", "precision", "false_positive_rate", "selection_rate")
DEFAULT_LIMITS = {"recall": 0.05}
MIN_GROUP_POSITIVES = 20
MODEL_YEAR_BAND_YEARS = 3
BOOTSTRAP_REPLICATES = 1000
BOOTSTRAP_CONFIDENCE = 0.90
BOOTSTRAP_SEED = 0  # the same outcomes always give the same interval


@dataclass(frozen=True)
class FairnessReport:
    """`groups`: one row per (attribute, group) with count, positives, the METRICS and `judged` (enough
    positives to count in the gaps). `gaps`: one row per (attribute, metric) with the gap, its bootstrap
    interval (`gap_low`, `gap_high`), the lowest and highest group, the limit (NaN = none) and whether the
    gap exceeds it (the whole interval above the limit)."""

    groups: pd.DataFrame
    gaps: pd.DataFrame

    @property
    def exceeded(self) -> pd.DataFrame:
        return self.gaps[self.gaps["exceeded"]]

    def warnings(self) -> list[str]:
        """One sentence per gap over its limit, for stderr and the log."""
        return [
            f"fairness: {row.metric} gap {row.gap:.3f} across {row.attribute} ({row.lowest} {row.lowest_value:.3f}"
            f" vs {row.highest} {row.highest_value:.3f}) exceeds the limit {row.limit:g}"
            f" ({BOOTSTRAP_CONFIDENCE:.0%} interval {row.gap_low:.3f}-{row.gap_high:.3f})"
            for row in self.exceeded.itertuples()
        ]

    def to_dict(self) -> dict:
        """JSON-ready (metadata.json, MLflow)."""
        return {"groups": _records(self.groups), "gaps": _records(self.gaps),
                "min_group_positives": MIN_GROUP_POSITIVES, "confidence": BOOTSTRAP_CONFIDENCE}  # fmt: skip

    def to_markdown(self) -> str:
        return fairness_markdown(self.to_dict())


def fairness_markdown(record: Mapping) -> str:
    """A stored fairness record (`FairnessReport.to_dict`, as in metadata.json) as Markdown tables."""
    confidence = record.get("confidence", BOOTSTRAP_CONFIDENCE)
    lines = [f"Largest gap between car groups on the backtest (groups with at least "
             f"{record.get('min_group_positives', MIN_GROUP_POSITIVES)} failing batteries), with its "
             f"{confidence:.0%} interval from resampling cars; a gap exceeds its limit when the whole interval "
             "is above it:", "",
             "| attribute | metric | gap | interval | lowest | highest | limit | exceeded |",
             "| --- | --- | ---: | ---: | --- | --- | ---: | --- |"]  # fmt: skip
    for row in record.get("gaps", []):
        interval = f"{_number(row.get('gap_low'))}-{_number(row.get('gap_high'))}"
        lines.append(f"| {row['attribute']} | {row['metric']} | {_number(row['gap'])} | {interval} | {row['lowest']} "
                     f"({_number(row['lowest_value'])}) | {row['highest']} ({_number(row['highest_value'])}) | "
                     f"{_number(row['limit'])} | {'**yes**' if row['exceeded'] else 'no'} |")  # fmt: skip
    lines += ["", "| attribute | group | forecasts | failing | " + " | ".join(METRICS) + " |",
              "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in METRICS) + " |"]  # fmt: skip
    for row in record.get("groups", []):
        cells = " | ".join(_number(row[m]) for m in METRICS)
        mark = "" if row["judged"] else " (too few to judge)"
        lines.append(f"| {row['attribute']} | {row['group']}{mark} | {row['count']} | {row['positives']} | {cells} |")
    return "\n".join(lines) + "\n"


def fairness_report(
    evaluation: pd.DataFrame, cars: pd.DataFrame, limits: Mapping[str, float] | None = None
) -> FairnessReport:
    """Per-group alert metrics and their largest gaps (module docstring).

    `evaluation` is `BacktestResult.evaluation` (Car_ID, label, scored, alert); only scored rows count.
    Every scored row's car must be in `cars`: an outcome that cannot be grouped is an error, not a drop.
    """
    limits = dict(DEFAULT_LIMITS if limits is None else limits)
    unknown_metrics = sorted(set(limits) - set(METRICS))
    if unknown_metrics:
        raise InputError(
            f"fairness limits: unknown metric(s) {', '.join(unknown_metrics)}; known: {', '.join(METRICS)}"
        )
    scored = evaluation[evaluation["scored"].to_numpy(bool)]
    if scored.empty:
        raise InputError("fairness: the backtest scored no battery outcome, so there are no groups to compare")
    joined = scored.merge(car_groups(cars), on=CAR_ID, how="left", validate="many_to_one")
    orphans = joined["Region"].isna()
    if orphans.any():
        cars_missing = joined.loc[orphans, CAR_ID]
        raise InputError(
            f"fairness: {len(cars_missing)} backtest outcome(s) of {cars_missing.nunique()} car(s) "
            f"not in the car table, e.g. {cars_missing.iloc[0]}"
        )
    label, alert = joined["label"].to_numpy(bool), joined["alert"].to_numpy(bool)
    groups = _per_group(joined, label, alert)
    return FairnessReport(groups=groups, gaps=_gaps(groups, limits, _replicates(joined, label, alert)))


def car_groups(cars: pd.DataFrame) -> pd.DataFrame:
    """Car_ID and the grouping attributes as strings; the model year as a band ("2012-2014")."""
    missing = [c for c in [CAR_ID, "Make", "Region", "Engine_Type", "Model_Year"] if c not in cars.columns]
    if missing:
        raise InputError(f"car table is missing column(s): {', '.join(missing)}")
    year = pd.to_numeric(cars["Model_Year"], errors="coerce").to_numpy(np.float64)
    start = np.floor(year / MODEL_YEAR_BAND_YEARS) * MODEL_YEAR_BAND_YEARS
    band = pd.Series(start).map(lambda s: "unknown" if np.isnan(s) else f"{s:.0f}-{s + MODEL_YEAR_BAND_YEARS - 1:.0f}")
    table = pd.DataFrame({CAR_ID: cars[CAR_ID].astype(str).to_numpy(dtype=object)})
    for name in ("Make", "Region", "Engine_Type"):
        table[name] = cars[name].astype("string").fillna("unknown").to_numpy(dtype=object)
    table["Model_Year_Band"] = band.to_numpy(dtype=object)
    return table.drop_duplicates(CAR_ID)


def _positives(y_true: np.ndarray, y_pred: np.ndarray) -> int:
    return int(np.sum(y_true))


def _per_group(joined: pd.DataFrame, label: np.ndarray, alert: np.ndarray) -> pd.DataFrame:
    """One MetricFrame per attribute: the marginal groups the report is about, not their crossings.

    fairlearn is imported here, not at the top: it is a training-time dependency (requirements-dev.txt),
    and the report code that renders a stored fairness record must not need it.
    """
    from fairlearn.metrics import MetricFrame, count, false_positive_rate, selection_rate
    from sklearn.metrics import precision_score, recall_score

    metrics = {
        "count": count,
        "positives": _positives,
        "recall": functools.partial(recall_score, zero_division=np.nan),
        "precision": functools.partial(precision_score, zero_division=np.nan),
        "false_positive_rate": false_positive_rate,
        "selection_rate": selection_rate,
    }
    parts = []
    for attribute in ATTRIBUTES:
        by_group = MetricFrame(metrics=metrics, y_true=label, y_pred=alert,
                               sensitive_features=joined[attribute].rename(None)).by_group  # fmt: skip
        parts.append(by_group.reset_index(names="group").assign(attribute=attribute))
    groups = pd.concat(parts, ignore_index=True)
    groups["judged"] = groups["positives"] >= MIN_GROUP_POSITIVES
    return groups[["attribute", "group", "count", "positives", *METRICS, "judged"]]


def _replicates(joined: pd.DataFrame, label: np.ndarray, alert: np.ndarray) -> dict[str, pd.DataFrame]:
    """Every METRIC of every group in each of BOOTSTRAP_REPLICATES resamplings of the cars, as one
    (replicates x groups) frame per "attribute/metric" (columns: group names).

    Each metric is a ratio of per-car counts (recall = warned failing / failing, ...), so a replicate is
    a weighted sum of the per-car counts, the weight being how often the replicate drew the car: a few
    matrix products, no loop over replicates.
    """
    car, car_row = np.unique(joined[CAR_ID].to_numpy(dtype=str), return_inverse=True)
    counts = np.column_stack([label & alert, label, ~label & alert, ~label, alert, np.ones(len(label), bool)])
    per_car = np.zeros((len(car), counts.shape[1]))
    np.add.at(per_car, car_row, counts)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = rng.integers(0, len(car), (BOOTSTRAP_REPLICATES, len(car)))
    offsets = (np.arange(BOOTSTRAP_REPLICATES) * len(car))[:, None]
    weight = np.bincount((draws + offsets).ravel(), minlength=BOOTSTRAP_REPLICATES * len(car))
    weight = weight.reshape(BOOTSTRAP_REPLICATES, len(car)).astype(np.float64)
    car_attributes = joined.drop_duplicates(CAR_ID).set_index(CAR_ID).loc[car]
    replicates = {}
    for attribute in ATTRIBUTES:
        names, group = np.unique(car_attributes[attribute].to_numpy(dtype=str), return_inverse=True)
        one_hot = np.zeros((len(car), len(names)))
        one_hot[np.arange(len(car)), group] = 1.0
        tp, positives, fp, negatives, alerts, count = (weight @ (one_hot * per_car[:, [k]]) for k in range(6))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = {"recall": tp / positives, "precision": tp / alerts, "false_positive_rate": fp / negatives,
                      "selection_rate": alerts / count}  # fmt: skip
        for metric, values in ratios.items():
            replicates[f"{attribute}/{metric}"] = pd.DataFrame(values, columns=names)
    return replicates


def _gaps(groups: pd.DataFrame, limits: Mapping[str, float], replicates: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The largest gap of each (attribute, metric) among judged groups, with its bootstrap interval: the
    spread of (highest group - lowest group) over the replicates, the two groups fixed as observed."""
    tail = (1 - BOOTSTRAP_CONFIDENCE) / 2 * 100
    rows = []
    for attribute, judged in groups[groups["judged"]].groupby("attribute", sort=False):
        for metric in METRICS:
            values = judged[["group", metric]].dropna()
            if len(values) < 2:
                continue
            low, high = values.loc[values[metric].idxmin()], values.loc[values[metric].idxmax()]
            gap = float(high[metric] - low[metric])
            spread = replicates[f"{attribute}/{metric}"]
            differences = (spread[str(high["group"])] - spread[str(low["group"])]).dropna().to_numpy()
            gap_low, gap_high = np.percentile(differences, [tail, 100 - tail]) if len(differences) else (gap, gap)
            limit = limits.get(metric, np.nan)
            rows.append({"attribute": attribute, "metric": metric, "gap": gap, "gap_low": float(gap_low),
                         "gap_high": float(gap_high), "lowest": low["group"], "lowest_value": float(low[metric]),
                         "highest": high["group"], "highest_value": float(high[metric]), "limit": limit,
                         "exceeded": bool(gap_low > limit) if not np.isnan(limit) else False})  # fmt: skip
    columns = [
        "attribute",
        "metric",
        "gap",
        "gap_low",
        "gap_high",
        "lowest",
        "lowest_value",
        "highest",
        "highest_value",
        "limit",
        "exceeded",
    ]
    return pd.DataFrame(rows, columns=columns)


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v.item() if isinstance(v, np.generic) else v)
             for k, v in row.items()} for row in frame.to_dict(orient="records")]  # fmt: skip


def _number(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"
