"""Scoring: the one code path from battery windows to failure probabilities and forecasts.

The CLI `score`, the nightly batch and the online endpoint all end in `score_windows`, so the same model
files give the same probability for the same history whichever way it arrives. `score_fleet` is the batch
view: which batteries are in service on a day, their windows as of that day, and the alert flag.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from shared.core.alerts import AS_OF, REASONS, SCORE_COLUMNS
from shared.core.risk import (
    ALERT_THRESHOLD,
    DAYS_TO_RATED_LIFE,
    HORIZON_DAYS,
    INTERVAL_COLUMNS,
    PROBABILITY,
    failure_risk,
    recent_known_days,
    recent_variability,
)
from shared.core.telemetry import BATTERY_ID, CAR_ID, DAILY_CYCLES, DATE, LIFETIME_CYCLES, RATED_CYCLES
from shared.core.windows import BatteryWindows, build_windows
from shared.models.base import Forecaster
from shared.models.explanation import battery_reasons

# A battery silent for longer than this before the as-of day is no longer counted as in service.
IN_SERVICE_DAYS = 14
# The batch scores table: the scores frame's columns but the as-of day (one day for the whole table).
BATCH_SCORE_COLUMNS = [column for column in SCORE_COLUMNS if column != AS_OF]
# The batch scores table (CLI `score`, nightly batch, Spark): the contract's columns, then the added interval.
BATCH_SCORES_TABLE = [*BATCH_SCORE_COLUMNS, "alert", REASONS, *INTERVAL_COLUMNS]


def score_windows(
    model: Forecaster, windows: BatteryWindows, *, explain_from: float | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per battery: core.alerts.SCORE_COLUMNS + the interval of days to rated life (risk.INTERVAL_COLUMNS) +
    reasons, and the (n, 30) daily-cycles forecast, rows in window order.

    `reasons` (plain words, a list of strings) are given to batteries with a failure probability of at
    least `explain_from`, the ones that may alert; the others, and all when it is None, get an empty
    list. Why not everyone: nobody reads them, and the texts are the costly part of reasons now
    (bench/bench_explanation.py).
    """
    if model.calibration is None:
        raise ValueError("the model has no risk calibration; train it with train_model")
    forecast = model.forecast(windows)
    risk = failure_risk(
        windows.lifetime_cycles,
        windows.rated_cycles,
        forecast,
        model.calibration,
        daily_std=recent_variability(windows.daily_cycles),
        known_days=recent_known_days(windows.daily_cycles),
        wear_beyond=model.wear_beyond(windows),
    )
    scores = pd.DataFrame(
        {
            BATTERY_ID: windows.battery_id,
            CAR_ID: windows.car_id,
            PROBABILITY: risk[PROBABILITY].to_numpy(),
            DAYS_TO_RATED_LIFE: risk[DAYS_TO_RATED_LIFE].to_numpy(),
            LIFETIME_CYCLES: windows.lifetime_cycles,
            RATED_CYCLES: windows.rated_cycles,
            AS_OF: pd.to_datetime(windows.as_of),
            **{column: risk[column].to_numpy() for column in INTERVAL_COLUMNS},
        }
    )
    reasons = pd.Series([[] for _ in range(len(windows))], dtype=object)
    if explain_from is not None:
        explained = np.flatnonzero(scores[PROBABILITY].to_numpy() >= explain_from)
        reasons[explained] = pd.Series(battery_reasons(model, windows.take(explained), forecast[explained]),
                                       index=explained, dtype=object)  # fmt: skip
    scores[REASONS] = reasons
    return scores, forecast


def batteries_in_service(clean: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """The clean rows up to as_of of batteries that are in a car on as_of.

    In service = reported within the IN_SERVICE_DAYS days up to as_of (inclusive) and the newest battery
    of its car (installed last; an older battery that still reported after its replacement was fitted,
    e.g. a late backlog, is not in the car any more).
    """
    day = pd.Timestamp(as_of)
    seen = clean[clean[DATE] <= day]
    span = seen.groupby(BATTERY_ID, sort=False).agg(first=(DATE, "min"), last=(DATE, "max"), car=(CAR_ID, "last"))
    newest_of_car = span.sort_values(["first", "last"]).groupby("car", sort=False).tail(1).index
    recent = span.index[span["last"] > day - pd.Timedelta(days=IN_SERVICE_DAYS)]
    keep = newest_of_car.intersection(recent)
    return seen[seen[BATTERY_ID].isin(keep)]


def score_fleet(
    model: Forecaster, clean: pd.DataFrame, as_of: date, threshold: float = ALERT_THRESHOLD
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every battery in service on as_of from data up to as_of only.

    Returns SCORES (BATCH_SCORES_TABLE: BATCH_SCORE_COLUMNS + alert = probability >= threshold + reasons, given
    to the alerted batteries, + the interval of days to rated life), one row per battery, and FORECAST
    (Battery_ID, Date, Daily_Cycles_Used) for each of the 30 days after as_of.
    """
    in_service = batteries_in_service(clean, as_of)
    windows = build_windows(in_service, as_of=as_of, window_days=model.window_days)
    scores, forecast = score_windows(model, windows, explain_from=threshold)
    scores = scores.assign(alert=scores[PROBABILITY] >= threshold)[BATCH_SCORES_TABLE]
    return scores, forecast_frame(windows.battery_id, as_of, forecast)


def forecast_frame(battery_id: np.ndarray, as_of: date, forecast: np.ndarray) -> pd.DataFrame:
    """The (n, 30) forecast of batteries scored as of a day as FORECAST rows (Battery_ID, Date,
    Daily_Cycles_Used), battery by battery: the batch file, whichever engine scored it."""
    days = pd.Timestamp(as_of) + pd.to_timedelta(np.arange(1, HORIZON_DAYS + 1), unit="D")
    return pd.DataFrame(
        {
            BATTERY_ID: np.repeat(battery_id, HORIZON_DAYS),
            DATE: np.tile(days.to_numpy(), len(battery_id)),
            DAILY_CYCLES: np.asarray(forecast, dtype=np.float64).reshape(-1, HORIZON_DAYS).ravel(),
        }
    )
