"""Failure risk: from a 30-day cycle forecast to P(battery reaches its rated cycles within 30 days).

Daily cycles are never negative, so the battery reaches rated life within the horizon exactly when
lifetime + (sum of the next 30 days' cycles) >= rated. The probability therefore only needs the
distribution of the 30-day SUM, not of each day. We model the sum's forecast error empirically:

    z = (actual_sum - predicted_sum) / scale,    scale = sqrt(H * daily_std^2 + (RELATIVE_SPREAD * predicted_sum)^2)

`scale` puts batteries with erratic and steady usage, heavy and light users, on one footing (day-to-day
noise adds up over H days; a shift in the usage level grows with the level). A battery with fewer than
VARIABILITY_DAYS known recent days (a new battery, a short request) has a less certain level, so its
scale is widened by sqrt(VARIABILITY_DAYS / known days), as a mean's error grows with fewer days; the
held-out errors come almost all from full histories, so this widening is a rule, not fitted. The empirical
quantiles of z, collected on origins the model never trained on, carry whatever shape and bias is left.
Then P = P(z >= (remaining - predicted_sum) / scale). No normal assumption, no threshold in disguise:
the numbers are as calibrated as the held-out errors are representative, which the backtest measures.

The interval of days to rated life (issue 17) reads the same distribution at every horizon t <= 30: the
battery has reached rated life by day t exactly when its use over t days reaches the remaining cycles, so
the q-quantile of the day is where the forecast's cumulative use, moved to its own (1 - q) quantile
(predicted_t + z_(1-q) * scale_t, with scale_t the same formula over t days), crosses the remaining cycles;
past day 30 each quantile keeps its 30-day ratio to the forecast's cumulative use, which goes on at the
forecast's mean daily rate, or, where the forecaster knows its season (`Forecaster.wear_beyond`: e.g. the
cold region's thaw halves the wear), at that rate moved day by day by the season for BEYOND_DAYS more days
(then at the mean rate of all those days), as days_to_rated_life does.

All functions are pure over numpy arrays; the batch path and the endpoint call the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

HORIZON_DAYS = 30
# The columns failure_risk returns (and every scores table, the endpoint's predictions and the alerts carry).
PROBABILITY = "failure_probability_30d"
DAYS_TO_RATED_LIFE = "days_to_rated_life"
# The added interval of days to rated life (issue 17): its 10th, 50th and 90th percentiles.
INTERVAL_LEVELS = {"days_to_rated_life_p10": 0.1, "days_to_rated_life_p50": 0.5, "days_to_rated_life_p90": 0.9}
DAYS_P10, DAYS_P50, DAYS_P90 = INTERVAL_LEVELS
INTERVAL_COLUMNS = list(INTERVAL_LEVELS)
# The failure probability from which a battery is alerted, unless told otherwise: what backtests and batch
# scoring judge alerts at, and the default of the app's ALERT_PROBABILITY_THRESHOLD setting.
ALERT_THRESHOLD = 0.8
# Empirical quantile levels kept for the error distribution (0.5 % steps; tails interpolate linearly).
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 201)
# Share of the predicted sum that a change in usage level typically moves it (shapes `scale` only; the
# empirical quantiles absorb the actual size of the errors).
RELATIVE_SPREAD = 0.1
# Smallest error scale, in cycles: keeps z finite for batteries that have not been used at all.
SCALE_FLOOR = 0.05
# Days to use for a battery's recent day-to-day variability.
VARIABILITY_DAYS = 28
# Days after the horizon a forecaster's season carries the extrapolation of use (to day 90: the most the
# backtest's data covers after an evaluation origin).
BEYOND_DAYS = 60
# Reported instead of "never" for a battery whose forecast use is zero: JSON has no infinity, and a
# century is beyond any service plan.
MAX_DAYS_TO_RATED_LIFE = 36_500.0


@dataclass(frozen=True)
class RiskCalibration:
    """Empirical quantiles of the standardised 30-day-sum error z, from held-out forecast origins."""

    z_quantiles: np.ndarray  # at QUANTILE_LEVELS, strictly increasing
    n_errors: int

    def to_dict(self) -> dict:
        return {
            "quantile_levels": QUANTILE_LEVELS.tolist(),
            "z_quantiles": self.z_quantiles.tolist(),
            "n_errors": self.n_errors,
            "relative_spread": RELATIVE_SPREAD,
            "scale_floor": SCALE_FLOOR,
        }

    @classmethod
    def from_dict(cls, data: dict) -> RiskCalibration:
        if len(data["z_quantiles"]) != len(QUANTILE_LEVELS):
            raise ValueError("calibration was saved with different quantile levels")
        return cls(z_quantiles=np.asarray(data["z_quantiles"], dtype=np.float64), n_errors=int(data["n_errors"]))


def recent_variability(daily_cycles: np.ndarray) -> np.ndarray:
    """Standard deviation of each battery's last VARIABILITY_DAYS known daily cycles (0 with < 2 days)."""
    recent = daily_cycles[:, -VARIABILITY_DAYS:]
    count = np.sum(~np.isnan(recent), axis=1)
    mean = np.nansum(recent, axis=1) / np.maximum(count, 1)
    squares = np.nansum((recent - mean[:, None]) ** 2, axis=1)
    return np.where(count >= 2, np.sqrt(squares / np.maximum(count - 1, 1)), 0.0)


def recent_known_days(daily_cycles: np.ndarray) -> np.ndarray:
    """How many of each battery's last VARIABILITY_DAYS days are known."""
    return np.sum(~np.isnan(daily_cycles[:, -VARIABILITY_DAYS:]), axis=1)


def error_scale(
    predicted_sum: np.ndarray,
    daily_std: np.ndarray,
    known_days: np.ndarray | None = None,
    days: np.ndarray | int = HORIZON_DAYS,
) -> np.ndarray:
    """The per-battery scale that standardises the error of the sum over `days` (30, or one per column of
    `predicted_sum`; see the module docstring)."""
    noise = days * np.nan_to_num(daily_std) ** 2
    level = (RELATIVE_SPREAD * np.maximum(predicted_sum, 0.0)) ** 2
    scale = np.maximum(np.sqrt(noise + level), SCALE_FLOOR)
    if known_days is None:
        return scale
    widening = np.sqrt(VARIABILITY_DAYS / np.clip(known_days, 1, VARIABILITY_DAYS))
    return scale * (widening if np.ndim(scale) == 1 else widening[:, None])


def calibrate(
    actual_sum: np.ndarray, forecast: np.ndarray, daily_std: np.ndarray, known_days: np.ndarray | None = None
) -> RiskCalibration:
    """Fit the error distribution from held-out origins: actual 30-day sums vs (n, 30) forecasts."""
    predicted = forecast.sum(axis=1)
    z = (actual_sum - predicted) / error_scale(predicted, daily_std, known_days)
    z = z[np.isfinite(z)]
    if len(z) < 20:
        raise ValueError(f"too few held-out forecasts to calibrate the failure risk ({len(z)}, need 20)")
    quantiles = np.quantile(z, QUANTILE_LEVELS)
    # np.interp needs strictly increasing points; ties (repeated errors) get a negligible nudge.
    quantiles = quantiles + np.arange(len(quantiles)) * 1e-9
    return RiskCalibration(z_quantiles=quantiles, n_errors=len(z))


def failure_risk(
    lifetime: np.ndarray,
    rated: np.ndarray,
    forecast: np.ndarray,
    calibration: RiskCalibration,
    daily_std: np.ndarray | None = None,
    known_days: np.ndarray | None = None,
    wear_beyond: np.ndarray | None = None,
) -> pd.DataFrame:
    """failure_probability_30d and days_to_rated_life for n batteries.

    lifetime, rated: (n,) cycles used so far and rated cycles; forecast: (n, 30) daily cycles;
    daily_std: (n,) recent day-to-day variability (`recent_variability`), None = unknown (treated as 0);
    known_days: (n,) known recent days (`recent_known_days`), None = a full history;
    wear_beyond: (n, k) each day's use after the horizon relative to the forecast's mean daily rate
    (`Forecaster.wear_beyond`; NaN = that rate), None = the mean rate throughout.
    Also the interval of days to rated life (INTERVAL_COLUMNS; module docstring).
    A battery already at or past its rated cycles has probability 1 and 0 days left.
    """
    lifetime = np.asarray(lifetime, dtype=np.float64)
    remaining = np.asarray(rated, dtype=np.float64) - lifetime
    forecast = np.maximum(np.asarray(forecast, dtype=np.float64), 0.0)
    daily_std = np.zeros(len(lifetime)) if daily_std is None else np.asarray(daily_std, dtype=np.float64)
    predicted = forecast.sum(axis=1)
    threshold = (remaining - predicted) / error_scale(predicted, daily_std, known_days)
    below = np.interp(threshold, calibration.z_quantiles, QUANTILE_LEVELS, left=0.0, right=1.0)
    probability = np.where(remaining <= 0, 1.0, 1.0 - below)
    horizon = forecast.shape[1]
    beyond = np.zeros((len(forecast), 0)) if wear_beyond is None else np.asarray(wear_beyond, dtype=np.float64)
    beyond = np.where(np.isfinite(beyond), np.maximum(beyond, 0.0), 1.0)
    daily = np.hstack([forecast, forecast.mean(axis=1, keepdims=True) * beyond])
    risk = pd.DataFrame({PROBABILITY: probability, DAYS_TO_RATED_LIFE: days_to_rated_life(remaining, daily)})
    cumulative = np.cumsum(forecast, axis=1)
    scale = error_scale(cumulative, daily_std[:, None], known_days, days=np.arange(1, horizon + 1))
    # Past the horizon a quantile keeps its ratio to the forecast's cumulative use (module docstring).
    carried = 1.0 + np.cumsum(beyond, axis=1) / horizon
    for column, level in INTERVAL_LEVELS.items():
        z = np.interp(1.0 - level, QUANTILE_LEVELS, calibration.z_quantiles)
        within = np.maximum.accumulate(np.maximum(cumulative + z * scale, 0.0), axis=1)
        quantile_use = np.hstack([within, within[:, -1:] * carried])
        risk[column] = days_to_rated_life(remaining, np.diff(quantile_use, axis=1, prepend=0.0))
    return risk


def days_to_rated_life(remaining: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """The fractional day on which the cumulative forecast uses up the remaining cycles.

    Within the forecast's days (30, or more with `wear_beyond`) it interpolates inside the crossing day
    (crossing halfway through day 3 = 2.5); beyond them, it extrapolates at their mean daily rate. 0 when
    already past rated life.
    """
    remaining = np.asarray(remaining, dtype=np.float64)
    cumulative = np.cumsum(forecast, axis=1)
    horizon = forecast.shape[1]
    crossed = cumulative >= remaining[:, None]
    day = np.argmax(crossed, axis=1)
    rows = np.arange(len(remaining))
    before = np.where(day > 0, cumulative[rows, day - 1], 0.0)
    within = day + (remaining - before) / np.where(forecast[rows, day] > 0, forecast[rows, day], 1.0)
    rate = cumulative[:, -1] / horizon
    beyond = horizon + (remaining - cumulative[:, -1]) / np.where(rate > 0, rate, np.nan)
    days = np.where(crossed.any(axis=1), within, np.nan_to_num(beyond, nan=MAX_DAYS_TO_RATED_LIFE))
    return np.clip(np.where(remaining <= 0, 0.0, days), 0.0, MAX_DAYS_TO_RATED_LIFE)
