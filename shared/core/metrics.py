"""Forecast and probability metrics, defined once: the backtest (models/backtest.py) and the model monitor
(core/monitoring.py) score the same way, so a matured figure compares with the backtest's like for like.
"""

from __future__ import annotations

import numpy as np

RELIABILITY_BINS = 10


def forecast_metrics(actual: np.ndarray, forecast: np.ndarray) -> dict:
    """nrmse (RMSE over the range of the actual values, as Azure AutoML defines it) and mae, over known days;
    total_error, the mean relative error of the horizon's total over (n, days) rows with every day known and
    some use: what the failure probability is built on, and what a change of usage moves first (a daily error
    drowns in day-to-day noise)."""
    known = ~np.isnan(actual)
    error = forecast[known] - actual[known]
    spread = float(np.ptp(actual[known])) if known.any() else 0.0
    rmse = float(np.sqrt(np.mean(error**2)))
    total = actual.sum(axis=-1)
    whole = known.all(axis=-1) & (total > 0)
    total_error = np.abs(forecast.sum(axis=-1)[whole] - total[whole]) / total[whole]
    return {"nrmse": rmse / spread if spread > 0 else None, "mae": float(np.mean(np.abs(error))), "rmse": rmse,
            "total_error": float(total_error.mean()) if whole.any() else None}  # fmt: skip


def probability_metrics(probability: np.ndarray, label: np.ndarray, threshold: float) -> dict:
    """Brier score, average precision, and recall / precision of alerting at p >= threshold."""
    alert = probability >= threshold
    positives = int(label.sum())
    return {
        "brier": float(np.mean((probability - label) ** 2)) if len(label) else None,
        "average_precision": average_precision(probability, label),
        "recall_at_threshold": float((alert & label).sum() / positives) if positives else None,
        "precision_at_threshold": float((alert & label).sum() / alert.sum()) if alert.any() else None,
        "alerts": int(alert.sum()),
    }


def average_precision(score: np.ndarray, label: np.ndarray) -> float | None:
    """Area under the precision-recall curve as a step sum over distinct scores (sklearn's definition)."""
    positives = label.sum()
    if positives == 0:
        return None
    order = np.argsort(-score, kind="stable")
    ranked_score, ranked_label = score[order], label[order]
    last_of_tie = np.r_[np.diff(ranked_score) != 0, True]
    true_positives = np.cumsum(ranked_label)[last_of_tie]
    precision = true_positives / (np.flatnonzero(last_of_tie) + 1)
    recall_gain = np.diff(true_positives, prepend=0) / positives
    return float(np.sum(recall_gain * precision))


def reliability_table(probability: np.ndarray, label: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict]:
    """Equal-width probability bins: how many forecasts, their mean probability, and how often it happened."""
    index = np.minimum((probability * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=probability, minlength=bins)
    observed = np.bincount(index, weights=label.astype(np.float64), minlength=bins)
    return [
        {
            "bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
            "count": int(count[b]),
            "mean_predicted": float(predicted[b] / count[b]) if count[b] else None,
            "observed_rate": float(observed[b] / count[b]) if count[b] else None,
        }
        for b in range(bins)
    ]
