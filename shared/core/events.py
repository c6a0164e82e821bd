"""Telemetry events: Event Hub message bodies turned into typed records, and the ones that cannot be used.

A body is one JSON object with the telemetry columns (docs/contracts.md "Telemetry event"), or a JSON array of
them (a car that was offline sends its backlog). The streaming path must never let one bad event stop
a batch, nor lose it: every body or record that cannot be used becomes a `DeadLetter` that says why and
keeps the original bytes and the event's metadata, while the good records of the same batch go on.

The rules, decided here once:

- A whole body is dead-lettered when it is larger than `max_body_bytes`, not UTF-8, not JSON (nested
  deeper than the parser goes included), has a key twice in one JSON object, is an empty array, or a
  JSON value that is neither an object nor an array.
- Inside an array each record stands alone: a bad record is dead-lettered with its index in the array
  (`record_index`) and its own JSON as the body; the other records of the array go on.
- A record needs every column; `null` counts as missing. Extra fields are ignored (the contract may
  grow by adding fields). Types are JSON types: `Date` a "YYYY-MM-DD" string, the ids strings or
  integers, the measures numbers (a quoted number or a boolean is a wrong type); the integer columns
  must hold whole numbers.
- Car_ID and Battery_ID must pass `shared.core.telemetry.id_problem` (what every store and the gateway path
  can hold).
- The date window: a record's Date is at most `MAX_FUTURE_DAYS` after the UTC day its event arrived
  (enqueued; the batch's receive time when the event has none) and at most `max_age_days` before it. A
  record from the future would take over its battery's rolling window (the window ends at the newest
  day); one from centuries ago is not a car talking either.
- Values are then typed by `shared.core.telemetry.coerce_telemetry` and checked by `implausible_values`,
  the same code the CSV path uses, once for the whole batch.

The guard. Whatever the bytes, `parse_events` returns records and dead letters, never raises: a body
that fails to decode in a way no rule above foresaw is dead-lettered with the error, and if checking the
batch's records at once fails, each event's records are checked on their own, so only the event that
broke the check is dead-lettered ("could not be validated") and the rest of the batch goes on. The
dead letters themselves are always storable as UTF-8 JSON (a lone surrogate in a reason is escaped).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from shared.core.json_text import STRICT_JSON, DuplicateKey
from shared.core.telemetry import (
    BATTERY_ID,
    CAR_ID,
    COLUMNS,
    DATE,
    INTEGER_COLUMNS,
    coerce_telemetry,
    id_problem,
    implausible_values,
)

# Event Hubs Basic tier's message limit. A day's record is about 250 bytes, so this holds a backlog of
# about a thousand days; anything larger is not a car talking.
DEFAULT_MAX_BODY_BYTES = 256 * 1024

# The date window (see the module docstring). A day ahead: a car's local day can be a day ahead of UTC
# (time zones up to UTC+14), and its clock a little fast. 1,000 days back: about the longest backlog one
# body can carry; a setting (TELEMETRY_MAX_AGE_DAYS, shared/config/settings.py) for fleets that keep longer ones.
MAX_FUTURE_DAYS = 1
DEFAULT_MAX_AGE_DAYS = 1000

log = logging.getLogger(__name__)

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
    *,
    received: datetime | None = None,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
) -> tuple[pd.DataFrame, list[DeadLetter]]:
    """Split a batch of event bodies into typed good records and dead letters; never raises for any bytes.

    `metadata[i]` (sequence number, partition, enqueued time…) is copied into the dead letters of
    `bodies[i]`, and its `enqueued_time` is when the event arrived, for the date window; `received`
    (default: now) stands in for an event without one. The good frame has the `shared.core.telemetry.COLUMNS`
    schema as `coerce_telemetry` types it, in the order the records arrived; nothing is left out without
    a dead letter.
    """
    if metadata is not None and len(metadata) != len(bodies):
        raise ValueError(f"metadata has {len(metadata)} entries for {len(bodies)} bodies")
    records: list[Any] = []
    origins: list[tuple[int, int | None]] = []
    windows: list[tuple[str, str, str]] = []  # per record: (arrival day, first and last day accepted)
    dead: list[DeadLetter] = []

    def meta(event: int) -> dict[str, Any]:
        return dict(metadata[event]) if metadata is not None else {}

    for event, body in enumerate(bodies):
        decoded, reason = _decode(body, max_body_bytes)
        if reason is not None:
            text, encoding = _body_text(body)
            dead.append(_dead_letter(reason, text, encoding, event, None, meta(event)))
            continue
        in_body = decoded if isinstance(decoded, list) else [decoded]
        records += in_body
        origins += [(event, index if isinstance(decoded, list) else None) for index in range(len(in_body))]
        windows += [_date_window(meta(event).get("enqueued_time"), received, max_age_days)] * len(in_body)

    good, reasons = _check_guarded(records, windows, origins)
    for row, reason in sorted(reasons.items()):
        event, index = origins[row]
        dead.append(_dead_letter(reason, _record_text(records[row], bodies[event], index), "utf-8",
                                 event, index, meta(event)))  # fmt: skip
    dead.sort(key=_position)
    return good, dead


def _dead_letter(reason: str, body: str, encoding: str, event: int, record: int | None, meta: dict) -> DeadLetter:
    """A dead letter whose text is storable as UTF-8: a lone surrogate quoted from a value is escaped."""
    return DeadLetter(_storable(reason), _storable(body), encoding, event, record, meta)


def _storable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _date_window(enqueued: Any, received: datetime | None, max_age_days: int) -> tuple[str, str, str]:
    """The event's arrival day (UTC) and the first and last record day it accepts, as YYYY-MM-DD text:
    record days are that text too, so comparing the strings compares the days."""
    return _window_of_day(_utc_day(enqueued) or _utc_day(received) or datetime.now(UTC).date(), max_age_days)


@functools.lru_cache(maxsize=64)  # a batch's events arrive on a day or two
def _window_of_day(arrived: date, max_age_days: int) -> tuple[str, str, str]:
    first = arrived - timedelta(days=min(max_age_days, (arrived - date.min).days))
    last = arrived + timedelta(days=min(MAX_FUTURE_DAYS, (date.max - arrived).days))
    return arrived.isoformat(), first.isoformat(), last.isoformat()


def _utc_day(moment: Any) -> date | None:
    """The UTC day of a datetime or ISO 8601 text (naive means UTC), or None when it is neither."""
    try:
        moment = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
        if not isinstance(moment, datetime):
            return None
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).date()
    except (ValueError, OverflowError):
        return None


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
        value = STRICT_JSON.decode(text)
    except DuplicateKey as error:
        return None, f"duplicate key {error.key!r} in a JSON object"
    except RecursionError:
        return None, "invalid JSON: nested deeper than the parser goes (an event is an object or an array of them)"
    except ValueError as error:
        return None, f"invalid JSON: {error}"
    except Exception as error:  # the guard: no body may fail its batch, whatever the parser raises
        log.exception("an event body failed to decode in an unforeseen way")
        return None, f"could not be decoded ({type(error).__name__}: {error})"
    if isinstance(value, list) and not value:
        return None, "empty JSON array: no records"
    if not isinstance(value, dict | list):
        return None, f"body is a JSON {_json_type(value)}, expected an object or an array of objects"
    return value, None


def _check_guarded(
    records: list[Any], windows: list[tuple[str, str, str]], origins: list[tuple[int, int | None]]
) -> tuple[pd.DataFrame, dict[int, str]]:
    """`_check_records` for the whole batch at once; if that fails, for each event's records on their own,
    so only the event that breaks a check is dead-lettered (with the error) and the others go on."""
    try:
        return _check_records(records, windows)
    except Exception:
        log.exception("checking a batch's records failed; checking its events one by one")
    frames, reasons = [], {}
    rows_of: dict[int, list[int]] = defaultdict(list)
    for row, (event, _) in enumerate(origins):
        rows_of[event].append(row)
    for event, rows in rows_of.items():
        try:
            good, found = _check_records([records[row] for row in rows], [windows[row] for row in rows])
        except Exception as error:
            log.exception("the records of event %d could not be validated", event)
            reasons |= dict.fromkeys(rows, f"could not be validated ({type(error).__name__}: {error})")
            continue
        frames.append(good)
        reasons |= {rows[position]: reason for position, reason in found.items()}
    empty, _ = _check_records([], [])
    return pd.concat([empty, *frames], ignore_index=True), reasons


def _check_records(records: list[Any], windows: list[tuple[str, str, str]]) -> tuple[pd.DataFrame, dict[int, str]]:
    """Type all records at once; return the good ones and, per bad record position, its reason.

    `windows[i]` is record i's event's (arrival day, first and last day accepted). Checks run column by
    column over the whole batch. A record's reason lists the first problem of each column that has one
    ("missing field Car_ID; Number_Of_Trips: expected a JSON number, got a string"); the range checks see
    only records whose values could be typed, since a range needs a number.
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
        raw.loc[wrong, column] = None  # flagged already; typing must not see an array or an object
    dates = raw[DATE].astype("string")
    not_iso = ~dates.str.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}").fillna(True).to_numpy(bool)
    flag(not_iso, DATE, f"{DATE}: " + dates.fillna("") + " is not a YYYY-MM-DD date")
    for row, reason in _outside_window(dates, ~not_iso, windows).items():
        problems[row].setdefault(DATE, reason)

    typed, row_problems = coerce_telemetry(raw)
    for problem in row_problems:
        text = f"{problem.column}: {problem.reason} ({problem.value!r})"
        problems[problem.row].setdefault(problem.column, text)
    typed.index = raw.index[~raw.index.isin([p.row for p in row_problems])]
    for column in (BATTERY_ID, CAR_ID):
        found = {value: id_problem(value) for value in pd.unique(typed[column])}
        for row, reason in typed[column].map(found).dropna().items():
            problems[int(row)].setdefault(column, f"{column}: {reason}")
    for column in INTEGER_COLUMNS:
        values = typed[column].reindex(raw.index)
        flag((values.notna() & (values != values.round())).to_numpy(bool), column,
             f"{column}: not a whole number (" + values.astype(str) + ")")  # fmt: skip
    for row, reason in implausible_values(typed).dropna().items():
        problems[int(row)].setdefault("range", reason)

    reasons = {row: "; ".join(found.values()) for row, found in problems.items()} | not_objects
    good = typed.loc[~typed.index.isin(list(reasons))].reset_index(drop=True)
    return good, reasons


def _outside_window(dates: pd.Series, iso: np.ndarray, windows: list[tuple[str, str, str]]) -> dict[int, str]:
    """The records whose YYYY-MM-DD Date is outside their event's date window, and why."""
    if not windows:
        return {}
    days = dates.fillna("").to_numpy(object)
    checked = iso & dates.notna().to_numpy(bool)
    arrived, first, last = (np.array(column, dtype=object) for column in zip(*windows, strict=True))
    reasons = {}
    for row in np.flatnonzero(checked & (days > last)):
        reasons[int(row)] = (f"{DATE}: future date {days[row]} (the event arrived on {arrived[row]}; "
                             f"records after {last[row]} are refused)")  # fmt: skip
    for row in np.flatnonzero(checked & (days < first)):
        reasons[int(row)] = (f"{DATE}: too old {days[row]} (the event arrived on {arrived[row]}; "
                             f"records before {first[row]} are refused)")  # fmt: skip
    return reasons


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
