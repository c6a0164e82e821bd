"""Battery state: each battery's rolling window of recent daily records, kept in Table "batterystate".

The Event Hub function sees a car's newest day or two; the scoring endpoint needs the battery's last W
days (`history` in DESIGN.md "Scoring endpoint"). This module keeps those W days per battery between
batches, so the function never rereads the archive.

The window is keyed by day: a repeated day replaces the stored one (an identical repeat writes
nothing), an older day is put in its place if it is still inside the window, so redelivered or
out-of-order events never count twice. A window covers the W calendar days ending at the battery's
newest day. When a battery's age goes down from one day to the next, it was reset or replaced under
the same id: its window restarts at that day.

Layout. One entity per battery: RowKey = the Battery_ID (percent-encoded, since `/ \\ # ?` are not
allowed in keys), PartitionKey = one of `SHARDS` shards chosen by a stable hash of the id. Sharding is
what makes a batch cheap: a few $filter queries read up to 14 batteries each, and one entity-group
transaction writes up to 100 of them, instead of a GET and a PUT per battery (measured on a local
Azurite on a quiet 2-core box: about 4 ms per battery instead of about 15). Each history column is a
JSON array in its own property (dates as day offsets from `First_Date`), which keeps every property far
under the 64 KiB string limit. For W = 240 an entity is about 17,000 characters in 14 properties
(about 34 KiB as the service counts UTF-16, of the 1 MiB allowed), its largest property about 4,700
characters (9 KiB of 64 KiB); see tests/test_battery_state.py. W is capped at `MAX_WINDOW_DAYS`, where
the largest is about 39 KiB.

Concurrency. Each write carries the ETag it read (create-if-absent for a new battery), inside the
transaction. If another writer got there first, the transaction fails as a whole, and the batteries of
that transaction are read again, merged again and written again, up to `max_attempts` rounds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np
import pandas as pd
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, TableErrorCode, TableTransactionError, UpdateMode

from shared.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_ID,
    COLUMNS,
    DAILY_CYCLES,
    DATE,
    LIFETIME_CYCLES,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
    InputError,
)

TABLE = "batterystate"
SHARDS = 16
MAX_WINDOW_DAYS = 1000
MAX_ATTEMPTS = 5
# The per-day fields of a scoring request's `history` (DESIGN.md), after Date.
HISTORY_COLUMNS = [AGE_DAYS, TRIPS, TRIP_MINUTES, DAILY_CYCLES, LIFETIME_CYCLES]
_INTEGER_HISTORY = {AGE_DAYS, TRIPS}

# Requests in flight at once (SDK clients are thread-safe). Against Azure each query or transaction waits
# a network round trip, so overlapping a batch's few dozen requests keeps it from being latency-bound;
# against a local Azurite on a busy 2-core box it makes no measurable difference either way.
_IO_THREADS = 4
_KEYS_PER_QUERY = 14  # a Table $filter allows 15 comparisons: the PartitionKey and 14 RowKeys
_OPS_PER_TRANSACTION = 100  # the entity-group transaction limit
_BYTES_PER_TRANSACTION = 3 * 1024 * 1024  # under the 4 MiB request limit, with room for the envelope
# As `shared.telemetry.coerce_telemetry` types them (explicit: pandas would infer a string dtype for ids).
_DTYPES = {DATE: "datetime64[ns]", BATTERY_ID: object, CAR_ID: object, RATED_CYCLES: np.float64}
_CONFLICTS = {TableErrorCode.UPDATE_CONDITION_NOT_SATISFIED, TableErrorCode.ENTITY_ALREADY_EXISTS}

log = logging.getLogger(__name__)


class StateConflictError(RuntimeError):
    """Batteries whose state kept changing under us for `max_attempts` rounds; the batch should be retried."""


def state_keys(battery_id: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of a battery's entity: a stable shard, and the id made safe for a key."""
    shard = zlib.crc32(battery_id.encode("utf-8")) % SHARDS
    return f"shard{shard:02d}", quote(battery_id, safe="")


def update_states(
    table_client: TableClient,
    good_records: pd.DataFrame,
    window_days: int,
    max_attempts: int = MAX_ATTEMPTS,
) -> pd.DataFrame:
    """Merge a batch's good records into their batteries' stored windows; return the windows touched.

    `good_records` has the `shared.telemetry.COLUMNS` schema (as `parse_events` returns it). The result
    is the whole window after the merge of every battery in it, as one frame with the same schema sorted
    by Battery_ID then Date (one frame, not one per battery: the fleet stays vectorised all the way to
    `histories_for_request`). Raises `StateConflictError` if some batteries still conflict after
    `max_attempts` rounds; nothing is half-written for them (each transaction is all or nothing).
    """
    _check_window(window_days)
    missing = [c for c in COLUMNS if c not in good_records.columns]
    if missing:
        raise InputError(f"records are missing column(s): {', '.join(missing)}")
    pending = good_records[COLUMNS]
    windows: list[pd.DataFrame] = []
    for attempt in range(1, max_attempts + 1):
        ids = pending[BATTERY_ID].unique().tolist()
        stored = _read_entities(table_client, ids)
        merged = merge_windows(_entities_to_frame(stored.values()), pending, window_days)
        fresh = _window_entities(merged, window_days)
        changed = [(fresh[b], stored.get(b)) for b in ids if not _same_state(fresh[b], stored.get(b))]
        conflicted = _write(table_client, changed)
        _log_merge(pending, merged, len(changed), attempt)
        windows.append(merged[~merged[BATTERY_ID].isin(conflicted)])
        if not conflicted:
            return pd.concat(windows, ignore_index=True).sort_values([BATTERY_ID, DATE], ignore_index=True)
        pending = pending[pending[BATTERY_ID].isin(conflicted)]
    raise StateConflictError(
        f"{len(conflicted)} battery state(s) changed under every one of {max_attempts} attempts: "
        f"{', '.join(sorted(conflicted)[:5])}"
    )


def read_windows(table_client: TableClient, battery_ids: Iterable[str]) -> pd.DataFrame:
    """The stored windows of these batteries (those that have one), shaped as `update_states` returns them."""
    stored = _read_entities(table_client, list(battery_ids))
    return _entities_to_frame(stored.values()).sort_values([BATTERY_ID, DATE], ignore_index=True)


def merge_windows(stored: pd.DataFrame, incoming: pd.DataFrame, window_days: int) -> pd.DataFrame:
    """Stored windows plus new records, keyed by (battery, day), trimmed to each battery's last W days.

    Pure and vectorised over all batteries. A new record replaces a stored one of the same day, a later
    record in `incoming` replaces an earlier one. Sorted by battery, then day.
    """
    both = pd.concat([stored[COLUMNS], incoming[COLUMNS]], ignore_index=True)
    both[DATE] = both[DATE].dt.normalize()
    both = both.drop_duplicates([BATTERY_ID, DATE], keep="last")
    both = both.sort_values([BATTERY_ID, DATE], kind="stable")
    battery = both[BATTERY_ID].to_numpy()
    age = both[AGE_DAYS].to_numpy(np.float64)
    reset = np.zeros(len(both), dtype=bool)
    reset[1:] = (battery[1:] == battery[:-1]) & (age[1:] < age[:-1])
    life = pd.Series(reset, index=both.index).groupby(both[BATTERY_ID]).cumsum()
    current_life = life == life.groupby(both[BATTERY_ID]).transform("max")
    newest = both.groupby(BATTERY_ID)[DATE].transform("max")
    recent = both[DATE] > newest - pd.Timedelta(days=window_days)
    return both[current_life & recent].reset_index(drop=True)


def histories_for_request(windows: pd.DataFrame) -> list[dict]:
    """The items of a scoring request (DESIGN.md "Scoring endpoint") for windows sorted by battery and day.

    One item per battery, in the frame's order. Car_ID and Battery_Rated_Cycles are the newest day's; the
    integer columns are JSON integers and an unknown value is null, so the body is strict JSON.
    """
    keys = [DATE, *HISTORY_COLUMNS]
    values = [np.datetime_as_string(windows[DATE].to_numpy("datetime64[D]")).tolist()]
    values += [_json_numbers(windows[name], integer=name in _INTEGER_HISTORY) for name in HISTORY_COLUMNS]
    rows = [dict(zip(keys, row, strict=True)) for row in zip(*values, strict=True)]
    cars = windows[CAR_ID].to_numpy()
    rated = _json_numbers(windows[RATED_CYCLES], integer=True)
    return [
        {BATTERY_ID: battery, CAR_ID: cars[end - 1], RATED_CYCLES: rated[end - 1], "history": rows[start:end]}
        for battery, start, end in _bounds(windows)
    ]


# --- entities -----------------------------------------------------------------------------------------


def _check_window(window_days: int) -> None:
    if not 1 <= window_days <= MAX_WINDOW_DAYS:
        raise ValueError(f"window_days must be between 1 and {MAX_WINDOW_DAYS}, got {window_days}")


def _window_entities(merged: pd.DataFrame, window_days: int) -> dict[str, dict]:
    """Each battery's window (a frame sorted by battery, then day) as its Table entity.

    Columns go to numpy once for the whole frame; each entity is then slices of those arrays, since a
    pandas call per battery would cost more than the table I/O.
    """
    days = merged[DATE].to_numpy("datetime64[D]")
    offsets = days.astype(np.int64)
    car = merged[CAR_ID].to_numpy()
    rated = merged[RATED_CYCLES].to_numpy(np.float64)
    history = {column: merged[column].to_numpy(np.float64) for column in HISTORY_COLUMNS}
    entities = {}
    for battery, start, end in _bounds(merged):
        partition, row = state_keys(battery)
        entity = {
            "PartitionKey": partition,
            "RowKey": row,
            BATTERY_ID: battery,
            CAR_ID: car[end - 1],
            RATED_CYCLES: float(rated[end - 1]),
            "First_Date": str(days[start]),
            "Last_Date": str(days[end - 1]),
            "Window_Days": window_days,
            "Day_Offsets": _json_list(offsets[start:end] - offsets[start]),
        }
        entities[battery] = entity | {column: _json_list(values[start:end]) for column, values in history.items()}
    return entities


def _json_list(values: np.ndarray) -> str:
    return json.dumps(values.tolist(), separators=(",", ":"))


def _entities_to_frame(entities: Iterable[TableEntity]) -> pd.DataFrame:
    """Stored entities back into one long frame with the telemetry schema (Car_ID, rated cycles repeated)."""
    parts: dict[str, list] = {column: [] for column in COLUMNS}
    for entity in entities:
        offsets = np.asarray(json.loads(entity["Day_Offsets"]), dtype=np.int64)
        parts[DATE].append(np.datetime64(entity["First_Date"], "D") + offsets)
        for column in HISTORY_COLUMNS:
            parts[column].append(np.asarray(json.loads(entity[column]), dtype=np.float64))
        for column in (BATTERY_ID, CAR_ID, RATED_CYCLES):
            parts[column].append(np.repeat(np.asarray([entity[column]], dtype=object), len(offsets)))
    if not parts[DATE]:
        return _empty_frame()
    frame = pd.DataFrame({column: np.concatenate(values) for column, values in parts.items()})
    return frame.astype(_DTYPES)


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=_DTYPES.get(column, np.float64)) for column in COLUMNS})


def _same_state(entity: dict, stored: TableEntity | None) -> bool:
    return stored is not None and all(stored.get(key) == value for key, value in entity.items())


def _bounds(frame: pd.DataFrame) -> Iterator[tuple[str, int, int]]:
    """(battery, first row, end row) of each battery's run of rows in a frame sorted by battery."""
    battery = frame[BATTERY_ID].to_numpy()
    if not len(battery):
        return
    starts = np.flatnonzero(np.r_[True, battery[1:] != battery[:-1]])
    ends = [*starts[1:], len(battery)]
    for start, end in zip(starts, ends, strict=True):
        yield battery[start], int(start), int(end)


# --- table I/O ----------------------------------------------------------------------------------------


def _read_entities(table_client: TableClient, battery_ids: list[str]) -> dict[str, TableEntity]:
    """The stored entities of these batteries, by a few $filter queries per shard; creates a missing table."""
    by_shard: dict[str, list[str]] = {}
    for battery in battery_ids:
        partition, row = state_keys(battery)
        by_shard.setdefault(partition, []).append(row)
    queries = [
        (partition, rows[start : start + _KEYS_PER_QUERY])
        for partition, rows in by_shard.items()
        for start in range(0, len(rows), _KEYS_PER_QUERY)
    ]

    def query(partition: str, rows: list[str]) -> list[TableEntity]:
        keys = " or ".join(f"RowKey eq @r{i}" for i in range(len(rows)))
        parameters = {"pk": partition, **{f"r{i}": row for i, row in enumerate(rows)}}
        text = f"PartitionKey eq @pk and ( {keys} )"  # the SDK substitutes space-separated @words only
        return list(table_client.query_entities(text, parameters=parameters))

    try:
        with ThreadPoolExecutor(_IO_THREADS) as pool:
            return {e[BATTERY_ID]: e for found in pool.map(lambda q: query(*q), queries) for e in found}
    except ResourceNotFoundError:
        with contextlib.suppress(ResourceExistsError):  # another worker may create it at the same time
            table_client.create_table()
        return {}


def _write(table_client: TableClient, changes: list[tuple[dict, TableEntity | None]]) -> set[str]:
    """Write new states as ETag-guarded transactions per shard; return the batteries that conflicted."""

    def submit(chunk: list[tuple[dict, TableEntity | None]]) -> set[str]:
        try:
            table_client.submit_transaction([_guarded_write(entity, stored) for entity, stored in chunk])
        except TableTransactionError as error:
            if error.error_code not in _CONFLICTS:
                raise
            return {entity[BATTERY_ID] for entity, _ in chunk}
        return set()

    with ThreadPoolExecutor(_IO_THREADS) as pool:
        return set().union(*pool.map(submit, _transactions(changes)))


def _guarded_write(entity: dict, stored: TableEntity | None) -> tuple:
    """A transaction operation that fails if someone else wrote the battery since we read it."""
    if stored is None:
        return ("create", entity)
    guard = {"etag": stored.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
    return ("update", entity, {"mode": UpdateMode.REPLACE, **guard})


def _transactions(changes: list[tuple[dict, TableEntity | None]]) -> Iterator[list]:
    """Group writes by PartitionKey into chunks within the transaction's count and size limits."""
    by_shard: dict[str, list] = {}
    for change in changes:
        by_shard.setdefault(change[0]["PartitionKey"], []).append(change)
    for shard_changes in by_shard.values():
        chunk: list = []
        size = 0
        for change in shard_changes:
            entity_size = sum(len(str(value)) for value in change[0].values())
            if chunk and (len(chunk) == _OPS_PER_TRANSACTION or size + entity_size > _BYTES_PER_TRANSACTION):
                yield chunk
                chunk, size = [], 0
            chunk.append(change)
            size += entity_size
        yield chunk


def _log_merge(pending: pd.DataFrame, merged: pd.DataFrame, changed: int, attempt: int) -> None:
    """Say what the merge did with the records it was given (those not kept are still in the archive)."""
    days = pd.MultiIndex.from_arrays([pending[BATTERY_ID], pending[DATE].dt.normalize()])
    outside = int((~days.isin(pd.MultiIndex.from_frame(merged[[BATTERY_ID, DATE]]))).sum())
    log.info(
        "battery state, attempt %d: %d record(s) for %d battery(ies), %d window(s) changed, "
        "%d record(s) outside their window (older than W days, or before a reset)",
        attempt, len(pending), pending[BATTERY_ID].nunique(), changed, outside,
    )  # fmt: skip


def _json_numbers(values: pd.Series, integer: bool) -> list:
    """Column values as JSON-ready Python numbers (ints for integer columns), None where unknown."""
    array = values.to_numpy(np.float64)
    finite = np.isfinite(array)
    listed = (np.where(finite, array, 0).round().astype(np.int64) if integer else array).tolist()
    for position in np.flatnonzero(~finite):
        listed[position] = None
    return listed
