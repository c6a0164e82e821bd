"""Telemetry: the daily battery record every car reports, its schema, and how raw input becomes typed.

The columns are fixed by docs/contracts.md ("Data"). Everything that reads telemetry — the CSV loader behind the
CLI, the Event Hub function, the scoring endpoint — goes through `coerce_telemetry`, so a value that is
unparsable in one path is unparsable in all of them, with the same words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DATE = "Date"
BATTERY_ID = "Battery_ID"
CAR_ID = "Car_ID"
AGE_DAYS = "Battery_Age_Days"
TRIPS = "Number_Of_Trips"
TRIP_MINUTES = "Daily_Trip_Duration"
DAILY_CYCLES = "Daily_Cycles_Used"
LIFETIME_CYCLES = "Lifetime_Cycles_Used"
RATED_CYCLES = "Battery_Rated_Cycles"

KEY_COLUMNS = [DATE, BATTERY_ID, CAR_ID]
MEASURE_COLUMNS = [AGE_DAYS, TRIPS, TRIP_MINUTES, DAILY_CYCLES, LIFETIME_CYCLES, RATED_CYCLES]
COLUMNS = [*KEY_COLUMNS, *MEASURE_COLUMNS]
INTEGER_COLUMNS = [AGE_DAYS, TRIPS, RATED_CYCLES]

CAR_COLUMNS = ["Car_ID", "Make", "Model_Year", "Engine_Type", "Region", "Purchase_Date"]

# What a real car can physically report for one day. Values outside are glitches: preparation repairs
# them (and counts them), the streaming path dead-letters the event that carries them.
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    AGE_DAYS: (0, 20 * 366),
    TRIPS: (0, 200),
    TRIP_MINUTES: (0, 24 * 60),
    DAILY_CYCLES: (0, 10),
    LIFETIME_CYCLES: (0, 100_000),
    RATED_CYCLES: (1, 100_000),
}


# The longest id accepted, in characters. Azure Table keys hold 1 KiB of UTF-16 (512 code units; any
# character is 1 or 2 of them), so every id of up to 256 characters fits a key as it is: the alert store
# keys by Car_ID. The gateway client percent-encodes the id into a URL path segment.
MAX_ID_LENGTH = 256
# What no id may contain: / \ # ? (Table keys cannot hold them; in a URL path they end or escape the
# segment), control characters (Table keys cannot hold them either) and lone surrogates (not text: UTF-8
# cannot encode them).
_ID_FORBIDDEN = re.compile("[/\\\\#?\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The days a datetime64[ns] holds (pandas' nanosecond range): every date this system stores is one of them.
FIRST_DAY, LAST_DAY = "1677-09-22", "2262-04-11"


class InputError(ValueError):
    """Input that cannot be used as it is; the message names the source, the column and the first bad rows.

    The CLI turns it into exit code 2. It is raised only for problems no repair can fix (a missing
    column, an unparsable value, an empty file); repairable problems are counted by preparation.
    """


@dataclass(frozen=True)
class RowProblem:
    """One input row that cannot be used, and why (the dead-letter reason in the streaming path)."""

    row: int
    column: str
    value: object
    reason: str


def id_problem(value: object) -> str | None:
    """Why `value` cannot be a Car_ID or Battery_ID (a string naming the problem), or None if it can.

    An id becomes a Table storage key (alert store, battery state), a URL path segment (the head-unit
    gateway) and text in UTF-8 blobs (archive, dead letters), so it must be something all of them can hold:
    a non-empty string of at most `MAX_ID_LENGTH` characters, not "." or ".." (which a URL path resolves
    away), with no / \\ # ?, no control character (U+0000-U+001F, U+007F-U+009F) and no lone surrogate
    (which UTF-8 cannot encode). The streaming path refuses such ids at the door; the delivery side checks
    the same rule before it stores or sends.
    """
    if not isinstance(value, str):
        return f"not a string ({type(value).__name__})"
    if not value:
        return "empty id"
    if len(value) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters ({len(value):,})"
    if value in (".", ".."):
        return f"{value!r} is not allowed as an id (a URL path resolves it away)"
    found = _ID_FORBIDDEN.search(value)
    if found is None:
        return None
    character = found.group()
    if character in "/\\#?":
        return f"contains {character!r}, which storage keys and URL paths cannot hold"
    if "\ud800" <= character <= "\udfff":
        return f"contains a lone surrogate U+{ord(character):04X}, which is not text (UTF-8 cannot encode it)"
    return f"contains the control character U+{ord(character):04X}"


def coerce_telemetry(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[RowProblem]]:
    """Type raw string/object columns per the schema; return the typed frame and the rows that failed.

    Dates become datetime64 (day or 12-hour timestamps), ids stripped strings, measures float64.
    An empty measure is allowed (NaN, a gap preparation fills and counts); an empty date or id, or a
    value that is not a number or date, is a problem for that row. Rows with problems are left out of
    the returned frame; the caller decides whether that is fatal (CSV) or a dead letter (events).
    Text is stripped and parsed once per distinct value (see `_distinct_text`): a categorical id column
    or a datetime64 date column (as the scoring endpoint builds them) costs next to nothing per row.
    """
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(f"missing column(s): {', '.join(missing)}")
    problems: list[RowProblem] = []
    typed: dict[str, np.ndarray | pd.Series] = {}  # by row position: the frame is built once, at the end

    codes, text = _distinct_text(raw[DATE])
    dates = pd.to_datetime(pd.Series(text, dtype="string"), errors="coerce", format="ISO8601")
    outside = ((dates < pd.Timestamp.min) | (dates > pd.Timestamp.max)).to_numpy(bool)  # pandas ≥ 3 parses them
    typed[DATE] = _per_row(dates.where(~outside).astype("datetime64[ns]").to_numpy(), codes,
                           np.datetime64("NaT", "ns"))  # fmt: skip
    outside = _per_row(outside, codes, False)
    problems += _problems(raw, DATE, outside, f"outside the dates this system holds ({FIRST_DAY} to {LAST_DAY})")
    problems += _problems(raw, DATE, np.isnat(typed[DATE]) & ~outside, "not a date (expected YYYY-MM-DD)")
    for column in (BATTERY_ID, CAR_ID):
        codes, text = _distinct_text(raw[column])
        typed[column] = pd.Series(_per_row(text, codes, None), dtype=object)  # not pandas' inferred "str"
        problems += _problems(raw, column, _per_row(text == "", codes, True), "empty id")
    for column in MEASURE_COLUMNS:
        numbers, blank = _numbers(raw[column])
        typed[column] = numbers
        problems += _problems(raw, column, np.isnan(numbers) & ~blank | np.isinf(numbers), "not a number")
    frame = pd.DataFrame(typed)
    if not problems:
        return frame, problems
    keep = ~raw.index.isin(list({p.row for p in problems}))
    return frame[keep].reset_index(drop=True), problems


def _distinct_text(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The column as codes into its distinct values (-1 where missing) and those values as stripped text.

    Ids and dates repeat over many rows: stripping and parsing each distinct value once, instead of
    every row, is what keeps typing a large batch fast (an endpoint request holds 240,000 rows). The text
    is what `values.astype("string").str.strip()` gives, whatever the column held (strings, numbers).
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes, distinct = values.cat.codes.to_numpy(np.int64), values.cat.categories
    else:
        codes, distinct = pd.factorize(values)
    text = pd.Series(distinct).astype("string").str.strip()
    return codes, text.to_numpy(dtype=object, na_value=None)


def _per_row(distinct: np.ndarray, codes: np.ndarray, missing) -> np.ndarray:
    """Each row's value from the values of its code; `missing` where the code is -1.

    The `missing` value is appended last, so code -1 picks it up by numpy's negative indexing.
    """
    return np.append(distinct, np.array([missing], dtype=distinct.dtype))[codes]


def _numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A measure column as float64, and where it was blank (a gap, not an error).

    A column that already holds numbers (parsed JSON) is taken as it is; text (CSV) is stripped and parsed.
    """
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(np.float64, na_value=np.nan)
        return numbers, np.isnan(numbers)
    codes, text = _distinct_text(values)
    blank = _per_row(text == "", codes, True)
    text = pd.Series(text, dtype="string")
    parsed = pd.to_numeric(text.where(text != ""), errors="coerce")
    return _per_row(parsed.to_numpy(np.float64, na_value=np.nan), codes, np.nan), blank


def _problems(raw: pd.DataFrame, column: str, mask: np.ndarray, reason: str) -> list[RowProblem]:
    return [RowProblem(row=int(i), column=column, value=raw.at[i, column], reason=reason) for i in raw.index[mask]]


def implausible_values(frame: pd.DataFrame) -> pd.Series:
    """For each row, the first column holding a physically impossible value and why, or None.

    Used by preparation to flag glitches and by the streaming path to dead-letter events. The words are
    made only for the rows at fault.
    """
    reasons = np.full(len(frame), None, dtype=object)
    found = np.zeros(len(frame), bool)
    for column, (low, high) in PLAUSIBLE_RANGES.items():
        values = frame[column].to_numpy(np.float64, na_value=np.nan)
        fresh = np.flatnonzero(((values < low) | (values > high)) & ~found)
        reasons[fresh] = [f"{column}={v:g} outside [{low:g}, {high:g}]" for v in values[fresh]]
        found[fresh] = True
    return pd.Series(reasons, index=frame.index, dtype=object)


def read_telemetry_csv(path: str | Path) -> pd.DataFrame:
    """Read a telemetry CSV into the typed schema, or raise `InputError` naming file, column and rows.

    Row numbers in messages are the file's line numbers (the header is line 1).
    """
    raw = _read_csv(path)
    try:
        typed, problems = coerce_telemetry(raw)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    if problems:
        raise InputError(f"{path}: {describe_problems(problems, line_offset=2)}")
    return typed


def read_cars_csv(path: str | Path) -> pd.DataFrame:
    """Read the car metadata table (one row per Car_ID) or raise `InputError`."""
    raw = _read_csv(path)
    missing = [c for c in CAR_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: missing column(s): {', '.join(missing)}")
    cars = raw[CAR_COLUMNS].copy()
    cars["Car_ID"] = cars["Car_ID"].astype("string").str.strip().astype(object)
    year = pd.to_numeric(cars["Model_Year"], errors="coerce")
    bad = year.isna() & cars["Model_Year"].notna()
    if bad.any():
        lines = ", ".join(str(i + 2) for i in cars.index[bad][:5])
        raise InputError(f"{path}: column Model_Year: not a number on line(s) {lines}")
    cars["Model_Year"] = year.astype("Int64")
    cars["Purchase_Date"] = pd.to_datetime(cars["Purchase_Date"], errors="coerce", format="ISO8601")
    duplicated = cars["Car_ID"].duplicated()
    if duplicated.any():
        lines = ", ".join(str(i + 2) for i in cars.index[duplicated][:5])
        raise InputError(f"{path}: column Car_ID: duplicate car on line(s) {lines}")
    return cars


def describe_problems(problems: Iterable[RowProblem], line_offset: int = 0, limit: int = 5) -> str:
    """One message for a set of row problems: the first column at fault and its first bad rows."""
    problems = sorted(problems, key=lambda p: (p.row, COLUMNS.index(p.column)))
    first = problems[0]
    same = [p for p in problems if p.column == first.column and p.reason == first.reason]
    shown = ", ".join(f"line {p.row + line_offset} ({p.value!r})" for p in same[:limit])
    more = f" and {len(same) - limit} more" if len(same) > limit else ""
    others = len({p.row for p in problems}) - len({p.row for p in same})
    tail = f"; {others} other row(s) have problems too" if others > 0 else ""
    return f"column {first.column}: {first.reason} on {shown}{more}{tail}"


def read_csv_text(path: str | Path) -> pd.DataFrame:
    """Any CSV input as text columns (empty cells NaN), or `InputError` for a missing, empty or unreadable file.

    For inputs other than telemetry (e.g. component notes), so every CSV fails the same way.
    """
    return _read_csv(path)


def _read_csv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable CSV ({error})") from None
    if raw.empty:
        raise InputError(f"{path}: the file has a header but no rows")
    return raw
