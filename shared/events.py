"""Telemetry events: Event Hub message bodies turned into typed records, and the ones that cannot be used.

A body is one JSON object with the telemetry columns (DESIGN.md "Telemetry event"), or a JSON array of
them (a car that was offline sends its backlog). The streaming path must never let one bad event stop
a batch, nor lose it: every body or record that cannot be used becomes a `DeadLetter` that says why and
keeps the original bytes and the event's metadata, while the good records of the same batch go on.

The rules, decided here once:

- A whole body is dead-lettered when it is larger than `max_body_bytes`, not UTF-8, not JSON, an empty
  array, or a JSON value that is neither an object nor an array.
- Inside an array each record stands alone: a bad record is dead-lettered with its index in the array
  (`record_index`) and its own JSON as the body; the other records of the array go on.
- A record needs every column; `null` counts as missing. Extra fields are ignored (the contract may
  grow by adding fields). Types are JSON types: `Date` a "YYYY-MM-DD" string, the ids strings or
  integers, the measures numbers (a quoted number or a boolean is a wrong type); the integer columns
  must hold whole numbers.
- Values are then typed by `shared.telemetry.coerce_telemetry` and checked by `implausible_values`,
  the same code the CSV path uses, once for the whole batch.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shared.telemetry import (
    BATTERY_ID,
    CAR_ID,
    COLUMNS,
    DATE,
    INTEGER_COLUMNS,
    coerce_telemetry,
    implausible_values,
)

# Event Hubs Basic tier's message limit. A day's record is about 250 bytes, so this holds a backlog of
# about a thousand days; anything larger is not a car talking.
DEFAULT_MAX_BODY_BYTES = 256 * 1024

# JSON types as this module names them; an integer and a float are told apart only for Battery_ID.
_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
                    float: "number", type(None): "null"}  # fmt: skip
_NUMBER = (("integer", "number"), "number")
_EXPECTED_TYPES = {DATE: (("string",), "string"), BATTERY_ID: (("string", "integer"), "string or integer"),
                   CAR_ID: (("string",), "string")}  # fmt: skip


@dataclass(frozen=True)
class DeadLetter:
    """One event body, or one record of an array body, that cannot be used, with why and where it came from.

    `body` is the text as received (the record's own JSON for a record of an array), or base64 when the
    bytes are not UTF-8 (`body_encoding` says which), so an operator can fix and replay it.
    """

    reason: str
    body: str
    body_encoding: str  # "utf-8" or "base64"
    event_index: int  # position of the event in its batch
    record_index: int | None = None  # position of the record in an array body; None for the whole body
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> DeadLetter:
        return cls(**value)


def parse_events(
    bodies: Sequence[bytes],
    metadata: Sequence[dict[str, Any]] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> tuple[pd.DataFrame, list[DeadLetter]]:
    """Split a batch of event bodies into typed good records and dead letters.

    `metadata[i]` (sequence number, partition, enqueued time…) is copied into the dead letters of
    `bodies[i]`. The good frame has the `shared.telemetry.COLUMNS` schema as `coerce_telemetry` types it,
    in the order the records arrived; nothing is left out without a dead letter.
    """
    if metadata is not None and len(metadata) != len(bodies):
        raise ValueError(f"metadata has {len(metadata)} entries for {len(bodies)} bodies")
    records: list[Any] = []
    origins: list[tuple[int, int | None]] = []
    dead: list[DeadLetter] = []

    def meta(event: int) -> dict[str, Any]:
        return dict(metadata[event]) if metadata is not None else {}

    for event, body in enumerate(bodies):
        decoded, reason = _decode(body, max_body_bytes)
        if reason is not None:
            text, encoding = _body_text(body)
            dead.append(DeadLetter(reason, text, encoding, event, None, meta(event)))
        elif isinstance(decoded, list):
            records += decoded
            origins += [(event, index) for index in range(len(decoded))]
        else:
            records.append(decoded)
            origins.append((event, None))

    good, reasons = _check_records(records)
    for row, reason in sorted(reasons.items()):
        event, index = origins[row]
        dead.append(DeadLetter(reason, _record_text(records[row], bodies[event], index), "utf-8",
                               event, index, meta(event)))  # fmt: skip
    dead.sort(key=_position)
    return good, dead


def _position(letter: DeadLetter) -> tuple[int, int]:
    """Where a dead letter was in the batch: its event, then its record (the whole body first)."""
    return letter.event_index, -1 if letter.record_index is None else letter.record_index


def _decode(body: bytes, max_body_bytes: int) -> tuple[Any, str | None]:
    """The body's JSON value, or the reason the whole body is unusable."""
    if len(body) > max_body_bytes:
        return None, f"oversize body: {len(body):,} bytes, the limit is {max_body_bytes:,}"
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"body is not UTF-8 text: {error.reason} at byte {error.start}"
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        return None, f"invalid JSON: {error}"
    if isinstance(value, list) and not value:
        return None, "empty JSON array: no records"
    if not isinstance(value, dict | list):
        return None, f"body is a JSON {_json_type(value)}, expected an object or an array of objects"
    return value, None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _check_records(records: list[Any]) -> tuple[pd.DataFrame, dict[int, str]]:
    """Type all records at once; return the good ones and, per bad record position, its reason.

    Checks run column by column over the whole batch. A record's reason lists the first problem of each
    column that has one ("missing field Car_ID; Number_Of_Trips: expected a JSON number, got a string");
    the range checks see only records whose values could be typed, since a range needs a number.
    """
    n = len(records)
    problems: dict[int, dict[str, str]] = defaultdict(dict)  # row -> column -> its first problem

    def flag(mask: np.ndarray, column: str, reason: str | pd.Series) -> None:
        for row in np.flatnonzero(mask):
            text = reason if isinstance(reason, str) else str(reason.iloc[row])
            problems[int(row)].setdefault(column, text)

    not_objects = {
        row: f"record is a JSON {_json_type(record)}, expected an object"
        for row, record in enumerate(records)
        if not isinstance(record, dict)
    }
    raw = pd.DataFrame([r if isinstance(r, dict) else {} for r in records], columns=COLUMNS, dtype=object)
    raw.index = pd.RangeIndex(n)
    kinds = raw.map(_json_type)
    for column in COLUMNS:
        allowed, described = _EXPECTED_TYPES.get(column, _NUMBER)
        flag((kinds[column] == "null").to_numpy(bool), column, f"missing field {column}")
        wrong = ~kinds[column].isin([*allowed, "null"]).to_numpy(bool)
        flag(wrong, column, f"{column}: expected a JSON {described}, got a " + kinds[column])
    dates = raw[DATE].astype("string")
    not_iso = ~dates.str.fullmatch(r"\d{4}-\d{2}-\d{2}").fillna(True).to_numpy(bool)
    flag(not_iso, DATE, f"{DATE}: " + dates.fillna("") + " is not a YYYY-MM-DD date")

    typed, row_problems = coerce_telemetry(raw)
    for problem in row_problems:
        text = f"{problem.column}: {problem.reason} ({problem.value!r})"
        problems[problem.row].setdefault(problem.column, text)
    typed.index = raw.index[~raw.index.isin([p.row for p in row_problems])]
    for column in INTEGER_COLUMNS:
        values = typed[column].reindex(raw.index)
        flag((values.notna() & (values != values.round())).to_numpy(bool), column,
             f"{column}: not a whole number (" + values.astype(str) + ")")  # fmt: skip
    for row, reason in implausible_values(typed).dropna().items():
        problems[int(row)].setdefault("range", reason)

    reasons = {row: "; ".join(found.values()) for row, found in problems.items()} | not_objects
    good = typed.loc[~typed.index.isin(list(reasons))].reset_index(drop=True)
    return good, reasons


def _json_type(value: Any) -> str:
    if isinstance(value, float) and np.isnan(value):
        return "null"  # a key absent from the object (pandas fills it with NaN)
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _body_text(body: bytes) -> tuple[str, str]:
    """The body as text when it is UTF-8, else base64, and which of the two it is."""
    try:
        return bytes(body).decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def _record_text(record: Any, body: bytes, index: int | None) -> str:
    """What to keep of a bad record: the body of a single-object event, or the record's JSON in an array."""
    return bytes(body).decode("utf-8") if index is None else json.dumps(record, ensure_ascii=False)
