"""Data preparation: dirty telemetry in, one clean row per battery and day out, and a report of what changed.

Cars report the way cars do: some every 12 hours, some twice, some not for a week, some with a lifetime
counter that hiccups. The forecaster needs one row per battery and calendar day with no holes, and an
operator needs to know what was repaired. `prepare_telemetry` does both, in stages that each fix one kind
of problem and count what they touched:

1. rows: exact duplicates dropped, near duplicates (same battery and timestamp) collapsed to their
   median, a battery replaced under the same id split into "<id>#2", "#3"..., and glitches set to
   missing: implausible values, a lifetime counter out of line with its neighbours, a rated-cycles value
   that is not the battery's own, an age that contradicts the calendar.
2. days: the rows of one calendar day merged (sum of trips, minutes and cycles; last lifetime counter;
   min age and rated cycles), then each battery re-indexed to contiguous days.
3. repairs: the cycles of a missing day come from the lifetime counter, which kept counting while the car
   was silent; what the counter cannot tell comes from the battery's own ratios (cycles per minute,
   minutes per trip), and only when nothing better is known from time interpolation.
4. consistency: the lifetime counter is recomputed as the running sum of the repaired daily cycles,
   anchored at the readings (as the lab recomputed it), so it never runs backwards.

Everything is vectorised over the fleet: rows are sorted by battery and time once, so every per-battery
step is a shift, a cumulative sum or a `reduceat` over contiguous groups, never a loop over batteries.
Telemetry that needs no repair (a scoring request usually is one clean row per battery and day) skips
stages 1 to 3 after a vectorised check, with the same result (`_needs_no_repair`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from shared.core.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_ID,
    COLUMNS,
    DAILY_CYCLES,
    DATE,
    LIFETIME_CYCLES,
    MEASURE_COLUMNS,
    PLAUSIBLE_RANGES,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
    InputError,
)

IMPUTED = "Imputed"
CLEAN_COLUMNS = [*COLUMNS, IMPUTED]
SUMMED_COLUMNS = [TRIPS, TRIP_MINUTES, DAILY_CYCLES]

# Lifetime-counter readings may disagree by this many cycles (rounding, near-duplicate jitter) before one
# of them is called a glitch; a glitch is far larger, and a day of driving uses 0.1–0.5 cycles.
COUNTER_TOLERANCE = 0.5
# A reported age may be a day off the battery's calendar (reports sent around midnight), not more.
AGE_TOLERANCE_DAYS = 1
# No day can use more cycles than this, so a counter rise faster than this over a gap is not trusted.
MAX_DAILY_CYCLES = PLAUSIBLE_RANGES[DAILY_CYCLES][1]
_NO_ROW = -1


@dataclass
class DataQualityReport:
    """What preparation received, returned and changed; it goes into the model's metadata and report.

    `counts` maps a problem to how many rows or values it touched, in the order preparation met them.
    Rows: exact_duplicates and near_duplicates are rows folded into an earlier copy;
    twelve_hour_rows_merged are rows that shared their calendar day with others (each such day keeps
    one row); missing_days_filled are days added; series_split_at_replacement counts batteries found
    replaced under the same id; batteries_dropped are battery lives with a column that has no usable
    value at all (detail in "batteries_dropped.no_<column>"). Values: blank_values and glitch_values
    (detail in "blank_values.<column>", "glitch_values.<column>") were missing or set to missing, then
    filled like the missing days: lifetime_gap_reconciled days got their cycles from the lifetime
    counter, "filled_from_ratio.<column>" values from a related column, "interpolated.<column>" values
    from time interpolation. lifetime_counter_corrected counts counter readings that the recomputed
    counter differs from by more than COUNTER_TOLERANCE.
    """

    rows_in: int
    rows_out: int
    batteries_in: int
    batteries_out: int
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready (plain ints), for metadata.json."""
        return {
            "rows_in": int(self.rows_in),
            "rows_out": int(self.rows_out),
            "batteries_in": int(self.batteries_in),
            "batteries_out": int(self.batteries_out),
            "counts": {name: int(count) for name, count in self.counts.items()},
        }

    def to_markdown(self) -> str:
        """A two-column table for the human-readable report."""
        lines = ["| data quality | count |", "| --- | ---: |"]
        totals = [("rows in", self.rows_in), ("rows out", self.rows_out)]
        totals += [("batteries in", self.batteries_in), ("batteries out", self.batteries_out)]
        lines += [f"| {name} | {count:,} |" for name, count in [*totals, *self.counts.items()]]
        return "\n".join(lines)


def prepare_telemetry(raw: pd.DataFrame) -> tuple[pd.DataFrame, DataQualityReport]:
    """Clean typed telemetry into the daily frame the forecaster consumes, and report what was changed.

    `raw` is typed as `coerce_telemetry` returns it (Date datetime64, ids str, measures float64 with NaN
    for blanks); a frame that is not raises `InputError` naming the column. The result has the columns
    COLUMNS + ["Imputed"], one row per (Battery_ID, Date) with contiguous midnight dates per battery,
    sorted by Battery_ID then Date, a RangeIndex and no NaN; Imputed marks a day that preparation added
    or repaired. A battery replaced under the same id continues as "<id>#2", "<id>#3"...
    """
    rows, battery_ids, car_ids = _typed_rows_by_battery_and_time(raw)
    counts: dict[str, int] = {}
    if _needs_no_repair(rows):
        grid, segments = _grid_as_reported(rows, len(battery_ids), counts)
    else:
        grid, segments = _repaired_grid(rows, counts)
    _recompute_lifetime_counter(grid, counts)
    clean = _clean_frame(grid, _segment_ids(segments, battery_ids), car_ids, counts)
    report = DataQualityReport(
        rows_in=len(raw),
        rows_out=len(clean),
        batteries_in=len(battery_ids),
        batteries_out=_count_runs(clean[BATTERY_ID].to_numpy()),
        counts=counts,
    )
    return clean, report


def _count_runs(values: np.ndarray) -> int:
    """Distinct values of a sorted array: its runs of equal values (cheaper than hashing every row)."""
    return int(len(values) and 1 + np.count_nonzero(values[1:] != values[:-1]))


def _repaired_grid(rows: _Rows, counts: dict[str, int]) -> tuple[_Days, _Segments]:
    """Stages 1 to 3: rows repaired, merged per day, re-indexed to contiguous days and filled."""
    rows = _drop_exact_duplicates(rows, counts)
    _count_blank_values(rows, counts)
    _set_missing(rows, _implausible_values(rows), counts)
    rows = _collapse_near_duplicates(rows, counts)
    segments = _split_at_replacements(rows, counts)
    rated_cycles = _rated_cycles_per_segment(rows, segments)
    install_day = _install_day_per_segment(rows, segments)
    _set_missing(
        rows,
        {
            LIFETIME_CYCLES: _counter_glitches(rows),
            RATED_CYCLES: _foreign_rated_cycles(rows, rated_cycles),
            AGE_DAYS: _ages_off_calendar(rows, install_day),
        },
        counts,
    )
    days = _merge_rows_per_day(rows, segments, counts)
    del rows  # at fleet scale the arrays are gigabytes: keep only what the next step needs
    grid = _calendar_grid(days, counts)
    del days
    grid.values[RATED_CYCLES] = rated_cycles[grid.segment]
    _fill_age(grid, install_day)
    _fill_cycles_minutes_trips(grid, counts)
    return grid, segments


# --- the fast path: telemetry that needs no repair -------------------------------------------------------
# A scoring request is usually already one clean row per battery and day (the Function App sends what it
# stored). Checking that takes a few vectorised comparisons; the repair stages cost ten times as much and
# would change nothing. tests/test_preparation.py checks both paths give the same frame and report.

# Every count the repair stages make, in their order, for the fast path to report as zero.
_REPAIR_COUNTS = [
    "exact_duplicates", "blank_values", "glitch_values", "near_duplicates", "series_split_at_replacement",
    "twelve_hour_rows_merged", "missing_days_filled", "lifetime_gap_reconciled",
    *(f"{kind}.{column}" for column in (DAILY_CYCLES, TRIP_MINUTES, TRIPS)
      for kind in ("filled_from_ratio", "interpolated")),
]  # fmt: skip


def _needs_no_repair(rows: _Rows) -> bool:
    """Whether the repair stages would leave every row as it is.

    That is: no blank and no implausible value; each battery's rows on consecutive calendar days, one
    a day; its lifetime counter rising 0 to MAX_DAILY_CYCLES from each row to the next (so no reading is
    out of line and no replacement shows); one rated-cycles value; and an age that grows with the
    calendar (report day − age constant, so no age is off it).
    """
    values = rows.values
    if any(np.isnan(column).any() for column in values.values()):
        return False
    if any(glitch.any() for glitch in _implausible_values(rows).values()):
        return False
    same_battery = rows.battery[1:] == rows.battery[:-1]
    rise = np.diff(values[LIFETIME_CYCLES])
    steady = (
        (np.diff(rows.day) == 1)
        & (rise >= 0)
        & (rise <= MAX_DAILY_CYCLES)
        & (values[RATED_CYCLES][1:] == values[RATED_CYCLES][:-1])
        & (np.diff(rows.day - values[AGE_DAYS]) == 0)
    )
    return bool((steady | ~same_battery).all())


def _grid_as_reported(rows: _Rows, n_batteries: int, counts: dict[str, int]) -> tuple[_Days, _Segments]:
    """The daily grid of rows that need no repair: one battery life per battery, each row one day."""
    counts |= dict.fromkeys(_REPAIR_COUNTS, 0)
    rows.segment = rows.battery
    segments = _Segments(battery=np.arange(n_batteries), number=np.ones(n_batteries, np.int64))
    grid = _Days(
        segment=rows.segment,
        n_segments=n_batteries,
        day=rows.day,
        car=rows.car,
        values=rows.values,
        reported=np.ones(len(rows), bool),
        repaired=np.zeros(len(rows), bool),
    )
    return grid, segments


# --- contiguous groups --------------------------------------------------------------------------------
# Rows are sorted so that each battery (later: each battery life, each day) is one contiguous block; these
# helpers answer per-row questions about its block with cumulative numpy operations, for all blocks at once.


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each group: a run of elements whose keys are all equal."""
    starts = np.ones(len(keys[0]), bool)
    starts[1:] = np.logical_or.reduce([key[1:] != key[:-1] for key in keys])
    return np.flatnonzero(starts)


def _group_ends(starts: np.ndarray, n: int) -> np.ndarray:
    """Index of the last element of each group, from the groups' first elements and the element count."""
    return _shifted(starts, -1, n) - 1


def _group_bounds(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each element of sorted group codes, the index of the first and of the last element of its group."""
    starts = _group_starts(codes)
    group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(codes))))
    return starts[group], _group_ends(starts, len(codes))[group]


def _running_sum(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each group (the elements that share `first`, their group's first index).

    Summed group by group rather than as one fleet-long sum less an offset: a battery's sums then do not
    depend, to the last bit, on the batteries before it, so a battery prepared alone or in any group of
    cars (the Spark job, shared/spark/job.py) gets exactly the values it gets in the whole fleet.
    """
    return pd.Series(values).groupby(first, sort=False).cumsum().to_numpy()


def _previous_valid(valid: np.ndarray, first: np.ndarray, inclusive: bool = False) -> np.ndarray:
    """Index of the nearest valid element before each element (or at it, if inclusive) in its group."""
    latest = np.maximum.accumulate(np.where(valid, np.arange(len(valid)), _NO_ROW))
    if not inclusive:
        latest = _shifted(latest, 1, _NO_ROW)
    return np.where(latest >= first, latest, _NO_ROW)


def _next_valid(valid: np.ndarray, last: np.ndarray, inclusive: bool = False) -> np.ndarray:
    """Index of the nearest valid element after each element (or at it, if inclusive) in its group."""
    n = len(valid)
    earliest = np.minimum.accumulate(np.where(valid, np.arange(n), n)[::-1])[::-1]
    if not inclusive:
        earliest = _shifted(earliest, -1, n)
    return np.where(earliest <= last, earliest, _NO_ROW)


def _shifted(array: np.ndarray, by: int, fill) -> np.ndarray:
    """`array` moved `by` places later (negative: earlier), `fill` in the places left empty."""
    out = np.full(len(array), fill, dtype=array.dtype)
    if 0 < by < len(array):
        out[by:] = array[:-by]
    elif 0 < -by < len(array):
        out[:by] = array[-by:]
    return out


# --- rows ---------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """Telemetry rows sorted by battery then time, as numpy arrays of equal length."""

    battery: np.ndarray  # int code into the sorted battery ids
    time: np.ndarray  # datetime64[us]
    day: np.ndarray  # calendar day, as days since 1970-01-01
    car: np.ndarray  # int code into the sorted car ids
    values: dict[str, np.ndarray]  # float64 per measure column, NaN where blank or a glitch
    segment: np.ndarray | None = None  # battery life, once _split_at_replacements has run

    def __len__(self) -> int:
        return len(self.battery)

    def take(self, index: np.ndarray) -> _Rows:
        """The rows at `index`: positions (to reorder) or a boolean mask (to drop: much faster)."""
        return _Rows(
            battery=self.battery[index],
            time=self.time[index],
            day=self.day[index],
            car=self.car[index],
            values={column: values[index] for column, values in self.values.items()},
            segment=None if self.segment is None else self.segment[index],
        )


@dataclass
class _Segments:
    """Battery lives: a Battery_ID, or the part of its series after a replacement under the same id."""

    battery: np.ndarray  # battery code of each segment
    number: np.ndarray  # 1 for the original battery, 2 after the first replacement, ...

    def __len__(self) -> int:
        return len(self.battery)


def _typed_rows_by_battery_and_time(raw: pd.DataFrame) -> tuple[_Rows, np.ndarray, np.ndarray]:
    """Check the frame is typed telemetry and sort it by battery and time; also return the distinct ids."""
    missing = [column for column in COLUMNS if column not in raw.columns]
    if missing:
        raise InputError(f"telemetry: missing column(s): {', '.join(missing)}")
    if not pd.api.types.is_datetime64_dtype(raw[DATE]):
        raise InputError(
            f"column {DATE}: expected naive datetime64 values (see coerce_telemetry), got {raw[DATE].dtype}"
        )
    _reject_rows(raw, DATE, raw[DATE].isna().to_numpy(), "empty date")
    for column in MEASURE_COLUMNS:
        if not pd.api.types.is_numeric_dtype(raw[column]):
            raise InputError(f"column {column}: expected numbers (see coerce_telemetry), got {raw[column].dtype}")
    battery, battery_ids = _id_codes(raw, BATTERY_ID)
    car, car_ids = _id_codes(raw, CAR_ID)
    time = raw[DATE].to_numpy().astype("datetime64[us]")
    rows = _Rows(
        battery=battery,
        time=time,
        day=time.astype("datetime64[D]").astype(np.int64),
        car=car,
        values={column: raw[column].to_numpy(dtype=np.float64, na_value=np.nan) for column in MEASURE_COLUMNS},
    )
    return rows.take(np.lexsort((time.view(np.int64), battery))), battery_ids, car_ids


def _id_codes(raw: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """An id column as codes into its sorted, stripped distinct values; an empty id is an InputError.

    Stripping the distinct values rather than every row keeps this fast on millions of rows.
    """
    codes, distinct = pd.factorize(raw[column])
    text = pd.Series(np.asarray(distinct, dtype=object)).astype(str).str.strip()
    blank = codes < 0
    blank[~blank] = (text == "").to_numpy()[codes[~blank]]
    _reject_rows(raw, column, blank, "empty id")
    stripped_codes, ids = pd.factorize(text, sort=True)
    return stripped_codes[codes].astype(np.int64), np.asarray(ids, dtype=object)


def _reject_rows(raw: pd.DataFrame, column: str, bad: np.ndarray, reason: str) -> None:
    if bad.any():
        shown = ", ".join(str(label) for label in raw.index[bad][:5])
        raise InputError(f"column {column}: {reason} on row(s) {shown} ({int(bad.sum())} in all)")


def _same_key_runs(rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Rows sharing battery and timestamp with a neighbour (`in_run`), and the first row of each such run."""
    same_as_previous = np.zeros(len(rows), bool)
    same_as_previous[1:] = (rows.battery[1:] == rows.battery[:-1]) & (rows.time[1:] == rows.time[:-1])
    in_run = same_as_previous | _shifted(same_as_previous, -1, False)
    return in_run, in_run & ~same_as_previous


def _drop_exact_duplicates(rows: _Rows, counts: dict[str, int]) -> _Rows:
    """Drop rows identical in every column to an earlier one (a message delivered twice)."""
    in_run, _ = _same_key_runs(rows)
    candidates = np.flatnonzero(in_run)
    subset = pd.DataFrame(
        {"battery": rows.battery[candidates], "time": rows.time[candidates], "car": rows.car[candidates]}
        | {column: values[candidates] for column, values in rows.values.items()}
    )
    duplicate = np.zeros(len(rows), bool)
    duplicate[candidates] = subset.duplicated().to_numpy()
    counts["exact_duplicates"] = int(duplicate.sum())
    return rows.take(~duplicate)


def _count_blank_values(rows: _Rows, counts: dict[str, int]) -> None:
    per_column = {column: int(np.isnan(values).sum()) for column, values in rows.values.items()}
    counts["blank_values"] = sum(per_column.values())
    counts |= {f"blank_values.{column}": n for column, n in per_column.items() if n}


def _implausible_values(rows: _Rows) -> dict[str, np.ndarray]:
    """Values outside what a car can physically report (PLAUSIBLE_RANGES: negative counts and the like)."""
    return {
        column: (rows.values[column] < low) | (rows.values[column] > high)
        for column, (low, high) in PLAUSIBLE_RANGES.items()
    }


def _set_missing(rows: _Rows, glitches: dict[str, np.ndarray], counts: dict[str, int]) -> None:
    """Turn glitch values into blanks, to be repaired like any other blank, and count them per column."""
    counts.setdefault("glitch_values", 0)
    for column, glitch in glitches.items():
        rows.values[column][glitch] = np.nan
        n = int(glitch.sum())
        counts["glitch_values"] += n
        if n:
            key = f"glitch_values.{column}"
            counts[key] = counts.get(key, 0) + n


def _collapse_near_duplicates(rows: _Rows, counts: dict[str, int]) -> _Rows:
    """Collapse rows with the same battery and timestamp into one holding their median values.

    Re-sent messages that differ slightly (a rounded value, a late field) describe the same moment; the
    median skips a copy's blank or glitch (already missing) and outvotes one odd copy among three.
    """
    in_run, run_start = _same_key_runs(rows)
    members = np.flatnonzero(in_run)
    run_of_member = np.cumsum(run_start[members]) - 1
    medians = (
        pd.DataFrame({column: values[members] for column, values in rows.values.items()})
        .groupby(run_of_member)
        .median()
    )
    first_of_run = np.flatnonzero(run_start)
    for column, values in rows.values.items():
        values[first_of_run] = medians[column].to_numpy()
    folded = in_run & ~run_start
    counts["near_duplicates"] = int(folded.sum())
    return rows.take(~folded)


def _split_at_replacements(rows: _Rows, counts: dict[str, int]) -> _Segments:
    """Give each row its battery life (`rows.segment`): its id's rows, cut where the battery was replaced.

    A replacement under the same id shows as the lifetime counter and the age both falling back, and
    staying back (the next counter reading is also below the old battery's last one): one glitching
    field, or one garbled row, does not split a series.
    """
    counter, age = rows.values[LIFETIME_CYCLES], rows.values[AGE_DAYS]
    first, last = _group_bounds(rows.battery)
    readable = ~np.isnan(counter) & ~np.isnan(age)
    before = _previous_valid(readable, first)
    has_before = before != _NO_ROW
    before = np.where(has_before, before, 0)
    below_old = counter[before] - COUNTER_TOLERANCE
    falls_back = has_before & readable & (counter < below_old) & (age < age[before])
    after = _next_valid(~np.isnan(counter), last)
    stays_back = (after == _NO_ROW) | (counter[np.where(after == _NO_ROW, 0, after)] < below_old)
    replaced = falls_back & stays_back
    counts["series_split_at_replacement"] = int(replaced.sum())

    starts_life = (first == np.arange(len(rows))) | replaced
    rows.segment = np.cumsum(starts_life) - 1
    replacements_so_far = np.cumsum(replaced)
    number = replacements_so_far - replacements_so_far[first] + 1
    life_starts = np.flatnonzero(starts_life)
    return _Segments(battery=rows.battery[life_starts], number=number[life_starts])


def _counter_glitches(rows: _Rows) -> np.ndarray:
    """Lifetime-counter readings out of line with the readings around them in the same battery life.

    Found in passes: once a glitch is set aside, a second one right next to it shows (see
    `_out_of_line_readings`). Three passes catch runs of three; longer runs are left to the gap
    repair, which does not use a rise no car could drive, and to the median anchor of the recompute.
    """
    counter = rows.values[LIFETIME_CYCLES]
    glitch = np.zeros(len(rows), bool)
    suspect = ~np.isnan(counter)
    for _ in range(3):
        readings = np.flatnonzero(suspect & ~glitch)
        found = _out_of_line_readings(counter[readings], rows.segment[readings], rows.time[readings])
        glitch[readings[found]] = True
        # Only the battery lives where a glitch was just set aside can show a new one.
        suspect &= np.isin(rows.segment, rows.segment[readings[found]])
        if not found.any():
            break
    return glitch


def _out_of_line_readings(value: np.ndarray, life: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Which of a battery life's counter readings (sorted by time) are glitches.

    The counter never runs backwards, so a reading below all of (up to) three readings before it is a
    dip, and one above all of the three after it is a spike; it takes two readings on that side to
    say so. A first reading from which the counter would have to rise faster than MAX_DAILY_CYCLES a
    day to reach the next one is a dip too, and a last reading reached that fast a spike. (A slower
    rise is a silent stretch of driving, which the gap repair uses.)
    """

    same_life = {by: _shifted(life, -by, -1) == life for by in (-3, -2, -1, 1, 2, 3)}

    def neighbour(array: np.ndarray, by: int, fill) -> np.ndarray:
        """`array` at the reading `by` places later (earlier if negative); `fill` outside the battery life."""
        return np.where(same_life[by], _shifted(array, -by, fill), fill)

    def beyond_all(contradicts: np.ndarray, side: np.ndarray) -> np.ndarray:
        present = ~np.isnan(side)
        return (present.sum(axis=0) >= 2) & (contradicts | ~present).all(axis=0)

    earlier = np.stack([neighbour(value, -k, np.nan) for k in (1, 2, 3)])
    later = np.stack([neighbour(value, k, np.nan) for k in (1, 2, 3)])
    out_of_line = beyond_all(value < earlier - COUNTER_TOLERANCE, earlier) | beyond_all(
        value > later + COUNTER_TOLERANCE, later
    )
    days_to_next = (neighbour(time, 1, np.datetime64("NaT")) - time) / np.timedelta64(1, "D")
    too_fast = later[0] - value > MAX_DAILY_CYCLES * np.maximum(days_to_next, 1) + COUNTER_TOLERANCE
    first_dip = np.isnan(earlier[0]) & too_fast & ~neighbour(out_of_line, 1, True)
    last_spike = np.isnan(later[0]) & neighbour(too_fast, -1, False) & ~neighbour(out_of_line, -1, True)
    return out_of_line | first_dip | last_spike


def _rated_cycles_per_segment(rows: _Rows, segments: _Segments) -> np.ndarray:
    """The rated cycles each battery life reports most often (NaN if it never reports a plausible one)."""
    rated = rows.values[RATED_CYCLES]
    known = ~np.isnan(rated)
    tally = pd.DataFrame({"life": rows.segment[known], "rated": rated[known]}).value_counts().reset_index()
    most_often = tally.sort_values(["life", "count", "rated"], ascending=[True, False, True]).drop_duplicates("life")
    out = np.full(len(segments), np.nan)
    out[most_often["life"].to_numpy()] = most_often["rated"].to_numpy()
    return out


def _foreign_rated_cycles(rows: _Rows, rated_cycles: np.ndarray) -> np.ndarray:
    """Rated-cycles values that are not the battery's own: a battery does not change its design."""
    rated = rows.values[RATED_CYCLES]
    return ~np.isnan(rated) & (rated != rated_cycles[rows.segment])


def _install_day_per_segment(rows: _Rows, segments: _Segments) -> np.ndarray:
    """The day each battery life was installed: the median of (report day − reported age)."""
    age = rows.values[AGE_DAYS]
    known = ~np.isnan(age)
    implied = pd.Series(rows.day[known] - age[known]).groupby(rows.segment[known]).median()
    out = np.full(len(segments), np.nan)
    out[implied.index.to_numpy()] = np.round(implied.to_numpy())
    return out


def _ages_off_calendar(rows: _Rows, install_day: np.ndarray) -> np.ndarray:
    """Reported ages that contradict the calendar: an age grows by one a day from the installation day."""
    age = rows.values[AGE_DAYS]
    return ~np.isnan(age) & (np.abs(age - (rows.day - install_day[rows.segment])) > AGE_TOLERANCE_DAYS)


# --- days ---------------------------------------------------------------------------------------------


@dataclass
class _Days:
    """Daily rows of each battery life, sorted by life then day; `values` are NaN where unknown."""

    segment: np.ndarray
    n_segments: int
    day: np.ndarray  # days since 1970-01-01
    car: np.ndarray  # car code of the last report on or before the day
    values: dict[str, np.ndarray]
    reported: np.ndarray  # the car sent at least one row that day
    repaired: np.ndarray  # some value of the day is missing (blank or glitch) and gets filled

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """For each day, the index of its battery life's first and last day."""
        return _group_bounds(self.segment)

    def per_segment(self, values: np.ndarray, has_value: np.ndarray, fallback: float = np.nan) -> np.ndarray:
        """Median of `values` (one per day where `has_value`) per battery life, broadcast back to days.

        For an even count it is the lower middle value, not the mean of the two: always one of the
        values, so two camps of readings give one camp's answer rather than a value between them.
        """
        middle = pd.Series(values).groupby(self.segment[has_value]).quantile(0.5, interpolation="lower")
        out = np.full(self.n_segments, fallback)
        out[middle.index.to_numpy(dtype=np.int64)] = middle.to_numpy()
        return out[self.segment]


def _merge_rows_per_day(rows: _Rows, segments: _Segments, counts: dict[str, int]) -> _Days:
    """One row per battery life and calendar day: the lab's resampling of 12-hour rows, for any count.

    Trips, minutes and cycles are summed (a day with a blank part is unknown rather than undercounted);
    the lifetime counter is the last row's reading (the count at the end of the day: an earlier reading
    of the day would misstate it, so a blank there leaves the day's counter unknown); age and rated
    cycles the minimum.
    """
    first = _group_starts(rows.segment, rows.day)
    last = _group_ends(first, len(rows))
    values = {column: np.add.reduceat(rows.values[column], first) for column in SUMMED_COLUMNS}
    values |= {column: np.fmin.reduceat(rows.values[column], first) for column in (AGE_DAYS, RATED_CYCLES)}
    values[LIFETIME_CYCLES] = rows.values[LIFETIME_CYCLES][last]
    rows_per_day = last - first + 1
    counts["twelve_hour_rows_merged"] = int(rows_per_day[rows_per_day > 1].sum())
    return _Days(
        segment=rows.segment[first],
        n_segments=len(segments),
        day=rows.day[first],
        car=rows.car[last],
        values=values,
        reported=np.ones(len(first), bool),
        repaired=np.logical_or.reduce([np.isnan(v) for v in values.values()]),
    )


def _calendar_grid(days: _Days, counts: dict[str, int]) -> _Days:
    """Re-index every battery life to contiguous days from its first to its last report; new days blank."""
    life_starts = _group_starts(days.segment)  # every battery life has a day, so one start per life
    first_day = days.day[life_starts]
    last_day = days.day[_group_ends(life_starts, len(days.day))]
    length = last_day - first_day + 1
    offset = np.cumsum(length) - length
    segment = np.repeat(np.arange(days.n_segments), length)
    reported_at = offset[days.segment] + days.day - first_day[days.segment]

    def spread(values: np.ndarray, fill) -> np.ndarray:
        out = np.full(len(segment), fill, dtype=values.dtype)
        out[reported_at] = values
        return out

    reported = spread(days.reported, False)
    last_report = _previous_valid(reported, offset[segment], inclusive=True)
    counts["missing_days_filled"] = len(segment) - len(days.segment)
    return _Days(
        segment=segment,
        n_segments=days.n_segments,
        day=first_day[segment] + np.arange(len(segment)) - offset[segment],
        car=spread(days.car, _NO_ROW)[last_report],
        values={column: spread(values, np.nan) for column, values in days.values.items()},
        reported=reported,
        repaired=spread(days.repaired, False),
    )


def _fill_age(grid: _Days, install_day: np.ndarray) -> None:
    """Age of a day with no reliable report: days since the battery life's installation day."""
    age = grid.values[AGE_DAYS]
    calendar_age = np.maximum(grid.day - install_day[grid.segment], 0)
    grid.values[AGE_DAYS] = np.where(np.isnan(age), calendar_age, age)


def _fill_cycles_minutes_trips(grid: _Days, counts: dict[str, int]) -> None:
    """Fill unknown cycles, minutes and trips with the best estimate available, most trusted first.

    Cycles: from the lifetime counter's rise over the unknown days, else the day's minutes times the
    battery's cycles per minute, else interpolated. Minutes: cycles divided by that ratio, else
    interpolated. Trips: minutes divided by the battery's minutes per trip, else interpolated. Ratios
    are medians over the battery life's days that report both columns (the fleet's when it has none).
    """
    cycles, minutes, trips = (grid.values[c] for c in (DAILY_CYCLES, TRIP_MINUTES, TRIPS))
    cycles_per_minute = _ratio(grid, cycles, minutes)
    minutes_per_trip = _ratio(grid, minutes, trips)
    first, last = grid.bounds()

    from_counter = _cycles_from_counter_rise(cycles, grid.values[LIFETIME_CYCLES], first, last)
    counts["lifetime_gap_reconciled"] = int((np.isnan(cycles) & ~np.isnan(from_counter)).sum())
    cycles = np.where(np.isnan(cycles), from_counter, cycles)
    cycles = _fill_from_ratio(cycles, minutes * cycles_per_minute, DAILY_CYCLES, counts)
    cycles = _interpolate(cycles, first, last, DAILY_CYCLES, counts)
    minutes = _fill_from_ratio(minutes, cycles / cycles_per_minute, TRIP_MINUTES, counts)
    minutes = _interpolate(minutes, first, last, TRIP_MINUTES, counts)
    trips = _fill_from_ratio(trips, np.round(minutes / minutes_per_trip), TRIPS, counts)
    trips = _interpolate(trips, first, last, TRIPS, counts)
    grid.values |= {DAILY_CYCLES: cycles, TRIP_MINUTES: minutes, TRIPS: trips}


def _ratio(grid: _Days, numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Per day, its battery life's median numerator/denominator over days reporting both (positive)."""
    usable = ~np.isnan(numerator) & (denominator > 0)
    ratios = numerator[usable] / denominator[usable]
    fleet = float(np.median(ratios)) if len(ratios) else np.nan
    ratio = grid.per_segment(ratios, usable, fallback=fleet)
    return np.where(ratio > 0, ratio, np.nan)


def _cycles_from_counter_rise(
    cycles: np.ndarray, counter: np.ndarray, first: np.ndarray, last: np.ndarray
) -> np.ndarray:
    """Cycles of each unknown day from the counter: its rise between two readings, less the known cycles.

    Between readings on days a < b the counter rose by the cycles of every day in (a, b]; what the known
    days do not account for is spread evenly over the unknown ones. A rise that is negative, or faster
    than MAX_DAILY_CYCLES a day, comes from a glitch nobody could pin down: it is not used (NaN).
    """
    unknown = np.isnan(cycles)
    known_so_far = _running_sum(np.where(unknown, 0.0, cycles), first)
    unknown_so_far = np.cumsum(unknown)
    has_reading = ~np.isnan(counter)
    a = _previous_valid(has_reading, first)
    b = _next_valid(has_reading, last, inclusive=True)
    bracketed = unknown & (a != _NO_ROW) & (b != _NO_ROW)
    a, b = np.where(bracketed, a, 0), np.where(bracketed, b, 0)
    unexplained = counter[b] - counter[a] - (known_so_far[b] - known_so_far[a])
    unknown_days = np.maximum(unknown_so_far[b] - unknown_so_far[a], 1)
    plausible = (unexplained >= -COUNTER_TOLERANCE) & (unexplained <= MAX_DAILY_CYCLES * unknown_days)
    return np.where(bracketed & plausible, np.maximum(unexplained, 0) / unknown_days, np.nan)


def _fill_from_ratio(values: np.ndarray, estimate: np.ndarray, column: str, counts: dict[str, int]) -> np.ndarray:
    fill = np.isnan(values) & ~np.isnan(estimate)
    counts[f"filled_from_ratio.{column}"] = int(fill.sum())
    return np.where(fill, estimate, values)


def _interpolate(
    values: np.ndarray, first: np.ndarray, last: np.ndarray, column: str, counts: dict[str, int]
) -> np.ndarray:
    """Linear interpolation within each battery life (its days are contiguous, so this is time
    interpolation); before its first or after its last known value, the nearest known value."""
    known = ~np.isnan(values)
    missing = np.flatnonzero(~known)
    before, after = _previous_valid(known, first)[missing], _next_valid(known, last)[missing]
    has_before, has_after = before != _NO_ROW, after != _NO_ROW
    low = values[np.where(has_before, before, 0)]
    high = values[np.where(has_after, after, 0)]
    share = (missing - before) / np.where(has_before & has_after, after - before, 1)
    estimate = np.where(has_before & has_after, low + (high - low) * share, np.where(has_before, low, high))
    fill = has_before | has_after
    counts[f"interpolated.{column}"] = int(fill.sum())
    filled = values.copy()
    filled[missing[fill]] = estimate[fill]
    return filled


def _recompute_lifetime_counter(grid: _Days, counts: dict[str, int]) -> None:
    """Lifetime counter = counter before the first day + running sum of the repaired daily cycles.

    The starting value is the median over the battery life's readings of (reading − running sum):
    exactly the first valid reading when counter and cycles agree, and not thrown off by a glitch that
    slipped through. A battery life with no reading at all keeps NaN and is dropped as unusable.
    """
    reading, cycles = grid.values[LIFETIME_CYCLES], grid.values[DAILY_CYCLES]
    first, _ = grid.bounds()
    known_cycles = np.where(np.isnan(cycles), 0.0, cycles)  # a life left unusable must not spill into the next
    running = _running_sum(known_cycles, first)
    has_reading = ~np.isnan(reading)
    start = np.maximum(grid.per_segment(reading[has_reading] - running[has_reading], has_reading), 0)
    recomputed = start + running
    counts["lifetime_counter_corrected"] = int((has_reading & (np.abs(recomputed - reading) > COUNTER_TOLERANCE)).sum())
    grid.values[LIFETIME_CYCLES] = recomputed


# --- the clean frame ----------------------------------------------------------------------------------


def _segment_ids(segments: _Segments, battery_ids: np.ndarray) -> np.ndarray:
    """Battery_ID of each battery life: the reported id, then "<id>#2", "<id>#3"... after replacements."""
    ids = battery_ids[segments.battery]
    later = segments.number > 1
    if later.any():
        suffixed = pd.Series(ids[later], dtype=str) + "#" + pd.Series(segments.number[later], dtype=str)
        ids[later] = suffixed.to_numpy(dtype=object)
    return ids


def _clean_frame(grid: _Days, segment_ids: np.ndarray, car_ids: np.ndarray, counts: dict[str, int]) -> pd.DataFrame:
    """Drop battery lives with a column nothing could fill, then type and sort the clean daily frame."""
    lacking = {}
    for column in MEASURE_COLUMNS:
        lacks = np.zeros(grid.n_segments, bool)
        lacks[grid.segment[np.isnan(grid.values[column])]] = True
        lacking[column] = lacks
    unusable = np.logical_or.reduce(list(lacking.values()))
    counts["batteries_dropped"] = int(unusable.sum())
    counts |= {f"batteries_dropped.no_{column}": int(lacks.sum()) for column, lacks in lacking.items() if lacks.any()}

    order = np.flatnonzero(~unusable[grid.segment])
    if not pd.Index(segment_ids).is_monotonic_increasing:  # e.g. "1!" sorts between "1" and "1#2"
        rank = np.argsort(np.argsort(segment_ids, kind="stable"), kind="stable")
        order = order[np.argsort(rank[grid.segment[order]], kind="stable")]

    def integers(column: str) -> np.ndarray:
        return np.round(grid.values[column][order]).astype(np.int64)

    return pd.DataFrame(
        {
            DATE: grid.day[order].astype("datetime64[D]").astype("datetime64[us]"),
            BATTERY_ID: pd.Series(segment_ids[grid.segment[order]], dtype=object),
            CAR_ID: pd.Series(car_ids[grid.car[order]], dtype=object),
            AGE_DAYS: integers(AGE_DAYS),
            TRIPS: integers(TRIPS),
            TRIP_MINUTES: grid.values[TRIP_MINUTES][order],
            DAILY_CYCLES: grid.values[DAILY_CYCLES][order],
            LIFETIME_CYCLES: grid.values[LIFETIME_CYCLES][order],
            RATED_CYCLES: integers(RATED_CYCLES),
            IMPUTED: ~grid.reported[order] | grid.repaired[order],
        }
    )
