"""Scoring endpoint: a request of docs/contracts.md "Scoring endpoint" (fixed) in, its response out.

`score_body` is everything `scoring/score.py` does between azmlinfsrv and the model, kept here as a
pure function so it is tested without a server; `score_request` is the same on an already parsed body.
It is the batch path's code on the request's rows: each item's history rows are laid out as columns
with the item's Battery_ID, Car_ID and Battery_Rated_Cycles, then coerce_telemetry → prepare_telemetry →
build_windows (each battery at its own last day) → score_windows, so the same model files give the same
probability here as in the batch path.

Speed (issue 3: 1,000 batteries of 240 days, a 39 MB body, in under a second): a body of exactly the
contract's shape — what the Function App sends — is decoded by msgspec straight into typed structs, in
C and without a dict per row; the measures become numpy columns in one pass, dates datetime64 days and
ids categoricals, so coerce_telemetry types each distinct value once (and preparation skips its repair
stages for rows that need none). Any other body is decoded as plain JSON and checked item by item:
slower, and only for requests that carry a mistake. bench/bench_endpoint.py measures it.

Nothing is dropped in silence: an item that cannot be scored — not an object, a missing field, a value
of the wrong type, an empty history, an impossible value, a Battery_ID sent twice — gets its own
`error` and no numbers, and the other items are still scored. A body that is not the contract's shape
raises `RequestError` (HTTP 400); one over the size limits raises `RequestTooLarge` (HTTP 413).
A `null` measure is a gap, as a blank cell is in a CSV: preparation fills it and counts it.

A body that is not JSON at all — invalid UTF-8, nesting too deep to decode, a truncated body — is a
`RequestError` too, and so is a body in which an object repeats a key (see `_refuse_repeated_keys`).
Error messages show a bounded excerpt of the offending value, never the whole of it.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import json
import math
import operator
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np
import pandas as pd

from shared.core.alerts import REASONS
from shared.core.preparation import prepare_telemetry
from shared.core.risk import (
    DAYS_P10,
    DAYS_P50,
    DAYS_P90,
    DAYS_TO_RATED_LIFE,
    HORIZON_DAYS,
    INTERVAL_COLUMNS,
    PROBABILITY,
)
from shared.core.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_ID,
    COLUMNS,
    DAILY_CYCLES,
    DATE,
    INTEGER_COLUMNS,
    LIFETIME_CYCLES,
    MEASURE_COLUMNS,
    PLAUSIBLE_RANGES,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
    coerce_telemetry,
    implausible_values,
)
from shared.core.windows import build_windows
from shared.models._lightgbm import METADATA_FILE
from shared.models.base import Forecaster
from shared.models.scoring import score_windows

HISTORY = "history"
HISTORY_FIELDS = [DATE, AGE_DAYS, TRIPS, TRIP_MINUTES, DAILY_CYCLES, LIFETIME_CYCLES]
# One request is scored in one go, in one worker: these bound its memory and time (a 1,000-battery
# request of 240 days each is about 30 MB of JSON). Clients split bigger batches (ScoringClient does).
MAX_BATTERIES_PER_REQUEST = 1_000
MAX_HISTORY_ROWS_PER_REQUEST = 400_000
# The body's size, checked before it is read (Content-Length) and while it is read (scoring/score.py):
# room for the row limit in the Function App's encoding (about 165 bytes a row), and a bound on the
# worker's memory (a request's body, decoded, costs about three times its size).
MAX_BODY_BYTES = 64 * 1024 * 1024
# How long a client may go silent in the middle of its body before it gets 408 (scoring/score.py).
BODY_IDLE_TIMEOUT_S = 10.0
# azmlinfsrv's own bounds, set where it runs (shared/devtools/inference_server.py locally, shared/adapters/azureml.py in
# Azure ML): run() as a whole — reading the body and scoring it — within SCORING_TIMEOUT_MS (its alarm;
# Azure ML's request timeout is the same 30 s), and gunicorn's --timeout (WORKER_TIMEOUT, seconds) kills
# and restarts a worker held longer than that anywhere, a client stuck in its headers included.
SERVER_ENVIRONMENT = {"SCORING_TIMEOUT_MS": "30000", "WORKER_TIMEOUT": "60"}
# Dates preparation can hold (pandas' nanosecond timestamps run from 1677-09-21 to 2262-04-11), and how
# many days one battery's history may span: preparation fills every day between its first and last row.
FIRST_DATE, LAST_DATE = np.datetime64("1678-01-01"), np.datetime64("2261-12-31")
MAX_HISTORY_SPAN_DAYS = int(PLAUSIBLE_RANGES[AGE_DAYS][1])  # as long as a battery may be old
# Predictions at or above this probability carry `reasons` (see scoring.score_windows for why not all);
# below any sensible alert threshold, so every alert the streaming path raises has the model's reasons.
EXPLAIN_FROM_PROBABILITY = 0.5

EXAMPLE_ITEM = {
    BATTERY_ID: "17", CAR_ID: "CAR-00017", RATED_CYCLES: 200,
    HISTORY: [{DATE: "2017-03-19", AGE_DAYS: 1538, TRIPS: 5, TRIP_MINUTES: 61.2, DAILY_CYCLES: 0.15,
               LIFETIME_CYCLES: 196.4}],
}  # fmt: skip
EXAMPLE_RESPONSE = {
    "model_version": "20170320T030000Z-1a2b3c4d",
    "predictions": [
        {BATTERY_ID: "17", CAR_ID: "CAR-00017", PROBABILITY: 0.93, DAYS_TO_RATED_LIFE: 12.5,
         "forecast_daily_cycles": [0.15] * HORIZON_DAYS, "error": None,
         REASONS: ["battery has used 98% of its rated cycles (196 of 200)"],
         DAYS_P10: 9.4, DAYS_P50: 12.4, DAYS_P90: 15.8},
    ],
}  # fmt: skip


class RequestError(ValueError):
    """The body is not the contract's shape: the endpoint answers HTTP 400 with this message."""

    status = 400


class RequestTooLarge(RequestError):
    """The request is over the size limits: HTTP 413; the client should send smaller chunks."""

    status = 413


class RequestTimeout(RequestError):
    """The body did not arrive in time (a stalled or trickling client): HTTP 408, worth sending again."""

    status = 408


def score_body(model: Forecaster, body: bytes) -> dict[str, Any]:
    """The response body for a raw request body (the bytes POSTed to /score).

    A JSON syntax error, or a body that is not an object with `data`, is a `RequestError`, worded as
    azmlinfsrv words them for an entry script that lets it parse the body.
    """
    try:
        request = _CONTRACT.decode(body)
    except _UNDECODABLE:  # not exactly the contract, or not JSON: find out what is wrong, item by item
        parsed = _parsed(body)
        _refuse_repeated_keys(body, _keys_at_contract_levels(parsed))
        return score_request(model, _data_of(parsed))
    history_lengths = [len(item.history) for item in request.data]
    _check_size(request.data, history_lengths)
    _refuse_repeated_keys(body, 1 + len(_ContractItem.__struct_fields__) * len(request.data)
                          + len(_Row.__struct_fields__) * sum(history_lengths))  # fmt: skip
    return _respond(model, [_check_values(*_struct_fields(item)) for item in request.data], _struct_columns)


def score_request(model: Forecaster, data: Any) -> dict[str, Any]:
    """The response body for the request's parsed `data` (the list of battery items), in the items' order."""
    if not isinstance(data, list):
        raise RequestError(f"'data' must be a JSON array of battery items, got {_kind(data)}")
    histories = [item[HISTORY] for item in data if isinstance(item, dict) and isinstance(item.get(HISTORY), list)]
    _check_size(data, [len(history) for history in histories])
    return _respond(model, [_check_item(item) for item in data], _dict_columns)


def find_model_dir(root: str | Path) -> Path:
    """The model directory under AZUREML_MODEL_DIR.

    Locally (`--model_dir`) it is the directory itself; Azure ML mounts a registered folder model one
    level down, under the folder's own name.
    """
    root = Path(root)
    if (root / METADATA_FILE).is_file():
        return root
    found = [child for child in sorted(root.iterdir()) if (child / METADATA_FILE).is_file()]
    if len(found) != 1:
        raise FileNotFoundError(f"{root}: expected one model directory (with {METADATA_FILE}), found {len(found)}")
    return found[0]


_Columns = Callable[[list, "_Batch"], dict[str, Any]]  # the history rows as one numpy column per field


def _respond(model: Forecaster, items: list[_Item], columns: _Columns) -> dict[str, Any]:
    """Score checked items: their rows laid out by `columns`, typed, prepared, scored."""
    batch = _flatten(items, columns)
    typed = _typed_rows(batch)
    scores = _score(model, typed, batch)
    return {"model_version": model.version, "predictions": _predictions(batch, scores)}


# --- the request --------------------------------------------------------------------------------------

# The contract as msgspec structs, for the fast decode. A value that does not fit (a missing field, a
# string where a number belongs, a boolean, a date not written YYYY-MM-DD) fails the decode, and the body
# takes the item-by-item path. Dates decode to datetime.date and measures to float (a JSON integer too).
_Row = msgspec.defstruct(
    "HistoryRow", [(DATE, datetime.date), *((field, float | None) for field in HISTORY_FIELDS[1:])], gc=False
)
_ContractItem = msgspec.defstruct(
    "BatteryItem", [(BATTERY_ID, str | int), (CAR_ID, str), (RATED_CYCLES, int | float), (HISTORY, list[_Row])],
    gc=False,
)  # fmt: skip
_CONTRACT = msgspec.json.Decoder(msgspec.defstruct("ScoringRequest", [("data", list[_ContractItem])], gc=False))
# Any JSON; a number beyond float range is ±inf (refused as "not a number" for its item), as json.loads reads it.
_ANY_JSON = msgspec.json.Decoder(float_hook=float)
# What msgspec raises for a body it cannot decode: not JSON or not the shape (DecodeError), a string that
# is not UTF-8, arrays or objects nested deeper than the interpreter's recursion limit.
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_EPOCH = datetime.date(1970, 1, 1).toordinal()  # datetime64 counts days from here
_struct_fields = operator.attrgetter(BATTERY_ID, CAR_ID, RATED_CYCLES, HISTORY)


def _parsed(body: bytes) -> Any:
    try:
        return _ANY_JSON.decode(body)
    except msgspec.DecodeError as error:
        problem = f"could not be decoded as JSON: {error}" if body else "is empty. Expecting a JSON dictionary."
        raise RequestError(f"POST body {problem}") from None
    except UnicodeDecodeError as error:
        byte = error.object[error.start]  # the offset is within the string msgspec was decoding, not the body
        raise RequestError(f"POST body is not valid UTF-8: {error.reason} (byte {byte:#04x})") from None
    except RecursionError:
        raise RequestError("POST body nests arrays or objects too deeply to decode") from None


class _RepeatedKey(ValueError):
    pass


def _refuse_repeated_keys(body: bytes, keys: int) -> None:
    """Refuse (HTTP 400, naming the key) a body in which an object repeats a key.

    Readers disagree on which of the two values counts (msgspec and json keep the last, others the
    first), so such a body means different requests to different readers: it is refused, not guessed.
    `keys` is how many keys the decode found in the objects it kept. Each key is followed by exactly
    one colon, so a body with no more colons than that repeats no key; that count is the whole cost
    for the Function App's requests. Only when there are more (a colon inside a string, an extra
    field, a repeated key) is the body read again by json, whose pairs hook sees every key.
    """
    if _colons(body) <= keys:
        return
    try:
        json.loads(body, object_pairs_hook=_without_repeated_keys)
    except _RepeatedKey as repeated:
        raise RequestError(f"POST body repeats the key {_shown(repeated.args[0])} in one object; "
                           "each key may appear once per object") from None  # fmt: skip
    except (ValueError, RecursionError):  # msgspec read it; json refuses it (say, too deep for it): refuse
        raise RequestError("POST body could not be checked for repeated keys") from None


def _without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: the object as a dict, or _RepeatedKey with the first key it repeats."""
    as_dict = dict(pairs)
    if len(as_dict) < len(pairs):
        counts = collections.Counter(key for key, _ in pairs)
        raise _RepeatedKey(next(key for key, count in counts.items() if count > 1))
    return as_dict


_COUNT_STEP = 256 * 1024  # bytes compared at once: the comparison's scratch array stays in cache


def _colons(body: bytes) -> int:
    """How many b":" the body holds; numpy in cache-sized steps, a third of bytes.count's time."""
    view = np.frombuffer(body, dtype=np.uint8)
    return sum(int(np.count_nonzero(view[start : start + _COUNT_STEP] == ord(":")))
               for start in range(0, len(view), _COUNT_STEP))  # fmt: skip


def _keys_at_contract_levels(body: Any) -> int:
    """The keys of the body's objects where the contract has objects: the body, its items, their rows."""
    if not isinstance(body, dict):
        return 0
    data = body.get("data")
    items = [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
    rows = [item[HISTORY] for item in items if isinstance(item.get(HISTORY), list)]
    row_keys = sum(len(row) for row in itertools.chain.from_iterable(rows) if isinstance(row, dict))
    return len(body) + sum(map(len, items)) + row_keys


def _data_of(body: Any) -> Any:
    if not isinstance(body, dict):
        raise RequestError("POST body should be a JSON dictionary.")
    if "data" not in body:
        raise RequestError("A value is not provided for the 'data' parameter.")
    return body["data"]


def check_body_size(size: int, what: str = "the body") -> None:
    """Refuse (HTTP 413) a body of more than MAX_BODY_BYTES; `what` says where the size comes from."""
    if size > MAX_BODY_BYTES:
        raise RequestTooLarge(f"{what} is {size:,} bytes; the limit is {MAX_BODY_BYTES:,}: "
                              "send fewer batteries or fewer days per request")  # fmt: skip


def _check_size(items: list, history_lengths: list[int]) -> None:
    if len(items) > MAX_BATTERIES_PER_REQUEST:
        raise RequestTooLarge(
            f"{len(items):,} batteries in one request; the limit is {MAX_BATTERIES_PER_REQUEST:,}: "
            "send them in smaller requests"
        )
    rows = sum(history_lengths)
    if rows > MAX_HISTORY_ROWS_PER_REQUEST:
        raise RequestTooLarge(
            f"{rows:,} history rows in one request; the limit is {MAX_HISTORY_ROWS_PER_REQUEST:,}: "
            "send fewer batteries or fewer days per request"
        )


class _Item(NamedTuple):
    """One battery item as checked: its ids, rated cycles and history rows, or why it cannot be scored."""

    battery_id: str | None  # stripped; None when unusable
    car_id: str | None
    rated_cycles: Any
    history: Sequence[Any]  # rows: dicts (plain JSON) or `_Row` structs (the contract's decode)
    error: str | None


@dataclass
class _Batch:
    """The items of one request, the first error of each, and all usable history rows in one raw frame."""

    battery_ids: list[str | None]  # per item, stripped; None when unusable
    car_ids: list[str | None]
    errors: list[str | None]
    row_item: np.ndarray  # per row: the item it belongs to
    row_position: np.ndarray  # per row: its index in the item's history
    rows: pd.DataFrame | None = None  # raw COLUMNS, one row per history entry of the items without an error

    def flag_rows(self, rows: Sequence[int], reasons: Sequence[str]) -> None:
        """Give each row's item the reason of its first problem row; an item keeps its first error."""
        for row, reason in sorted(zip(rows, reasons, strict=True)):
            item = int(self.row_item[row])
            if self.errors[item] is None:
                self.errors[item] = f"history[{int(self.row_position[row])}]: {reason}"


def _flatten(items: list[_Item], history_columns: _Columns) -> _Batch:
    """Lay the history rows of the items without an error out as one frame of raw COLUMNS.

    `history_columns(rows, batch)` gives each HISTORY_FIELDS field of every row as a numpy array or
    categorical. The ids are categorical, one code per row into the items' ids, so coerce_telemetry
    strips each id once.
    """
    battery_ids = [item.battery_id for item in items]
    errors = [item.error for item in items]
    _flag_repeated_batteries(battery_ids, errors)
    usable = [i for i, error in enumerate(errors) if error is None]
    lengths = np.array([len(items[i].history) for i in usable], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    batch = _Batch(
        battery_ids=battery_ids,
        car_ids=[item.car_id for item in items],
        errors=errors,
        row_item=np.repeat(np.array(usable, dtype=np.int64), lengths),
        row_position=np.arange(int(lengths.sum())) - np.repeat(starts, lengths),
    )
    history = list(itertools.chain.from_iterable(items[i].history for i in usable))
    columns = history_columns(history, batch)
    item_of_row = np.repeat(np.arange(len(usable)), lengths)
    car_codes, cars = pd.factorize(np.array([batch.car_ids[i] for i in usable], dtype=object))
    columns[BATTERY_ID] = pd.Categorical.from_codes(item_of_row, [battery_ids[i] for i in usable])
    columns[CAR_ID] = pd.Categorical.from_codes(car_codes[item_of_row], cars)
    columns[RATED_CYCLES] = np.array([float(items[i].rated_cycles) for i in usable])[item_of_row]
    batch.rows = pd.DataFrame({name: columns[name] for name in COLUMNS})
    return batch


def _struct_columns(history: list, batch: _Batch) -> dict[str, np.ndarray]:
    """The history rows of the contract's decode as columns; msgspec has checked every value's type.

    The measures are read in one pass in C over all rows (a tuple per row, chained into one float64
    array). Dates become datetime64 days; coerce_telemetry still types the few distinct ones, as for
    any input.
    """
    measures = HISTORY_FIELDS[1:]
    per_row, size = operator.attrgetter(*measures), len(measures) * len(history)
    try:
        values = np.fromiter(itertools.chain.from_iterable(map(per_row, history)), np.float64, size)
    except TypeError:  # a null (a gap) among them: numpy reads None as NaN
        values = np.array(list(map(per_row, history)), dtype=np.float64)
    values = values.reshape(len(history), len(measures))
    days = np.fromiter(map(datetime.date.toordinal, map(operator.attrgetter(DATE), history)), np.int64, len(history))
    return {DATE: (days - _EPOCH).astype("M8[D]")} | {field: values[:, i] for i, field in enumerate(measures)}


def _dict_columns(history: list[dict], batch: _Batch) -> dict[str, np.ndarray | pd.Categorical]:
    return {field: _dict_column(history, field, batch) for field in HISTORY_FIELDS}


def _dict_column(history: list[dict], field: str, batch: _Batch) -> np.ndarray | pd.Categorical:
    """One field of every history row of plain JSON; a value missing or of the wrong type fails its item.

    Dates come out as categorical strings, measures as float64 (null = a gap, NaN). The lookups run in C
    (a request can hold 400,000 rows), and so does checking the set of types: only when a row lacks the
    field, or some value is of the wrong type, does it go row by row to say where.
    """
    try:
        values = list(map(operator.itemgetter(field), history))
    except KeyError:
        values = [row.get(field, _ABSENT) for row in history]
    is_date = field == DATE
    if not set(map(type, values)) <= ({str} if is_date else {int, float, type(None)}):
        for row, value in enumerate(values):
            reason = _value_problem(value, is_date)
            if reason:
                batch.flag_rows([row], [f"{field} {reason}"])
                values[row] = None
    if is_date:  # as categorical strings: coerce_telemetry parses each distinct date once
        codes, dates = pd.factorize(np.array(values, dtype=object))
        return pd.Categorical.from_codes(codes, dates)
    try:
        return np.fromiter(values, dtype=np.float64, count=len(values))
    except (TypeError, OverflowError):  # a null, or an integer beyond float range, among the numbers
        return np.array([_float(value) for value in values], dtype=np.float64)


def _float(value: int | float | None) -> float:
    """A JSON number as a float: null is NaN (a gap), an integer beyond float range ±inf (refused later)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _value_problem(value: Any, is_date: bool) -> str | None:
    if value is _ABSENT or (value is None and is_date):
        return "is missing"
    if is_date and not isinstance(value, str):
        return f"must be a YYYY-MM-DD string, got {_shown(value)}"
    if not is_date and (isinstance(value, bool) or not isinstance(value, int | float | type(None))):
        return f"must be a number, got {_shown(value)}"
    return None


class _Absent:
    """Marks a field an object does not have (unlike an explicit null)."""

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _check_item(item: Any) -> _Item:
    """One item of plain JSON, checked: all but the values inside its history rows."""
    if not isinstance(item, dict):
        return _Item(None, None, None, [], f"item must be a JSON object, got {_kind(item)}")
    checked = _check_values(*(item.get(field, _ABSENT) for field in (BATTERY_ID, CAR_ID, RATED_CYCLES, HISTORY)))
    if checked.error is None and set(map(type, checked.history)) != {dict}:
        position, row = next((p, row) for p, row in enumerate(checked.history) if not isinstance(row, dict))
        return checked._replace(error=f"history[{position}] must be a JSON object, got {_kind(row)}")
    return checked


def _check_values(battery: Any, car: Any, rated: Any, history: Any) -> _Item:
    """An item's fields checked (`_ABSENT` for a field it lacks), the ids stripped; all but its rows."""
    battery_id = str(battery).strip() if isinstance(battery, str | int) and not isinstance(battery, bool) else None
    car_id = car.strip() if isinstance(car, str) else None

    def failed(error: str, battery_id: str | None = battery_id, car_id: str | None = car_id) -> _Item:
        return _Item(battery_id, car_id, rated, [], error)

    for field, value in zip((BATTERY_ID, CAR_ID, RATED_CYCLES, HISTORY), (battery, car, rated, history), strict=True):
        if value is _ABSENT or value is None:
            return failed(f"{field} is missing")
    if battery_id is None:
        return failed(f"{BATTERY_ID} must be a string or an integer, got {_shown(battery)}", battery_id=None)
    if car_id is None:
        return failed(f"{CAR_ID} must be a string, got {_shown(car)}", car_id=None)
    if not battery_id or not car_id:
        return failed(f"{BATTERY_ID if not battery_id else CAR_ID} is empty", battery_id or None, car_id or None)
    if not _is_finite_number(rated):
        return failed(f"{RATED_CYCLES} must be a number, got {_shown(rated)}")
    if not isinstance(history, list) or not history:
        return failed(f"{HISTORY} must be a non-empty array of daily records, got {_kind(history)}")
    return _Item(battery_id, car_id, rated, history, None)


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _flag_repeated_batteries(battery_ids: list[str | None], errors: list[str | None]) -> None:
    """A battery sent twice is ambiguous (which history is right?): every copy gets an error."""
    positions: dict[str, list[int]] = {}
    for index, battery in enumerate(battery_ids):
        if battery is not None and errors[index] is None:
            positions.setdefault(battery, []).append(index)
    for battery, where in positions.items():
        for index in where if len(where) > 1 else []:
            errors[index] = f"{BATTERY_ID} {_shown(battery)} is sent {len(where)} times in this request (items {where})"


# --- typing and scoring -------------------------------------------------------------------------------


def _typed_rows(batch: _Batch) -> pd.DataFrame:
    """coerce_telemetry and the value checks over all rows at once; the rows of failed items are dropped.

    The result keeps the batch's row numbers as its index, so scores can be traced back to items.
    """
    _flag_dates_out_of_range(batch)
    typed, problems = coerce_telemetry(batch.rows)
    batch.flag_rows([p.row for p in problems], [f"{p.column}: {p.reason} ({_shown(p.value)})" for p in problems])
    typed.index = batch.rows.index[~batch.rows.index.isin([p.row for p in problems])]
    for column in INTEGER_COLUMNS:
        values = typed[column].to_numpy(np.float64)
        fractional = np.flatnonzero(values != np.round(values))  # NaN != NaN, so gaps are skipped below
        fractional = fractional[~np.isnan(values[fractional])]
        batch.flag_rows(typed.index[fractional].tolist(), [f"{column}: {values[i]:g} is not a whole number"
                                                           for i in fractional])  # fmt: skip
    impossible = implausible_values(typed).dropna()
    batch.flag_rows(impossible.index.tolist(), impossible.tolist())
    _flag_items_without_values(typed, batch)
    _check_spans(typed, batch)
    failed = np.array([error is not None for error in batch.errors], dtype=bool)
    if failed.any():
        typed = typed[~failed[batch.row_item[typed.index]]]
    # The same stripped ids, as the request's categoricals again: preparation then codes them without
    # hashing every row's string (coerce_telemetry returns them as plain strings).
    return typed.assign(**{column: batch.rows[column].array[typed.index] for column in (BATTERY_ID, CAR_ID)})


def _flag_dates_out_of_range(batch: _Batch) -> None:
    """Fail the items with a date outside [FIRST_DATE, LAST_DATE], and blank those dates.

    Preparation works in pandas' nanosecond timestamps, which end at 1677 and 2262: a date beyond
    them ("0355-12-12", "9342-02-05", both valid YYYY-MM-DD) would fail the whole request.
    """
    dates = batch.rows[DATE]
    if isinstance(dates.dtype, pd.CategoricalDtype):  # plain JSON: the distinct strings, parsed once
        text = dates.cat.categories
        parsed = pd.to_datetime(pd.Series(text, dtype="string"), errors="coerce", format="ISO8601").to_numpy()
        outside = text[(parsed < FIRST_DATE) | (parsed > LAST_DATE)]
        rows = np.flatnonzero(dates.isin(outside))
        shown = [_shown(value) for value in dates.to_numpy()[rows]]
        if len(outside):
            batch.rows[DATE] = dates.cat.remove_categories(outside)
    else:  # the contract's decode: datetime64 days
        days = dates.to_numpy()
        rows = np.flatnonzero((days < FIRST_DATE) | (days > LAST_DATE))
        shown = np.datetime_as_string(days[rows], unit="D").tolist()
        batch.rows.loc[rows, DATE] = np.datetime64("NaT")
    batch.flag_rows(rows.tolist(), [f"{DATE}: {day} is outside {FIRST_DATE} to {LAST_DATE}" for day in shown])


def _check_spans(typed: pd.DataFrame, batch: _Batch) -> None:
    """Fail an item whose history spans more than MAX_HISTORY_SPAN_DAYS; refuse a request whose
    histories span more than MAX_HISTORY_ROWS_PER_REQUEST days in all (HTTP 413).

    Preparation fills every day between a battery's first and last row, so a few rows years apart
    would cost as many days of work and memory as a full history of those years.
    """
    failed = np.array([error is not None for error in batch.errors], dtype=bool)
    item = batch.row_item[typed.index.to_numpy()]
    usable = ~failed[item]
    item = item[usable]
    if not len(item):
        return
    starts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]])
    days = typed[DATE].to_numpy()[usable].astype("M8[D]").astype(np.int64)
    first, last = np.minimum.reduceat(days, starts), np.maximum.reduceat(days, starts)
    spans = last - first + 1
    too_long = spans > MAX_HISTORY_SPAN_DAYS
    for start, span in zip(starts[too_long], spans[too_long], strict=True):
        batch.errors[int(item[start])] = f"{HISTORY} spans {span:,} days; at most {MAX_HISTORY_SPAN_DAYS:,} are scored"
    total = int(spans[~too_long].sum())
    if total > MAX_HISTORY_ROWS_PER_REQUEST:
        raise RequestTooLarge(
            f"the histories span {total:,} days in all; the limit is "
            f"{MAX_HISTORY_ROWS_PER_REQUEST:,}: send fewer batteries or fewer days per request"
        )


def _flag_items_without_values(typed: pd.DataFrame, batch: _Batch) -> None:
    """Fail an item whose history has no value at all in some measure, naming the measure.

    Preparation would drop such a battery (nothing can fill the column). The rows are in item order,
    so each item's rows are one contiguous run.
    """
    if typed.empty:
        return
    rows = typed.index.to_numpy()
    item = batch.row_item[rows]
    starts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]])
    known = np.logical_or.reduceat(~np.isnan(typed[MEASURE_COLUMNS].to_numpy(np.float64)), starts, axis=0)
    for start, lacks in zip(starts[~known.all(axis=1)], np.argmin(known[~known.all(axis=1)], axis=1), strict=True):
        batch.flag_rows([int(rows[start])], [f"no {MEASURE_COLUMNS[lacks]} value in the whole history"])


def _score(model: Forecaster, typed: pd.DataFrame, batch: _Batch) -> dict[int, tuple[float, float, list, list, list]]:
    """Score the usable rows with the batch path's code; map each item index to its battery's numbers."""
    if typed.empty:
        return {}
    clean, _ = prepare_telemetry(typed.reset_index(drop=True))
    windows = build_windows(clean, as_of=None, window_days=model.window_days)
    scores, forecast = score_windows(model, windows, explain_from=EXPLAIN_FROM_PROBABILITY)
    item_of = {battery: i for i, battery in enumerate(batch.battery_ids) if batch.errors[i] is None}
    probability = scores[PROBABILITY].to_numpy(np.float64)
    days = scores[DAYS_TO_RATED_LIFE].to_numpy(np.float64)
    reasons = scores[REASONS].to_numpy(dtype=object)
    interval = scores[INTERVAL_COLUMNS].to_numpy(np.float64)
    return {
        item: (
            float(probability[row]),
            float(days[row]),
            forecast[row].tolist(),
            list(reasons[row]),
            interval[row].tolist(),
        )
        for item, row in _newest_lives(scores[BATTERY_ID].to_numpy(dtype=object), item_of).items()
    }


def _newest_lives(window_ids: np.ndarray, item_of: dict[str, int]) -> dict[int, int]:
    """For each item, the window of its battery's newest life.

    Preparation splits a battery replaced under the same id into "<id>", "<id>#2", ...: the item's
    battery is the newest of these, the one in the car now. One pass in plain Python over the windows
    (about one per battery sent) costs a fraction of pandas' string methods, whose fixed cost alone was
    a tenth of a one-battery request.
    """
    newest: dict[int, tuple[int, int]] = {}  # item → (life number, window row)
    for row, battery in enumerate(window_ids):
        base, number = battery, 1
        if battery not in item_of:
            base, _, suffix = battery.rpartition("#")
            if base not in item_of or not suffix.isdecimal():
                continue
            number = int(suffix)
        if number > newest.get(item_of[base], (0, 0))[0]:
            newest[item_of[base]] = (number, row)
    return {item: row for item, (_, row) in newest.items()}


def _predictions(batch: _Batch, scores: dict[int, tuple[float, float, list, list, list]]) -> list[dict[str, Any]]:
    predictions = []
    for item, (battery, car, error) in enumerate(zip(batch.battery_ids, batch.car_ids, batch.errors, strict=True)):
        if error is None and item not in scores:
            error = "no battery left to score after preparing the history"
        numbers = scores.get(item) if error is None else None
        predictions.append({
            BATTERY_ID: battery,
            CAR_ID: car,
            PROBABILITY: numbers[0] if numbers else None,
            DAYS_TO_RATED_LIFE: numbers[1] if numbers else None,
            "forecast_daily_cycles": numbers[2] if numbers else None,
            "error": error,
            REASONS: numbers[3] if numbers else None,
            **dict(zip(INTERVAL_COLUMNS, numbers[4] if numbers else [None] * len(INTERVAL_COLUMNS), strict=True)),
        })  # fmt: skip
    return predictions


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxstring = shown.maxother = shown.maxlong = 80
    shown.maxlevel = 2  # and reprlib's own bounds on list, dict, ... lengths
    return shown


# A value in an error message: its repr, bounded (a request may carry a megabyte-long id or a deeply
# nested array where a number belongs; the response and the client's logs get an excerpt).
_shown = _bounded_repr().repr


def _kind(value: Any) -> str:
    """How a JSON value is named in error messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)
