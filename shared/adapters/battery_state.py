"""Battery state: each battery's rolling window of recent daily records, kept in Table "batterystate".

The Event Hub function sees a car's newest day or two; the scoring endpoint needs the battery's last W
days (`history` in docs/contracts.md "Scoring endpoint"). This module keeps those W days per battery between
batches, so the function never rereads the archive.

The window is keyed by day: a repeated day replaces the stored one (an identical repeat writes
nothing), an older day is put in its place if it is still inside the window, so redelivered or
out-of-order events never count twice. A window covers the W calendar days ending at the battery's
newest day. When a battery's age goes down from one day to the next, it was reset or replaced under
the same id: its window restarts at that day.

Layout. One entity per battery: RowKey = the Battery_ID percent-encoded (or, when that is longer than a
key can be, a hash of it; see `state_keys`), PartitionKey = one of `SHARDS` shards chosen by a stable
hash of the id. Sharding is what makes a batch cheap: a few $filter queries read up to 14 batteries
each, and one entity-group transaction (`shared.adapters.tables`) writes up to 100 of them, instead of
a GET and a PUT per battery. Few shards mean few, full transactions: a batch of 100 batteries is 4
requests, not 16 (which cut its time on Azurite by about 40%). The price is a ceiling: Azure serves
about 2,000 entity writes a second per partition, so 4 shards carry about 8,000 battery-days a second,
eight Event Hubs throughput units. Each history column is a JSON array in its own property (dates as day
offsets from `First_Date`), which keeps every property far under the 64 KiB string limit. For W = 240 an
entity is about 17,000 characters in 14 properties (about 34 KiB as the service counts UTF-16, of the 1
MiB allowed), its largest property about 4,700 characters (9 KiB of 64 KiB); see
tests/test_battery_state.py. W is capped at `MAX_WINDOW_DAYS`, where the largest is about 39 KiB.

Concurrency. Each write carries the ETag of the version it merged into (create-if-absent for a new
battery), inside the transaction. If another writer got there first, the transaction fails as a whole,
and the batteries of that transaction are read again, merged again and written again, up to
`max_attempts` rounds.

Cache. Reading the windows cost nearly as much as writing them. An Event Hub partition has one consumer at a
time, so the entity a process wrote last is almost always still the stored one: `StateCache` keeps each
battery's last state and ETag, and a steady-state batch merges into those and reads nothing. The cache
is only a guess: the write still carries the cached ETag, so a battery someone else wrote since (a
partition that moved between instances) fails its transaction, is dropped from the cache, and goes the
conflict path above, as if the read had raced. A state is held decoded (`StoredState.days`, a small
array), not as the entity's JSON: decoding 500 cached entities per batch cost a quarter of the merge.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import msgspec
import numpy as np
import pandas as pd
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, TableErrorCode

from shared.adapters.tables import EntityWrite, TransactionFailed, submit_writes
from shared.core.battery_window import HISTORY_COLUMNS, merge_windows, window_bounds
from shared.core.telemetry import (
    BATTERY_ID,
    CAR_ID,
    COLUMNS,
    DATE,
    RATED_CYCLES,
    InputError,
)

SHARDS = 4  # see "Layout" above; changing it moves every battery's entity (their windows start again)
MAX_WINDOW_DAYS = 1000
MAX_ATTEMPTS = 5

# Requests in flight at once (SDK clients are thread-safe). Against Azure each query or transaction waits
# a network round trip, so overlapping a batch's few dozen requests keeps it from being latency-bound;
# against a local Azurite on a busy 2-core box it makes no measurable difference either way.
_IO_THREADS = 4
_MAX_KEY_LENGTH = 512  # a Table key holds 1 KiB of UTF-16; a percent-encoded key is ASCII, 1 unit a character
_KEYS_PER_QUERY = 14  # a Table $filter allows 15 comparisons: the PartitionKey and 14 RowKeys
_OPS_PER_TRANSACTION = 100  # the entity-group transaction limit
_BYTES_PER_TRANSACTION = 3 * 1024 * 1024  # under the 4 MiB request limit, with room for the envelope
# As `shared.core.telemetry.coerce_telemetry` types them (explicit: pandas would infer a string dtype for ids).
_DTYPES = {DATE: "datetime64[ns]", BATTERY_ID: object, CAR_ID: object, RATED_CYCLES: np.float64}
# What a transaction fails with when the stored state is not the version it was merged into: changed
# since (412), created since (409), or deleted since, with its table (404).
_CONFLICTS = {
    code.value
    for code in (
        TableErrorCode.UPDATE_CONDITION_NOT_SATISFIED,
        TableErrorCode.ENTITY_ALREADY_EXISTS,
        TableErrorCode.RESOURCE_NOT_FOUND,
        TableErrorCode.TABLE_NOT_FOUND,
    )
}
_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder()
# About 6 KB per battery at W = 120 (its days as float64): 10,000 batteries are about 60 MB of a Function
# App's memory.
DEFAULT_CACHE_BATTERIES = 10_000
# What a state keeps besides its days, and compares to tell whether a merge changed it.
_PROPERTIES = (BATTERY_ID, CAR_ID, RATED_CYCLES, "Window_Days")

log = logging.getLogger(__name__)


class StateConflictError(RuntimeError):
    """Batteries whose state kept changing under us for `max_attempts` rounds; the batch should be retried."""


@dataclasses.dataclass(frozen=True)
class StoredState:
    """A battery's state as the table holds it (or held it, for a cached one), decoded, and that version's ETag.

    `properties`: Battery_ID, Car_ID and Battery_Rated_Cycles (the newest day's) and Window_Days.
    `days`: one row per day of the window, oldest first; columns the day number (days since 1970-01-01),
    then `HISTORY_COLUMNS`, NaN where unknown.
    """

    properties: Mapping[str, Any]
    days: np.ndarray
    etag: str | None = None

    def same(self, other: StoredState | None) -> bool:
        """True if `other` holds the same window (ETags aside): merging changed nothing, nothing to write."""
        return (
            other is not None
            and self.properties == other.properties
            and np.array_equal(self.days, other.days, equal_nan=True)
        )


class StateCache:
    """The last known `StoredState` of up to `max_batteries` batteries per table, least recently used out.

    One per process (`shared.bootstrap.Services` holds it), shared by concurrent invocations, hence the
    lock. See the module docstring for why a stale entry is safe.
    """

    def __init__(self, max_batteries: int = DEFAULT_CACHE_BATTERIES) -> None:
        self.max_batteries = max_batteries
        self._states: OrderedDict[tuple[str, str], StoredState] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, table: str, battery_ids: Iterable[str]) -> dict[str, StoredState]:
        """The cached states of those batteries that have one."""
        found = {}
        with self._lock:
            for battery in battery_ids:
                state = self._states.get((table, battery))
                if state is not None:
                    self._states.move_to_end((table, battery))
                    found[battery] = state
        return found

    def put(self, table: str, states: Mapping[str, StoredState]) -> None:
        with self._lock:
            for battery, state in states.items():
                self._states[(table, battery)] = state
                self._states.move_to_end((table, battery))
            while len(self._states) > self.max_batteries:
                self._states.popitem(last=False)

    def discard(self, table: str, battery_ids: Iterable[str]) -> None:
        with self._lock:
            for battery in battery_ids:
                self._states.pop((table, battery), None)


def state_keys(battery_id: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of a battery's entity: a stable shard, and the id made safe for a key.

    The key is the id percent-encoded (as it always was). Percent-encoding can make an id of up to
    `shared.core.telemetry.MAX_ID_LENGTH` characters twelve times longer (a 4-byte character becomes 12), past
    what a key holds; such an id is keyed by its SHA-256 instead, after "%sha256-", which no percent-encoded
    id can begin with ("%" is always followed by two hex digits). The entity keeps the id itself.
    """
    encoded = battery_id.encode("utf-8")
    shard = zlib.crc32(encoded) % SHARDS
    row = quote(encoded, safe="")
    if len(row) > _MAX_KEY_LENGTH:
        row = f"%sha256-{hashlib.sha256(encoded).hexdigest()}"
    return f"shard{shard:02d}", row


def update_states(
    table_client: TableClient,
    good_records: pd.DataFrame,
    window_days: int,
    max_attempts: int = MAX_ATTEMPTS,
    cache: StateCache | None = None,
) -> pd.DataFrame:
    """Merge a batch's good records into their batteries' stored windows; return the windows touched.

    `good_records` has the `shared.core.telemetry.COLUMNS` schema (as `parse_events` returns it). The result
    is the whole window after the merge of every battery in it, as one frame with the same schema sorted
    by Battery_ID then Date (one frame, not one per battery: the fleet stays vectorised all the way to
    `histories_for_request`). Raises `StateConflictError` if some batteries still conflict after
    `max_attempts` rounds; nothing is half-written for them (each transaction is all or nothing).

    With a `cache`, batteries found in it are merged into their cached state instead of being read, and
    the cache is updated with what was read and written. A battery whose records change nothing is not
    written, so its window comes back as cached: stale only if another process wrote it meanwhile.
    """
    _check_window(window_days)
    missing = [c for c in COLUMNS if c not in good_records.columns]
    if missing:
        raise InputError(f"records are missing column(s): {', '.join(missing)}")
    cache = StateCache(max_batteries=0) if cache is None else cache
    table = f"{table_client.url.split('?', 1)[0]}/{table_client.table_name}"  # the cache's name for it
    pending = good_records[COLUMNS]
    windows: list[pd.DataFrame] = []
    for attempt in range(1, max_attempts + 1):
        ids = pending[BATTERY_ID].unique().tolist()
        stored = cache.get(table, ids)
        stored |= _read_states(table_client, [b for b in ids if b not in stored])
        merged = merge_windows(_states_to_frame(stored.values()), pending, window_days)
        fresh = _window_states(merged, window_days)
        changed = {b: _entity(fresh[b]) for b in ids if not fresh[b].same(stored.get(b))}
        etags, conflicted = _write(table_client, changed, stored)
        written = {b: dataclasses.replace(fresh[b], etag=etag) for b, etag in etags.items()}
        cache.put(table, stored | written)
        cache.discard(table, conflicted)
        _log_merge(pending, merged, len(changed), attempt)
        windows.append(merged[~merged[BATTERY_ID].isin(conflicted)] if conflicted else merged)
        if not conflicted:
            if len(windows) == 1:  # merge_windows sorted it already
                return merged
            return pd.concat(windows, ignore_index=True).sort_values([BATTERY_ID, DATE], ignore_index=True)
        pending = pending[pending[BATTERY_ID].isin(conflicted)]
    raise StateConflictError(
        f"{len(conflicted)} battery state(s) changed under every one of {max_attempts} attempts: "
        f"{', '.join(sorted(conflicted)[:5])}"
    )


def read_windows(table_client: TableClient, battery_ids: Iterable[str]) -> pd.DataFrame:
    """The stored windows of these batteries (those that have one), shaped as `update_states` returns them."""
    stored = _read_states(table_client, list(battery_ids))
    return _states_to_frame(stored.values()).sort_values([BATTERY_ID, DATE], ignore_index=True)


# --- entities -----------------------------------------------------------------------------------------


def _check_window(window_days: int) -> None:
    if not 1 <= window_days <= MAX_WINDOW_DAYS:
        raise ValueError(f"window_days must be between 1 and {MAX_WINDOW_DAYS}, got {window_days}")


def _window_states(merged: pd.DataFrame, window_days: int) -> dict[str, StoredState]:
    """Each battery's window (a frame sorted by battery, then day) as its state, ETag not known yet.

    The frame goes to one array once; each battery's days are then a copy of its rows (a copy, so a
    cached state does not keep the whole batch's array alive).
    """
    block = np.column_stack(
        [merged[DATE].to_numpy("datetime64[D]").astype(np.int64)]
        + [merged[column].to_numpy(np.float64) for column in HISTORY_COLUMNS]
    ).astype(np.float64)
    car = merged[CAR_ID].to_numpy()
    rated = merged[RATED_CYCLES].to_numpy(np.float64)
    states = {}
    for battery, start, end in window_bounds(merged):
        properties = {BATTERY_ID: battery, CAR_ID: car[end - 1], RATED_CYCLES: float(rated[end - 1]),
                      "Window_Days": window_days}  # fmt: skip
        states[battery] = StoredState(properties, block[start:end].copy())
    return states


def _entity(state: StoredState) -> dict[str, Any]:
    """A state as its Table entity: each history column a JSON array (msgspec: a tenth of the json module's
    time for lists of floats), dates as day offsets from First_Date."""
    battery = state.properties[BATTERY_ID]
    partition, row = state_keys(battery)
    days = state.days[:, 0].astype(np.int64)
    columns = state.days[:, 1:].T.tolist()
    return {
        "PartitionKey": partition,
        "RowKey": row,
        **state.properties,
        "First_Date": str(np.datetime64(int(days[0]), "D")),
        "Last_Date": str(np.datetime64(int(days[-1]), "D")),
        "Day_Offsets": _json_list((days - days[0]).tolist()),
    } | {column: _json_list(values) for column, values in zip(HISTORY_COLUMNS, columns, strict=True)}


def _json_list(values: list) -> str:
    return _JSON_ENCODER.encode(values).decode("ascii")


def _state_of(entity: Mapping[str, Any], etag: str) -> StoredState:
    """A stored entity decoded (the inverse of `_entity`)."""
    offsets = np.asarray(_JSON_DECODER.decode(entity["Day_Offsets"]), dtype=np.float64)
    first = float(np.datetime64(entity["First_Date"], "D").astype(np.int64))
    columns = [offsets + first] + [_JSON_DECODER.decode(entity[column]) for column in HISTORY_COLUMNS]
    days = np.array(columns, dtype=np.float64).T.copy()
    properties = {name: entity[name] for name in _PROPERTIES}
    properties[RATED_CYCLES] = float(properties[RATED_CYCLES])
    return StoredState(properties, days, etag)


def _states_to_frame(states: Iterable[StoredState]) -> pd.DataFrame:
    """States as one long frame with the telemetry schema (Car_ID, rated cycles repeated on every day)."""
    states = list(states)
    if not states:
        return _empty_frame()
    lengths = [len(state.days) for state in states]
    block = np.concatenate([state.days for state in states])
    columns = {DATE: block[:, 0].astype(np.int64).astype("datetime64[D]")}
    columns |= {column: block[:, number] for number, column in enumerate(HISTORY_COLUMNS, start=1)}
    for column in (BATTERY_ID, CAR_ID, RATED_CYCLES):
        columns[column] = np.repeat(np.array([state.properties[column] for state in states], dtype=object), lengths)
    return pd.DataFrame({column: columns[column] for column in COLUMNS}).astype(_DTYPES)


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=_DTYPES.get(column, np.float64)) for column in COLUMNS})


# --- table I/O ----------------------------------------------------------------------------------------


def _read_states(table_client: TableClient, battery_ids: list[str]) -> dict[str, StoredState]:
    """The stored states of these batteries, by a few $filter queries per shard; creates a missing table."""
    if not battery_ids:  # every battery of the batch was cached
        return {}
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
            found = [entity for entities in pool.map(lambda q: query(*q), queries) for entity in entities]
        return {entity[BATTERY_ID]: _state_of(entity, entity.metadata["etag"]) for entity in found}
    except ResourceNotFoundError:
        with contextlib.suppress(ResourceExistsError):  # another worker may create it at the same time
            table_client.create_table()
        return {}


def _write(
    table_client: TableClient, entities: Mapping[str, dict], stored: Mapping[str, StoredState]
) -> tuple[dict[str, str], set[str]]:
    """Write new states as ETag-guarded transactions per shard: the new ETag of each battery written,
    and the batteries that conflicted (their transaction wrote nothing)."""

    def submit(batteries: list[str]) -> tuple[dict[str, str], set[str]]:
        writes = [EntityWrite(entities[b], stored[b].etag if b in stored else None) for b in batteries]
        try:
            etags = submit_writes(table_client, writes)
        except TransactionFailed as error:
            if error.code not in _CONFLICTS:
                raise
            return {}, set(batteries)
        return dict(zip(batteries, etags, strict=True)), set()

    etags: dict[str, str] = {}
    conflicted: set[str] = set()
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        for written, failed in pool.map(submit, _transactions(entities)):
            etags |= written
            conflicted |= failed
    return etags, conflicted


def _transactions(entities: Mapping[str, dict]) -> Iterator[list[str]]:
    """Group batteries by PartitionKey into chunks within the transaction's count and size limits."""
    by_shard: dict[str, list[str]] = {}
    for battery, entity in entities.items():
        by_shard.setdefault(entity["PartitionKey"], []).append(battery)
    for batteries in by_shard.values():
        chunk: list[str] = []
        size = 0
        for battery in batteries:
            entity_size = sum(map(len, map(str, entities[battery].values())))
            if chunk and (len(chunk) == _OPS_PER_TRANSACTION or size + entity_size > _BYTES_PER_TRANSACTION):
                yield chunk
                chunk, size = [], 0
            chunk.append(battery)
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
