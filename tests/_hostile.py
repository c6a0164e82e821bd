"""Hostile Event Hub bodies for the property-based and fault-injection tests of the telemetry path.

`hostile_bodies(record, arrived)` draws bodies that must each be dead-lettered whole or record by record,
whatever else is in the batch: every kind of defect an adversarial test found (deep nesting, duplicate
keys, ids no store or URL can hold, dates outside the window or outside what pandas holds), wrong types,
bytes that are not UTF-8, truncated JSON. Each is built from a good `record` with ONE thing broken, so the
batch's good records share ids and days with it (a hostile record must not change what a good one does).
`any_bodies` adds arbitrary bytes and JSON, which may happen to be good.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

from hypothesis import strategies as st

from shared.core.telemetry import BATTERY_ID, CAR_ID, DATE, MEASURE_COLUMNS

# What an id must not contain (shared.core.telemetry.id_problem), each put inside other text.
FORBIDDEN_IN_IDS = [*"/\\#?", *map(chr, range(0x20)), "\x7f", "\x85", "\x9f", "\ud800", "\udbff", "\udc00", "\udfff"]


def encode(value: Any) -> bytes:
    """JSON as a car would send it (a lone surrogate goes out as a \\u escape, which is valid JSON)."""
    return json.dumps(value).encode()


def bad_ids() -> st.SearchStrategy[str]:
    inside = st.tuples(st.text(max_size=12), st.sampled_from(FORBIDDEN_IN_IDS), st.text(max_size=12))
    return st.one_of(
        st.sampled_from([".", ".."]),
        inside.map(lambda parts: f"x{parts[0]}{parts[1]}{parts[2]}x"),  # x…x: stripping cannot remove it
        st.integers(257, 3000).map(lambda length: "B" * length),
    )


def bad_dates(arrived: date) -> st.SearchStrategy[str]:
    """Dates the window refuses for an event that arrived on `arrived` (with the default 1,000 days)."""
    return st.one_of(
        st.integers(2, 3000).map(lambda ahead: (arrived + timedelta(days=ahead)).isoformat()),
        st.integers(1001, 100_000).map(lambda back: (arrived - timedelta(days=back)).isoformat()),
        st.integers(2263, 9999).map(lambda year: f"{year}-12-31"),
        st.integers(1, 1677).map(lambda year: f"{year:04d}-01-01"),
    )


def not_numbers() -> st.SearchStrategy[Any]:
    return st.one_of(st.text(max_size=10), st.booleans(), st.none(), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))  # fmt: skip


def hostile_bodies(record: dict, arrived: date) -> st.SearchStrategy[bytes]:
    """Bodies that are bad in exactly one way, each made from the good `record`."""
    good = encode(record)
    return st.one_of(
        st.binary(max_size=200).map(lambda tail: b"\xff" + tail),  # not UTF-8
        st.integers(2, 100_000).map(lambda depth: b"[" * depth + b"]" * depth),  # nesting: no object inside
        st.sampled_from(sorted(record)).map(lambda key: b'{"%s": 0, ' % key.encode() + good[1:]),  # duplicate key
        st.integers(0, len(good) - 1).map(lambda end: good[:end]),  # truncated
        st.tuples(st.sampled_from([BATTERY_ID, CAR_ID]), bad_ids()).map(lambda c: encode(record | {c[0]: c[1]})),
        bad_dates(arrived).map(lambda day: encode(record | {DATE: day})),
        st.tuples(st.sampled_from(MEASURE_COLUMNS), not_numbers()).map(lambda c: encode(record | {c[0]: c[1]})),
    )


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value (lone surrogates in text included), small."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)  # fmt: skip


def any_bodies(record: dict, arrived: date) -> st.SearchStrategy[bytes]:
    """Any body: hostile, good, a good record with any field replaced by any JSON, any JSON, any bytes."""
    changed = st.tuples(st.sampled_from(sorted(record)), json_values()).map(lambda c: record | {c[0]: c[1]})
    return st.one_of(
        hostile_bodies(record, arrived),
        st.just(encode(record)),
        changed.map(encode),
        st.lists(st.one_of(changed, json_values()), min_size=1, max_size=3).map(encode),
        json_values().map(encode),
        st.binary(max_size=300),
    )
