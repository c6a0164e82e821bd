"""Property-based tests of event decoding and validation: whatever the bytes, records or dead letters.

`parse_events` is the one place events are decoded and checked. For any batch of byte strings it must
return, never raise; account for every event (dead-lettered whole, or each of its records either good or
dead-lettered); give every dead letter a reason and keep it storable as UTF-8 JSON; and hand on only
records every later step can take (ids by `id_problem`, a Date inside the window, plausible numbers).
The Azurite half (good events archived, scored and alerted beside bad ones) is in test_faults_telemetry.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta

import numpy as np
from _hostile import any_bodies, hostile_bodies
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.events import MAX_FUTURE_DAYS, parse_events
from shared.core.telemetry import BATTERY_ID, CAR_ID, COLUMNS, DATE, PLAUSIBLE_RANGES, id_problem

ARRIVED = datetime(2017, 3, 20, 1, 30, tzinfo=UTC)
RECORD = {
    "Date": "2017-03-19", "Battery_ID": "17", "Car_ID": "CAR-00017", "Battery_Age_Days": 1538,
    "Number_Of_Trips": 5, "Daily_Trip_Duration": 61.2, "Daily_Cycles_Used": 0.15,
    "Lifetime_Cycles_Used": 196.4, "Battery_Rated_Cycles": 200,
}  # fmt: skip
MAX_AGE_DAYS = 1000


@contextlib.contextmanager
def nothing_unforeseen():
    """Fail if parse_events had to fall back on its guard: every defect drawn here has a rule of its own."""
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = logged.append
    logging.getLogger("shared.core.events").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("shared.core.events").removeHandler(handler)
    assert [record.getMessage() for record in logged] == []


def decoded_records(body: bytes) -> int:
    """How many records a body that parse_events decoded holds."""
    value = json.loads(body)
    return len(value) if isinstance(value, list) else 1


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(any_bodies(RECORD, ARRIVED.date()), max_size=8))
def test_any_batch_of_bytes_yields_records_or_dead_letters_with_reasons_never_an_exception(bodies):
    metadata = [{"sequence_number": n, "enqueued_time": ARRIVED.isoformat()} for n in range(len(bodies))]

    with nothing_unforeseen():
        good, dead = parse_events(bodies, metadata, received=ARRIVED, max_age_days=MAX_AGE_DAYS)

    assert list(good.columns) == COLUMNS
    for letter in dead:
        assert letter.reason.strip()
        json.dumps(letter.to_dict(), ensure_ascii=False).encode("utf-8")  # the dead-letter store can write it
        assert letter.metadata == metadata[letter.event_index]
    whole = {letter.event_index for letter in dead if letter.record_index is None}
    per_record = [letter for letter in dead if letter.record_index is not None]
    assert len(good) + len(per_record) == sum(decoded_records(b) for n, b in enumerate(bodies) if n not in whole)
    assert not whole & {letter.event_index for letter in per_record}
    # What goes on is what every later step can take.
    for column in (BATTERY_ID, CAR_ID):
        assert all(id_problem(value) is None for value in good[column])
    first, last = ARRIVED.date() - timedelta(days=MAX_AGE_DAYS), ARRIVED.date() + timedelta(days=MAX_FUTURE_DAYS)
    assert all(first <= day.date() <= last for day in good[DATE])
    for column, (low, high) in PLAUSIBLE_RANGES.items():
        values = good[column].to_numpy(float)
        assert np.all(np.isfinite(values) & (values >= low) & (values <= high))


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(hostile_bodies(RECORD, ARRIVED.date()), min_size=1, max_size=5), st.randoms())
def test_hostile_events_are_all_dead_lettered_and_the_good_ones_around_them_all_go_on(hostile, random):
    good_bodies = [json.dumps(RECORD | {"Date": f"2017-03-{day:02d}"}).encode() for day in range(1, 11)]
    bodies = good_bodies + hostile
    random.shuffle(bodies)

    with nothing_unforeseen():
        good, dead = parse_events(bodies, received=ARRIVED)

    assert sorted(good[DATE].dt.day) == list(range(1, 11))
    assert sorted({letter.event_index for letter in dead}) == sorted(n for n, b in enumerate(bodies) if b in hostile)
