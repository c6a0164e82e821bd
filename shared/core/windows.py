"""Battery windows: each battery's recent daily history as rows of fixed-width 2-D arrays.

This is the one representation everything scores from. The nightly batch builds it from the clean daily
frame (`build_windows`), the online endpoint from the history in a request, and training slices it out
of the whole fleet history at many origins (`FleetHistory.windows_at`). Features are then computed from
the arrays with numpy over all batteries at once, so the three paths share one feature code and none of
them loops over batteries in Python.

Column W-1 of a window is the battery's as-of day, column 0 is W-1 days earlier; NaN means "no report
that day" (before the battery's first report, or after its last one when windows are aligned at a
common as-of date).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from shared.core.risk import HORIZON_DAYS
from shared.core.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_ID,
    DAILY_CYCLES,
    DATE,
    LIFETIME_CYCLES,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
    InputError,
)

# 13 whole weeks: enough for the 91-day level and for every weekday to appear 13 times.
DEFAULT_WINDOW_DAYS = 91
# Days used to estimate a battery's recent daily rate when its lifetime counter must be carried forward.
RECENT_DAYS = 28

WINDOW_COLUMNS = [DATE, BATTERY_ID, CAR_ID, AGE_DAYS, TRIPS, TRIP_MINUTES, DAILY_CYCLES, LIFETIME_CYCLES, RATED_CYCLES]


@dataclass(frozen=True)
class BatteryWindows:
    """n batteries aligned at their as-of dates; the last W days of each as (n, W) arrays, NaN = unknown."""

    battery_id: np.ndarray  # (n,) str
    car_id: np.ndarray  # (n,) str
    rated_cycles: np.ndarray  # (n,) float
    lifetime_cycles: np.ndarray  # (n,) float, the counter at the end of the as-of day
    as_of: np.ndarray  # (n,) datetime64[D]
    age_days: np.ndarray  # (n,) float, battery age on the as-of day
    daily_cycles: np.ndarray  # (n, W)
    trip_minutes: np.ndarray  # (n, W)
    trips: np.ndarray  # (n, W)

    def __len__(self) -> int:
        return len(self.battery_id)

    @property
    def window_days(self) -> int:
        return self.daily_cycles.shape[1]

    def take(self, rows: np.ndarray) -> BatteryWindows:
        """The windows of a subset of batteries (an index or boolean array); the arrays are copies."""
        return BatteryWindows(**{name: value[rows] for name, value in vars(self).items()})


def build_windows(
    clean: pd.DataFrame, as_of: date | None = None, window_days: int = DEFAULT_WINDOW_DAYS
) -> BatteryWindows:
    """The last `window_days` days of every battery in a clean daily frame.

    as_of=None aligns each battery at its own last report (the online endpoint: "score what you sent").
    With as_of, only rows up to as_of are used and every battery is aligned at as_of (the nightly batch):
    days after a battery's last report are unknown, and its lifetime counter and age are carried forward
    at its recent daily rate, because the car counts cycles even on days it does not report.
    Batteries with no row on or before as_of are left out (they did not exist yet).
    """
    _require_columns(clean, WINDOW_COLUMNS)
    if window_days < 1:
        raise ValueError(f"window_days must be at least 1, got {window_days}")
    frame = clean
    if as_of is not None:
        frame = frame[frame[DATE] <= pd.Timestamp(as_of)]
    day, battery, order = _index_rows(frame)
    n = int(battery.max()) + 1 if len(battery) else 0
    last = _last_row_of_each(battery[order])
    last_rows = order[last]
    last_day = day[last_rows]
    anchor = last_day if as_of is None else np.full(n, _day_number(as_of), dtype=np.int64)

    offset = day - anchor[battery] + (window_days - 1)
    inside = offset >= 0
    arrays = _pivot(frame, inside, battery, offset, (n, window_days), [DAILY_CYCLES, TRIP_MINUTES, TRIPS])

    gap_days = (anchor - last_day).astype(np.float64)
    lifetime = frame[LIFETIME_CYCLES].to_numpy(np.float64)[last_rows]
    lifetime = lifetime + gap_days * _recent_daily_rate(frame, day, battery, last_day, n)
    return BatteryWindows(
        battery_id=frame[BATTERY_ID].to_numpy(dtype=object)[last_rows],
        car_id=frame[CAR_ID].to_numpy(dtype=object)[last_rows],
        rated_cycles=frame[RATED_CYCLES].to_numpy(np.float64)[last_rows],
        lifetime_cycles=lifetime,
        as_of=anchor.astype("datetime64[D]"),
        age_days=frame[AGE_DAYS].to_numpy(np.float64)[last_rows] + gap_days,
        daily_cycles=arrays[DAILY_CYCLES],
        trip_minutes=arrays[TRIP_MINUTES],
        trips=arrays[TRIPS],
    )


@dataclass(frozen=True)
class FleetHistory:
    """Every battery's whole clean history on one shared calendar, as (n, D) arrays (NaN = no report).

    Training and the backtest need windows at hundreds of origins; slicing them out of this panel costs
    a copy each, where rebuilding them from the long frame would cost a group-by each.
    """

    battery_id: np.ndarray  # (n,)
    car_id: np.ndarray  # (n,)
    rated_cycles: np.ndarray  # (n,)
    first_day: np.datetime64  # calendar day of column 0
    daily_cycles: np.ndarray  # (n, D)
    trip_minutes: np.ndarray
    trips: np.ndarray
    lifetime_cycles: np.ndarray
    age_days: np.ndarray

    @property
    def n_days(self) -> int:
        return self.daily_cycles.shape[1]

    def reported(self) -> np.ndarray:
        """(n, D) bool: the battery has a row that day."""
        return ~np.isnan(self.lifetime_cycles)

    def windows_at(
        self, day: int | np.ndarray, rows: np.ndarray, window_days: int = DEFAULT_WINDOW_DAYS
    ) -> BatteryWindows:
        """Windows of batteries `rows` aligned at calendar column `day` (one for all, or one per row),
        seeing nothing after it."""
        day = np.broadcast_to(np.asarray(day, dtype=np.int64), np.shape(rows))
        columns = day[:, None] + np.arange(1 - window_days, 1)
        before_start = columns < 0
        columns = np.maximum(columns, 0)

        def cut(values: np.ndarray) -> np.ndarray:
            window = values[rows[:, None], columns]
            window[before_start] = np.nan
            return window

        return BatteryWindows(
            battery_id=self.battery_id[rows],
            car_id=self.car_id[rows],
            rated_cycles=self.rated_cycles[rows],
            lifetime_cycles=self.lifetime_cycles[rows, day],
            as_of=(self.first_day + day).astype("datetime64[D]"),
            age_days=self.age_days[rows, day],
            daily_cycles=cut(self.daily_cycles),
            trip_minutes=cut(self.trip_minutes),
            trips=cut(self.trips),
        )


def build_history(clean: pd.DataFrame) -> FleetHistory:
    """The clean daily frame pivoted onto one calendar from its first to its last date."""
    _require_columns(clean, WINDOW_COLUMNS)
    if clean.empty:
        raise InputError("no telemetry rows to build a history from")
    day, battery, order = _index_rows(clean)
    n = int(battery.max()) + 1
    first_day = int(day.min())
    shape = (n, int(day.max()) - first_day + 1)
    columns = [DAILY_CYCLES, TRIP_MINUTES, TRIPS, LIFETIME_CYCLES, AGE_DAYS]
    arrays = _pivot(clean, np.ones(len(day), dtype=bool), battery, day - first_day, shape, columns)
    last_rows = order[_last_row_of_each(battery[order])]
    return FleetHistory(
        battery_id=clean[BATTERY_ID].to_numpy(dtype=object)[last_rows],
        car_id=clean[CAR_ID].to_numpy(dtype=object)[last_rows],
        rated_cycles=clean[RATED_CYCLES].to_numpy(np.float64)[last_rows],
        first_day=np.datetime64(first_day, "D"),
        daily_cycles=arrays[DAILY_CYCLES],
        trip_minutes=arrays[TRIP_MINUTES],
        trips=arrays[TRIPS],
        lifetime_cycles=arrays[LIFETIME_CYCLES],
        age_days=arrays[AGE_DAYS],
    )


# One training origin a week per battery: neighbouring origins are near duplicates (see _lightgbm.py).
TRAINING_ORIGIN_EVERY_DAYS = 7
TRAINING_ARRAYS = ["daily_cycles", "trip_minutes", "trips"]
TARGET = "target_daily_cycles"


def training_samples(
    clean: pd.DataFrame, every_days: int = TRAINING_ORIGIN_EVERY_DAYS, window_days: int = DEFAULT_WINDOW_DAYS
) -> pd.DataFrame:
    """The windowed training set of a clean daily frame: one row per (battery, origin day), sorted so.

    Origins are the days, one in `every_days` of the calendar (day number since 1970 divisible by it),
    on which a battery reported and reported on each of the HORIZON_DAYS days after. A row holds the
    window as of the origin (As_Of, lifetime, age, rated cycles and the `window_days`-long arrays of
    TRAINING_ARRAYS) and the HORIZON_DAYS actual daily cycles after it (TARGET). Every choice is made
    per battery on absolute days, so the set of a fleet is the union of the sets of any split of it by
    car: a Spark job can build it group by group (shared/spark/job.py).
    """
    if every_days < 1:
        raise ValueError(f"every_days must be at least 1, got {every_days}")
    history = build_history(clean)
    reported = history.reported()
    span = HORIZON_DAYS + 1
    running = np.pad(np.cumsum(reported, axis=1, dtype=np.int32), ((0, 0), (1, 0)))
    complete = running[:, span:] - running[:, :-span] == span  # column d: days d..d+30 all reported
    calendar = _day_number(pd.Timestamp(history.first_day)) + np.arange(complete.shape[1])
    battery, origin = np.nonzero(complete & (calendar % every_days == 0))
    windows = history.windows_at(origin, battery, window_days)
    target = history.daily_cycles[battery[:, None], origin[:, None] + np.arange(1, span)]
    return pd.DataFrame(
        {
            BATTERY_ID: windows.battery_id,
            CAR_ID: windows.car_id,
            "As_Of": pd.to_datetime(windows.as_of),
            RATED_CYCLES: windows.rated_cycles,
            LIFETIME_CYCLES: windows.lifetime_cycles,
            AGE_DAYS: windows.age_days,
            **{name: list(getattr(windows, name)) for name in TRAINING_ARRAYS},
            TARGET: list(target),
        }
    )


def _require_columns(frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"clean telemetry is missing column(s): {', '.join(missing)}")


def _day_number(value: date | pd.Timestamp) -> int:
    return int(np.datetime64(pd.Timestamp(value).date(), "D").astype(np.int64))


def _index_rows(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: its day number, its battery's code, and the row order sorted by (battery, day).

    Raises InputError on a repeated (battery, day): the clean contract has one row per battery and day,
    and silently keeping one of two rows would hide a preparation bug.
    """
    day = frame[DATE].to_numpy("datetime64[D]").astype(np.int64)
    battery, _ = pd.factorize(frame[BATTERY_ID].to_numpy(dtype=object), sort=False)
    order = np.lexsort((day, battery))
    repeated = (np.diff(battery[order]) == 0) & (np.diff(day[order]) == 0)
    if repeated.any():
        row = order[1:][repeated][0]
        raise InputError(
            f"clean telemetry has {int(repeated.sum())} repeated (Battery_ID, Date) row(s), e.g. battery "
            f"{frame[BATTERY_ID].iloc[row]!r} on {frame[DATE].iloc[row]:%Y-%m-%d}"
        )
    return day, battery, order


def _last_row_of_each(sorted_battery: np.ndarray) -> np.ndarray:
    """Positions (in the sorted order) of each battery's last row; battery codes are 0..n-1."""
    return np.flatnonzero(np.diff(sorted_battery, append=sorted_battery.max(initial=-1) + 1) != 0)


def _pivot(
    frame: pd.DataFrame,
    rows: np.ndarray,
    battery: np.ndarray,
    column: np.ndarray,
    shape: tuple[int, int],
    names: list[str],
) -> dict[str, np.ndarray]:
    """Scatter the selected rows into preallocated NaN arrays at (battery code, column)."""
    arrays = {}
    for name in names:
        values = np.full(shape, np.nan)
        values[battery[rows], column[rows]] = frame[name].to_numpy(np.float64)[rows]
        arrays[name] = values
    return arrays


def _recent_daily_rate(
    frame: pd.DataFrame, day: np.ndarray, battery: np.ndarray, last_day: np.ndarray, n: int
) -> np.ndarray:
    """Each battery's mean daily cycles over the RECENT_DAYS before its last report."""
    recent = day > last_day[battery] - RECENT_DAYS
    cycles = frame[DAILY_CYCLES].to_numpy(np.float64)
    total = np.bincount(battery[recent], weights=cycles[recent], minlength=n)
    count = np.bincount(battery[recent], minlength=n)
    return total / np.maximum(count, 1)
