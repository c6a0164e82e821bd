"""Backtest: how good the forecast and the failure probability are, measured the way they will be used.

Time-based, never shuffled. With D days of history and cut-off = D - 1 - 90 days:

    |---- training targets ----|-- calibration origins (targets up to the cut-off) --|-- evaluation --|
                               ^ first calibration origin                            ^ cut-off       ^ end

The forecaster under test is fitted on target days up to the first calibration origin; its 30-day-sum
errors at the calibration origins fit its risk calibration (risk.py); it is then scored at the
evaluation origins (cut-off, cut-off + 7, ..., end - 30), each seeing history up to its origin only,
against the actual next 30 days. The two baselines, seasonal-naive (repeat the last observed week) and
recent-mean (mean of the last 28 days), go through the SAME risk code with their own calibration, so
the probability metrics compare forecasts, not calibration tricks.

Against the truth (issue 17): on a simulated fleet the true probability of every evaluated forecast is known
(Monte Carlo over the simulator's future noise: shared/devtools/true_risk.py, passed in as `truth`), the
best any model could do; the summary then reports each method's Brier score and average precision as
ratios to the truth's, with the Monte Carlo standard error of the truth's own figures. Separately, the
reliability of the batteries whose rated life the model forecasts 20-40 days out (NEAR_DAYS), where the
alert is decided by how well the model knows its own uncertainty.

Labels: "reaches rated cycles within 30 days" is known when the actual lifetime counter crosses rated
within the 30 days, or when all 30 days were reported without crossing. A battery whose reports stop
before either (typically replaced) is censored: counted, not labelled. Batteries already past rated at
the origin are trivially positive for every method and are counted separately, not scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.core.metrics import forecast_metrics, probability_metrics, reliability_table
from shared.core.risk import (
    ALERT_THRESHOLD,
    BEYOND_DAYS,
    DAYS_P10,
    DAYS_P90,
    DAYS_TO_RATED_LIFE,
    HORIZON_DAYS,
    INTERVAL_LEVELS,
    PROBABILITY,
    RiskCalibration,
    calibrate,
    failure_risk,
    recent_known_days,
    recent_variability,
)
from shared.core.telemetry import InputError
from shared.core.windows import DEFAULT_WINDOW_DAYS, BatteryWindows, FleetHistory
from shared.models.base import Forecaster

EVALUATION_DAYS = 90
CALIBRATION_SPAN_DAYS = 56
ORIGIN_STRIDE = 7
RECENT_MEAN_DAYS = 28
# Training needs at least this many target days before the first calibration origin.
MIN_TRAINING_DAYS = 60
MIN_HISTORY_DAYS = EVALUATION_DAYS + HORIZON_DAYS + CALIBRATION_SPAN_DAYS + MIN_TRAINING_DAYS + 1
METHODS = ("model", "seasonal_naive", "recent_mean")
METHOD_TITLES = {"model": "LightGBM model", "seasonal_naive": "Seasonal naive", "recent_mean": "Recent mean"}
# The forecasts whose alert is decided by the model's uncertainty: rated life forecast 20-40 days out.
NEAR_DAYS = (20.0, 40.0)


@dataclass(frozen=True)
class TrueProbability:
    """The true P(rated life within 30 days) of each evaluated forecast, from something that knows how the
    data was generated (the simulator: shared/devtools/true_risk.py). For measuring, never for training."""

    probability: np.ndarray  # (m,)
    batch_probability: np.ndarray  # (k, m): from k disjoint batches of the draws, for Monte Carlo errors
    draws: int  # futures drawn per forecast that needed drawing
    drawn: int  # forecasts that needed drawing (the others are 0 or 1 beyond doubt)


# Given the backtest's evaluation frame (Battery_ID, Car_ID, origin), the true probabilities in its row order.
TruthSource = Callable[[pd.DataFrame], TrueProbability]


@dataclass(frozen=True)
class BacktestResult:
    """`summary` is JSON-ready (it goes into metadata.json); `final_calibration` is the model's risk
    calibration from all its held-out origins (calibration and evaluation), shipped with the final model."""

    summary: dict
    final_calibration: RiskCalibration
    # The model's evaluation outcomes, for figures and fairness (not saved with the model): one row per
    # (battery, origin) with Battery_ID, Car_ID, origin, label, scored, probability, alert; and the
    # model's (m, 30) forecasts and the actual days (NaN = not reported), rows as in `evaluation`.
    evaluation: pd.DataFrame | None = None
    forecast: np.ndarray | None = None
    actual: np.ndarray | None = None


def seasonal_naive_forecast(windows: BatteryWindows) -> np.ndarray:
    """Baseline: each day repeats the same weekday of the last observed week (recent mean if unknown)."""
    horizons = np.arange(1, HORIZON_DAYS + 1)
    same_weekday = windows.daily_cycles[:, windows.window_days - 1 - (-horizons) % 7]
    return np.where(np.isnan(same_weekday), recent_mean_forecast(windows), same_weekday)


def recent_mean_forecast(windows: BatteryWindows) -> np.ndarray:
    """Baseline: the mean of the last 28 known days, flat (0 for a battery with no known day)."""
    recent = windows.daily_cycles[:, -RECENT_MEAN_DAYS:]
    count = np.sum(~np.isnan(recent), axis=1)
    mean = np.nansum(recent, axis=1) / np.maximum(count, 1)
    return np.repeat(mean[:, None], HORIZON_DAYS, axis=1)


def method_forecasters(model_forecast: Callable[[BatteryWindows], np.ndarray]) -> dict[str, Callable]:
    """The model's forecast beside the baselines every backtest compares it with, keyed as `METHODS`."""
    return {"model": model_forecast, "seasonal_naive": seasonal_naive_forecast, "recent_mean": recent_mean_forecast}


def run_backtest(
    history: FleetHistory,
    fit: Callable[[FleetHistory, int], Forecaster],
    *,
    threshold: float = ALERT_THRESHOLD,
    progress: Callable[[str], None] | None = None,
    window_days: int = DEFAULT_WINDOW_DAYS,
    model_title: str = METHOD_TITLES["model"],
    evaluation_history: FleetHistory | None = None,
    truth: TruthSource | None = None,
) -> BacktestResult:
    """Fit with `fit(history, last_target_day)`, calibrate, evaluate model and baselines (module docstring).

    `model_title` names the model under test in the summary and its Markdown ("LSTM model", ...).
    `evaluation_history` (same calendar as `history`) evaluates on other batteries than those fitted and
    calibrated on: bench/bench_training_sample.py scores a model trained on a sample on the whole fleet.
    `truth` (a simulated fleet's, see the module docstring) adds the comparison with the true probability.
    """
    say = progress or (lambda message: None)
    last_day = history.n_days - 1
    cutoff = last_day - EVALUATION_DAYS
    calibration_origins = np.arange(
        cutoff - HORIZON_DAYS - CALIBRATION_SPAN_DAYS, cutoff - HORIZON_DAYS + 1, ORIGIN_STRIDE
    )
    evaluation_origins = np.arange(cutoff, last_day - HORIZON_DAYS + 1, ORIGIN_STRIDE)
    if calibration_origins[0] < MIN_TRAINING_DAYS:
        raise InputError(f"the backtest needs at least {MIN_HISTORY_DAYS} days of history, got {history.n_days}")

    say(f"backtest: fitting on targets up to {_date(history, calibration_origins[0])}")
    model = fit(history, int(calibration_origins[0]))
    forecasters = method_forecasters(model.forecast)
    say(
        f"backtest: calibrating on {len(calibration_origins)} origins, "
        f"evaluating on {len(evaluation_origins)} from {_date(history, cutoff)}"
    )
    held_out = origin_outcomes(history, calibration_origins, forecasters, window_days, model.wear_beyond)
    evaluated_history = history if evaluation_history is None else evaluation_history
    evaluated = origin_outcomes(evaluated_history, evaluation_origins, forecasters, window_days, model.wear_beyond)

    metrics, reliability, risks = score_outcomes(held_out, evaluated, threshold)
    probability = risks["model"][PROBABILITY].to_numpy()
    summary = {
        "cutoff": _date(history, cutoff),
        "training_targets_until": _date(history, calibration_origins[0]),
        "calibration_origins": [_date(history, d) for d in calibration_origins],
        "evaluation_origins": [_date(history, d) for d in evaluation_origins],
        "model_title": model_title,
        "horizon_days": HORIZON_DAYS,
        "threshold": threshold,
        "counts": evaluated.counts(),
        "metrics": metrics,
        "reliability": reliability,
    }
    pooled = concatenate_outcomes(held_out, evaluated)
    evaluation = pd.DataFrame(
        {
            "Battery_ID": evaluated_history.battery_id[evaluated.battery].astype(str),
            "Car_ID": evaluated_history.car_id[evaluated.battery].astype(str),
            "origin": history.first_day + evaluated.origin.astype("timedelta64[D]"),
            "label": evaluated.label,
            "scored": evaluated.scored,
            "probability": probability,
            "alert": probability >= threshold,
        }
    )
    summary["interval"] = interval_coverage(risks["model"], evaluated)
    near = evaluated.scored & _between(risks["model"][DAYS_TO_RATED_LIFE].to_numpy(), NEAR_DAYS)
    true = truth(evaluation) if truth is not None else None
    summary["reliability_near"] = reliability_table(
        probability[near], evaluated.label[near], true_probability=None if true is None else true.probability[near]
    )
    if true is not None:
        summary["truth"] = truth_comparison(true, metrics, evaluated.label, evaluated.scored, threshold)
        evaluation["true_probability"] = true.probability
    return BacktestResult(
        summary=summary,
        final_calibration=calibration_from_outcomes(pooled, "model"),
        evaluation=evaluation,
        forecast=evaluated.forecast["model"],
        actual=evaluated.actual,
    )


def score_outcomes(held_out: OriginOutcomes, evaluated: OriginOutcomes, threshold: float) -> tuple[dict, dict, dict]:
    """Per method: metrics (forecast and probability), reliability table and risk frame (`failure_risk`) on
    `evaluated`, each method's risk calibrated on `held_out` — the backtest's scoring, shared with model kinds
    that are calibrated on origins of their own (mlflow_forecaster)."""
    metrics, reliability, risks = {}, {}, {}
    for method in METHODS:
        calibration = calibration_from_outcomes(held_out, method)
        risks[method] = failure_risk(
            evaluated.lifetime,
            evaluated.rated,
            evaluated.forecast[method],
            calibration,
            daily_std=evaluated.daily_std,
            known_days=evaluated.known_days,
            wear_beyond=evaluated.wear_beyond if method == "model" else None,  # the baselines know no season
        )
        probability = risks[method][PROBABILITY].to_numpy()
        metrics[method] = {
            **forecast_metrics(evaluated.actual, evaluated.forecast[method]),
            **probability_metrics(probability[evaluated.scored], evaluated.label[evaluated.scored], threshold),
        }
        reliability[method] = reliability_table(probability[evaluated.scored], evaluated.label[evaluated.scored])
    return metrics, reliability, risks


def truth_comparison(
    true: TrueProbability, metrics: dict, label: np.ndarray, scored: np.ndarray, threshold: float
) -> dict:
    """The truth's Brier score and average precision (each with its Monte Carlo standard error: the spread
    of the batches' figures over sqrt(batches)), and every method's as ratios to them (AP also as a gap)."""
    truth_metrics = probability_metrics(true.probability[scored], label[scored], threshold)
    batches = [probability_metrics(batch[scored], label[scored], threshold) for batch in true.batch_probability]
    standard_error = {
        name: float(np.std([batch[name] for batch in batches], ddof=1) / np.sqrt(len(batches)))
        if truth_metrics[name] is not None
        else None
        for name in ("brier", "average_precision")
    }
    ratios = {}
    for method, measured in metrics.items():
        brier, precision = measured.get("brier"), measured.get("average_precision")
        ratios[method] = {
            "brier_to_truth": brier / truth_metrics["brier"] if brier is not None and truth_metrics["brier"] else None,
            "average_precision_to_truth": precision / truth_metrics["average_precision"]
            if precision is not None and truth_metrics["average_precision"]
            else None,
            "average_precision_gap": truth_metrics["average_precision"] - precision
            if precision is not None and truth_metrics["average_precision"] is not None
            else None,
        }
    return {
        "metrics": truth_metrics,
        "standard_error": standard_error,
        "ratios": ratios,
        "draws": true.draws,
        "drawn": true.drawn,
        "batches": len(true.batch_probability),
    }


def interval_coverage(risk: pd.DataFrame, outcomes: OriginOutcomes) -> dict:
    """How often the actual day of reaching rated life fell inside the model's p10-p90 interval.

    Judged on the scored forecasts whose p90 lies within the days the data covers after the origin (at
    least 30, up to the data's end): for those the outcome is known either way — reached inside, before
    p10, or not by p90. Chosen by the forecast, never by the outcome, so the share is not biased.

    A battery near rated life is judged at several weekly origins, and its one outcome lands on the same
    side of most of its intervals, so the shares' standard errors are clustered by battery
    (`clustered_standard_error`): on a 500-car fleet about 200 judged forecasts come from about 45 batteries."""
    p10, p90 = risk[DAYS_P10].to_numpy(), risk[DAYS_P90].to_numpy()
    judged = outcomes.scored & (p90 <= outcomes.days_observed)
    reached = outcomes.days_reached[judged]
    low, high = p10[judged], p90[judged]
    below = reached < low  # NaN (not reached by the data's end) compares False
    above = np.isnan(reached) | (reached > high)
    inside = ~below & ~above
    battery = outcomes.battery[judged]
    n = int(judged.sum())
    shares = {"coverage": inside, "below_p10": below, "above_p90": above}
    return {
        "level": INTERVAL_LEVELS[DAYS_P90] - INTERVAL_LEVELS[DAYS_P10],
        "judged": n,
        "batteries": int(np.unique(battery).size),
        **{name: float(np.mean(flag)) if n else None for name, flag in shares.items()},
        **{f"{name}_se": clustered_standard_error(flag, battery) for name, flag in shares.items()},
    }


def clustered_standard_error(flag: np.ndarray, cluster: np.ndarray) -> float | None:
    """Standard error of the share of `flag`, with observations of one cluster free to be correlated: the
    sandwich estimate sqrt(G/(G-1) * sum over clusters of (their flags - their count * share)^2) / n. With one
    observation per cluster it is the binomial sqrt(share (1 - share) / (n - 1)); None with fewer than two
    clusters."""
    clusters, index = np.unique(cluster, return_inverse=True)
    if len(clusters) < 2:
        return None
    residual = np.bincount(index, weights=flag - np.mean(flag), minlength=len(clusters))
    return float(np.sqrt(len(clusters) / (len(clusters) - 1) * np.sum(residual**2)) / len(flag))


def _between(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return (values >= bounds[0]) & (values <= bounds[1])


def backtest_markdown(summary: dict) -> str:
    """The backtest as Markdown for the human-readable report: metrics vs baselines, reliability, verdict."""
    metrics, counts = summary["metrics"], summary["counts"]
    titles = {**METHOD_TITLES, "model": summary.get("model_title", METHOD_TITLES["model"])}
    names = ["nrmse", "mae", "brier", "average_precision", "recall_at_threshold", "precision_at_threshold"]
    lines = [
        f"### Backtest (cut-off {summary['cutoff']}, {len(summary['evaluation_origins'])} origins, "
        f"{summary['horizon_days']}-day horizon, alert threshold {summary['threshold']:g})",
        "",
        f"{counts['forecasts']:,} battery forecasts ({counts['forecast_days']:,} battery-days); "
        f"{counts['labelled']:,} labelled for failure within 30 days, {counts['positive']:,} positive; "
        f"{counts['censored']:,} censored (reports stopped), {counts['already_past_rated']:,} already past "
        "rated life at the origin (not scored).",
        "",
        "| metric | " + " | ".join(titles[m] for m in METHODS) + " |",
        "| --- | " + " | ".join("---:" for _ in METHODS) + " |",
    ]
    lines += [f"| {name} | " + " | ".join(_cell(metrics[m].get(name)) for m in METHODS) + " |" for name in names]
    lines += ["", "Reliability of the model's failure_probability_30d:"]
    lines += _reliability_table(summary["reliability"]["model"])
    interval = summary.get("interval")
    if interval and interval["judged"]:
        lines += [
            "",
            f"Interval of days to rated life (p10-p90, {interval['level']:.0%}): it held the actual day for "
            f"{interval['coverage']:.1%} of the {interval['judged']:,} forecasts whose p90 the data covers "
            f"({interval['below_p10']:.1%} came before p10, {interval['above_p90']:.1%} after p90); they come "
            f"from {interval['batteries']:,} batteries, so the coverage's standard error is "
            f"{_percent(interval['coverage_se'])} (clustered by battery).",
        ]
    lines += _near_reliability_markdown(summary.get("reliability_near"))
    if summary.get("truth"):
        lines += _truth_markdown(summary["truth"], titles)
    lines += ["", _verdict(metrics, titles["model"])]
    return "\n".join(lines) + "\n"


def _near_reliability_markdown(rows: list[dict] | None) -> list[str]:
    """The reliability table of the forecasts whose rated life is NEAR_DAYS out (with the truth's column)."""
    if rows is None:
        return []
    low, high = NEAR_DAYS
    return [
        "",
        f"Reliability where alerts are decided: the {sum(row['count'] for row in rows)} forecasts whose rated life "
        f"the model puts {low:g}-{high:g} days out:",
        *_reliability_table(rows),
    ]


def _reliability_table(rows: list[dict]) -> list[str]:
    """A reliability table (a blank line first), with the mean true probability's column when the rows have it."""
    with_truth = any("mean_true" in row for row in rows)
    lines = [
        "",
        "| bin | count | mean predicted | observed rate |" + (" mean true probability |" if with_truth else ""),
        "| --- | ---: | ---: | ---: |" + (" ---: |" if with_truth else ""),
    ]
    return lines + [
        f"| {row['bin']} | {row['count']} | {_cell(row['mean_predicted'])} | {_cell(row['observed_rate'])} |"
        + (f" {_cell(row.get('mean_true'))} |" if with_truth else "")
        for row in rows
    ]


def _truth_markdown(truth: dict, titles: dict) -> list[str]:
    """Each method's Brier score and average precision against the true probability's (the best possible)."""
    measured, error, ratios = truth["metrics"], truth["standard_error"], truth["ratios"]
    lines = [
        "",
        f"Against the true probability (Monte Carlo over the simulator's future noise, {truth['draws']:,} draws "
        f"for each of the {truth['drawn']:,} forecasts not decided beyond doubt): the truth's Brier score "
        f"{_cell(measured['brier'], 6)} (± {_error(error['brier'])}), average precision "
        f"{_cell(measured['average_precision'], 6)} (± {_error(error['average_precision'])}); ± is the Monte "
        "Carlo standard error.",
        "",
        "| ratio to the truth | " + " | ".join(titles[m] for m in METHODS) + " |",
        "| --- | " + " | ".join("---:" for _ in METHODS) + " |",
    ]
    for name, label in (
        ("brier_to_truth", "Brier score ÷ truth's"),
        ("average_precision_to_truth", "average precision ÷ truth's"),
        ("average_precision_gap", "truth's average precision − method's"),
    ):
        lines.append(f"| {label} | " + " | ".join(_cell(ratios[m][name]) for m in METHODS) + " |")
    return lines


@dataclass(frozen=True)
class OriginOutcomes:
    """Forecasts of every method and what actually happened, one row per (battery, origin)."""

    forecast: dict[str, np.ndarray]  # method -> (m, 30)
    actual: np.ndarray  # (m, 30), NaN = not reported
    lifetime: np.ndarray
    rated: np.ndarray
    daily_std: np.ndarray
    known_days: np.ndarray
    wear_beyond: np.ndarray  # (m, BEYOND_DAYS) the model's `Forecaster.wear_beyond`, NaN = its mean rate
    label: np.ndarray  # bool
    labelled: np.ndarray  # bool: the outcome is known
    days_reached: np.ndarray  # actual (fractional) days from the origin to rated life; NaN = not by the data's end
    days_observed: np.ndarray  # days the data covers after the origin
    already_past: np.ndarray  # bool
    battery: np.ndarray  # row in the history
    origin: np.ndarray  # day index in the history

    @property
    def scored(self) -> np.ndarray:
        return self.labelled & ~self.already_past

    def counts(self) -> dict:
        return {
            "forecasts": len(self.lifetime),
            "forecast_days": int((~np.isnan(self.actual)).sum()),
            "labelled": int(self.scored.sum()),
            "positive": int((self.label & self.scored).sum()),
            "censored": int((~self.labelled & ~self.already_past).sum()),
            "already_past_rated": int(self.already_past.sum()),
        }


def origin_outcomes(
    history: FleetHistory,
    origins: np.ndarray,
    forecasters: dict[str, Callable],
    window_days: int,
    wear_beyond: Callable[[BatteryWindows], np.ndarray | None],
) -> OriginOutcomes:
    """Each method's 30-day forecast from every battery reporting on each origin day, the model's season
    past the horizon (`wear_beyond`), and what happened; shared with model kinds that are calibrated on
    origins of their own (mlflow_forecaster)."""
    parts = []
    reported = history.reported()
    for origin in origins:
        rows = np.flatnonzero(reported[:, origin])
        windows = history.windows_at(int(origin), rows, window_days)
        future = slice(origin + 1, origin + 1 + HORIZON_DAYS)
        future_lifetime = history.lifetime_cycles[rows, future]
        reached = (future_lifetime >= windows.rated_cycles[:, None]).any(axis=1)  # NaN (unreported) compares False
        all_after = history.lifetime_cycles[rows, origin + 1 :]
        beyond = wear_beyond(windows)
        parts.append(
            OriginOutcomes(
                forecast={name: forecast(windows) for name, forecast in forecasters.items()},
                actual=history.daily_cycles[rows, future],
                lifetime=windows.lifetime_cycles,
                rated=windows.rated_cycles,
                daily_std=recent_variability(windows.daily_cycles),
                known_days=recent_known_days(windows.daily_cycles),
                wear_beyond=np.full((len(rows), BEYOND_DAYS), np.nan) if beyond is None else beyond,
                label=reached,
                labelled=reached | ~np.isnan(future_lifetime).any(axis=1),
                days_reached=days_reached(windows.lifetime_cycles, windows.rated_cycles, all_after),
                days_observed=np.full(len(rows), all_after.shape[1]),
                already_past=windows.lifetime_cycles >= windows.rated_cycles,
                battery=rows,
                origin=np.full(len(rows), origin),
            )
        )
    return concatenate_outcomes(*parts)


def days_reached(lifetime: np.ndarray, rated: np.ndarray, counter_after: np.ndarray) -> np.ndarray:
    """The fractional day the counter reached rated life (`risk.days_to_rated_life`'s convention: the end of
    day j is j, the origin 0), interpolated between the last reading below rated and the first at or above
    it (unreported days, NaN, skipped); NaN where it did not by the last column."""
    n, days = counter_after.shape
    at_or_over = counter_after >= rated[:, None]
    hit = at_or_over.any(axis=1)
    first = np.argmax(at_or_over, axis=1)
    known_before = ~np.isnan(counter_after) & (np.arange(days) < first[:, None])
    previous = np.where(known_before.any(axis=1), days - 1 - np.argmax(known_before[:, ::-1], axis=1), -1)
    rows = np.arange(n)
    before = np.where(previous >= 0, counter_after[rows, np.maximum(previous, 0)], lifetime)
    after = counter_after[rows, first]
    share = np.clip((rated - before) / np.where(after > before, after - before, 1.0), 0.0, 1.0)
    day = (previous + 1) + share * (first - previous)
    return np.where(hit, day, np.nan)


def concatenate_outcomes(*parts: OriginOutcomes) -> OriginOutcomes:
    """The outcomes of several origin sets as one."""
    return OriginOutcomes(
        forecast={m: np.concatenate([p.forecast[m] for p in parts]) for m in parts[0].forecast},
        **{
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in (
                "actual",
                "lifetime",
                "rated",
                "daily_std",
                "known_days",
                "wear_beyond",
                "label",
                "labelled",
                "days_reached",
                "days_observed",
                "already_past",
                "battery",
                "origin",
            )
        },
    )


def calibration_from_outcomes(outcomes: OriginOutcomes, method: str) -> RiskCalibration:
    """Risk calibration from the origins whose 30 actual days are all known."""
    complete = ~np.isnan(outcomes.actual).any(axis=1)
    return calibrate(
        outcomes.actual[complete].sum(axis=1),
        outcomes.forecast[method][complete],
        outcomes.daily_std[complete],
        outcomes.known_days[complete],
    )


def _verdict(metrics: dict, title: str) -> str:
    """One paragraph that justifies (or not) the model against the baselines, with the numbers."""
    model = metrics["model"]
    lines = []
    for name, label in (("nrmse", "daily-cycles NRMSE"), ("brier", "failure-probability Brier score")):
        baselines = [metrics[b][name] for b in ("seasonal_naive", "recent_mean") if metrics[b][name] is not None]
        best = min(baselines, default=None)
        if model[name] is None or best is None:
            lines.append((False, f"{label}: not measurable on this backtest"))
            continue
        change = (model[name] / best - 1) * 100 if best > 0 else 0.0
        direction = "lower" if change < 0 else "higher"
        lines.append(
            (
                model[name] < best,
                f"{label} {_cell(model[name])} against {_cell(best)} for the better "
                f"baseline ({abs(change):.0f}% {direction})",
            )
        )
    wins = all(win for win, _ in lines)
    lead = f"The {title} is justified" if wins else f"Caution: the {title} does not beat both baselines"
    return (
        f"{lead}: {'; '.join(text for _, text in lines)}. Seasonal-naive copies one noisy week and recent-mean "
        "ignores the weekly rhythm, the season and changes in use; the global model learns them across the "
        "fleet and is trained on the 30 days whose total decides the risk. "
        "Both baselines went through the same calibrated risk code, so the Brier gap is the forecast's, not "
        "the calibration's."
    )


def _cell(value: float | None, decimals: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"± {value:.1%}"


def _error(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def _date(history: FleetHistory, day: int) -> str:
    return str(history.first_day + int(day))
