"""Event bodies → typed records and dead letters: every kind of bad event is caught, the good ones go on."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import numpy as np
import pytest

from shared.core.events import DeadLetter, parse_events
from shared.core.telemetry import COLUMNS, DAILY_CYCLES

RECORD = {
    "Date": "2017-03-19", "Battery_ID": "17", "Car_ID": "CAR-00017", "Battery_Age_Days": 1538,
    "Number_Of_Trips": 5, "Daily_Trip_Duration": 61.2, "Daily_Cycles_Used": 0.15,
    "Lifetime_Cycles_Used": 196.4, "Battery_Rated_Cycles": 200,
}  # fmt: skip


ARRIVED = datetime(2017, 3, 21, 1, 30, tzinfo=UTC)  # when the test events arrive (RECORD's day is 2017-03-19)


def record(**changes) -> dict:
    return {**RECORD, **changes}


def body(value) -> bytes:
    return json.dumps(value).encode()


def without(field: str) -> dict:
    return {key: value for key, value in RECORD.items() if key != field}


NOT_A_NUMBER = "expected a JSON number, got a"
BAD_EVENTS = {  # kind: (body, words the reason must contain)
    "invalid JSON": (b'{"Date": "2017-03-19",', "invalid JSON"),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8"),
    "NaN literal": (b'{"Daily_Cycles_Used": NaN}', "NaN is not valid JSON"),
    "not an object": (b"42", "expected an object or an array"),
    "empty array": (b"[]", "empty JSON array"),
    "missing field": (body(without("Car_ID")), "missing field Car_ID"),
    "null field": (body(record(Daily_Cycles_Used=None)), "missing field Daily_Cycles_Used"),
    "quoted number": (body(record(Number_Of_Trips="5")), f"Number_Of_Trips: {NOT_A_NUMBER} string"),
    "boolean": (body(record(Daily_Trip_Duration=True)), f"Daily_Trip_Duration: {NOT_A_NUMBER} boolean"),
    "fractional id": (body(record(Battery_ID=17.5)), "Battery_ID: expected a JSON string or integer"),
    "empty id": (body(record(Car_ID=" ")), "Car_ID: empty id"),
    "not a whole number": (body(record(Number_Of_Trips=5.5)), "Number_Of_Trips: not a whole number (5.5)"),
    "negative": (body(record(Daily_Cycles_Used=-0.2)), "Daily_Cycles_Used=-0.2 outside [0, 10]"),
    "absurd": (body(record(Lifetime_Cycles_Used=1e9)), "Lifetime_Cycles_Used=1e+09 outside [0, 100000]"),
    "date with time": (body(record(Date="2017-03-19T12:00")), "Date: 2017-03-19T12:00 is not a YYYY-MM-DD"),
    "other date format": (body(record(Date="19/03/2017")), "Date: 19/03/2017 is not a YYYY-MM-DD"),
    "impossible date": (body(record(Date="2017-02-30")), "Date: not a date"),
    "oversize": (body([record(Date=f"2017-03-{d:02d}") for d in range(1, 29)]), "oversize body"),
    "deep nesting": (b"[" * 2000 + b"]" * 2000, "invalid JSON: nested deeper than the parser goes"),
    "duplicate key": (b'{"Date": "2017-03-19", ' + body(RECORD)[1:], "duplicate key 'Date' in a JSON object"),
    "duplicate key deeper": (body(record(Extra="x"))[:-1] + b', "Extra": {"a": 1, "a": 2}}', "duplicate key 'a'"),
    "lone surrogate id": (body(record(Car_ID="CAR-\ud800")), "Car_ID: contains a lone surrogate U+D800"),
    "long id": (body(record(Battery_ID="7" * 3000)), "Battery_ID: longer than 256 characters (3,000)"),
    "integer id too long": (body(record(Battery_ID=10**300)), "Battery_ID: longer than 256 characters"),
    "dot dot id": (body(record(Car_ID="..")), "Car_ID: '..' is not allowed as an id"),
    "dot id": (body(record(Car_ID=".")), "Car_ID: '.' is not allowed as an id"),
    "slash in id": (body(record(Car_ID="CAR/1")), "Car_ID: contains '/'"),
    "backslash in id": (body(record(Battery_ID="B\\1")), "Battery_ID: contains '\\\\'"),
    "hash in id": (body(record(Car_ID="CAR#1")), "Car_ID: contains '#'"),
    "question mark in id": (body(record(Car_ID="CAR?1")), "Car_ID: contains '?'"),
    "NUL in id": (body(record(Car_ID="CAR\u00001")), "Car_ID: contains the control character U+0000"),
    "future date": (body(record(Date="2017-03-23")), "Date: future date 2017-03-23 (the event arrived on 2017-03-21"),
    "far future date": (body(record(Date="3000-01-01")), "Date: future date 3000-01-01"),
    "last day of 9999": (body(record(Date="9999-12-31")), "Date: future date 9999-12-31"),
    "too old": (
        body(record(Date="2014-06-24")),
        "Date: too old 2014-06-24 (the event arrived on 2017-03-21; records before 2014-06-25 are refused)",
    ),
    "first day of 0001": (body(record(Date="0001-01-01")), "Date: too old 0001-01-01"),
}


@pytest.mark.parametrize("kind", list(BAD_EVENTS))
def test_a_bad_event_is_dead_lettered_with_its_reason_and_the_good_ones_go_on(kind):
    bad, expected_reason = BAD_EVENTS[kind]
    bodies = [body(RECORD), bad, body(record(Date="2017-03-20"))]
    metadata = [{"sequence_number": 100 + i, "partition_key": "CAR-00017"} for i in range(3)]

    good, dead = parse_events(bodies, metadata, max_body_bytes=4096, received=ARRIVED)

    assert good["Date"].dt.strftime("%Y-%m-%d").tolist() == ["2017-03-19", "2017-03-20"]
    assert len(dead) == 1
    letter = dead[0]
    assert expected_reason in letter.reason
    assert (letter.event_index, letter.record_index) == (1, None)
    assert letter.metadata == {"sequence_number": 101, "partition_key": "CAR-00017"}
    kept = base64.b64decode(letter.body) if letter.body_encoding == "base64" else letter.body.encode()
    assert kept == bad, "the dead letter keeps the body exactly as received"


def test_good_records_are_typed_per_the_telemetry_schema():
    good, dead = parse_events([body(record(Battery_ID=17)), body(RECORD)], received=ARRIVED)

    assert dead == []
    assert list(good.columns) == COLUMNS
    assert good["Date"].dtype.kind == "M"
    assert good["Battery_ID"].tolist() == ["17", "17"], "an integer id becomes the same string id"
    assert good[DAILY_CYCLES].dtype == np.float64
    assert good.iloc[0]["Battery_Age_Days"] == 1538


def test_extra_fields_are_ignored_since_the_contract_grows_by_adding_fields():
    good, dead = parse_events([body(record(Firmware="4.2.1", Odometer_Km=81234))], received=ARRIVED)

    assert dead == [] and len(good) == 1


def test_a_bad_record_in_an_array_dead_letters_only_that_record_with_its_index():
    backlog = [record(Date="2017-03-17"), record(Date="2017-03-18", Daily_Cycles_Used=-1), "oops",
               record(Date="2017-03-19")]  # fmt: skip

    good, dead = parse_events([body(backlog)], [{"sequence_number": 7}], received=ARRIVED)

    assert good["Date"].dt.strftime("%Y-%m-%d").tolist() == ["2017-03-17", "2017-03-19"]
    assert [(d.event_index, d.record_index) for d in dead] == [(0, 1), (0, 2)]
    assert "Daily_Cycles_Used=-1 outside" in dead[0].reason
    assert json.loads(dead[0].body) == backlog[1], "the record itself is kept, not the whole backlog"
    assert dead[1].reason == "record is a JSON string, expected an object"
    assert all(d.metadata == {"sequence_number": 7} for d in dead)


def test_a_record_with_several_problems_names_each_of_them():
    unreadable = record(Car_ID=None, Number_Of_Trips="many")
    implausible = record(Number_Of_Trips=5.5, Daily_Cycles_Used=-3)

    _, dead = parse_events([body(unreadable), body(implausible)], received=ARRIVED)

    assert [d.reason for d in dead] == [
        "missing field Car_ID; Number_Of_Trips: expected a JSON number, got a string",
        "Number_Of_Trips: not a whole number (5.5); Daily_Cycles_Used=-3 outside [0, 10]",
    ]


def test_nothing_is_lost_in_a_large_mixed_batch():
    rng = np.random.default_rng(4)
    bodies = []
    for i in range(300):
        choice = rng.integers(4)
        if choice == 0:
            bodies.append(b"{broken")
        elif choice == 1:
            bodies.append(body(record(Battery_ID=str(i), Daily_Cycles_Used=-1.0)))
        elif choice == 2:
            bodies.append(body([record(Battery_ID=str(i)), record(Battery_ID=str(i), Date="2017-03-20")]))
        else:
            bodies.append(body(record(Battery_ID=str(i))))
    records_sent = sum(len(json.loads(b)) if b.startswith(b"[") else 1 for b in bodies)

    good, dead = parse_events(bodies, received=ARRIVED)

    assert len(good) + len(dead) == records_sent
    bad_events = {i for i, sent in enumerate(bodies) if b"broken" in sent or b"-1.0" in sent}
    assert {d.event_index for d in dead} == bad_events


def test_an_empty_batch_gives_an_empty_typed_frame():
    good, dead = parse_events([])

    assert dead == [] and good.empty and list(good.columns) == COLUMNS


def test_metadata_must_match_the_bodies():
    with pytest.raises(ValueError, match="metadata has 1 entries for 2 bodies"):
        parse_events([b"{}", b"{}"], [{}])


def test_a_dead_letter_round_trips_through_json():
    _, dead = parse_events([b"\x80"], [{"enqueued_time": "2017-03-20T01:02:03+00:00"}])

    assert DeadLetter.from_dict(json.loads(json.dumps(dead[0].to_dict()))) == dead[0]


def test_the_date_window_is_relative_to_each_events_enqueued_time():
    days = ["2017-03-20", "2017-03-21", "2017-03-22", "2017-03-23"]
    bodies = [body(record(Date=day)) for day in days]
    metadata = [{"enqueued_time": "2017-03-21T23:59:00+00:00"}] * 3 + [{"enqueued_time": "2017-03-22T00:00:00Z"}]

    good, dead = parse_events(bodies, metadata, received=datetime(2030, 1, 1, tzinfo=UTC))

    assert good["Date"].dt.strftime("%Y-%m-%d").tolist() == ["2017-03-20", "2017-03-21", "2017-03-22", "2017-03-23"]
    assert dead == [], "a day ahead of the arrival day is accepted; `received` is only the fallback"
    _, dead = parse_events([body(record(Date="2017-03-23"))], [{"enqueued_time": "2017-03-21T23:59:00+00:00"}])
    assert [letter.reason for letter in dead] == [
        "Date: future date 2017-03-23 (the event arrived on 2017-03-21; records after 2017-03-22 are refused)"
    ]


def test_an_event_without_a_usable_enqueued_time_is_judged_by_the_batchs_receive_time():
    metadata = [{}, {"enqueued_time": None}, {"enqueued_time": "yesterday"}]
    bodies = [body(record(Date="2017-03-22")), body(record(Date="2017-03-23")), body(record(Date="2017-03-24"))]

    good, dead = parse_events(bodies, metadata, received=ARRIVED)

    assert good["Date"].dt.strftime("%Y-%m-%d").tolist() == ["2017-03-22"]
    assert [letter.event_index for letter in dead] == [1, 2]
    assert all("future date" in letter.reason for letter in dead)


def test_the_oldest_day_accepted_follows_max_age_days():
    bodies = [body(record(Date="2017-03-11")), body(record(Date="2017-03-10"))]

    good, dead = parse_events(bodies, received=ARRIVED, max_age_days=10)

    assert good["Date"].dt.strftime("%Y-%m-%d").tolist() == ["2017-03-11"]
    assert [letter.reason for letter in dead] == [
        "Date: too old 2017-03-10 (the event arrived on 2017-03-21; records before 2017-03-11 are refused)"
    ]


def test_ids_at_the_limits_are_accepted():
    ids = ["7" * 256, "é" * 256, "😀" * 256, "a.b", "...", "CAR 17", "%2F"]
    good, dead = parse_events([body(record(Battery_ID=i, Car_ID=i)) for i in ids], received=ARRIVED)

    assert dead == []
    assert good["Battery_ID"].tolist() == ids and good["Car_ID"].tolist() == ids


def test_a_check_that_fails_for_one_event_dead_letters_only_that_event(monkeypatch):
    import shared.core.events as events

    real = events.coerce_telemetry

    def breaks_on_car_13(raw):
        if (raw["Car_ID"] == "CAR-13").any():
            raise OverflowError("a value no check foresaw")
        return real(raw)

    monkeypatch.setattr(events, "coerce_telemetry", breaks_on_car_13)
    bodies = [body(record(Car_ID="CAR-12")), body([record(Car_ID="CAR-13"), RECORD]), body(record(Car_ID="CAR-14"))]

    good, dead = parse_events(bodies, received=ARRIVED)

    assert good["Car_ID"].tolist() == ["CAR-12", "CAR-14"]
    assert [(letter.event_index, letter.record_index) for letter in dead] == [(1, 0), (1, 1)]
    assert all(letter.reason == "could not be validated (OverflowError: a value no check foresaw)" for letter in dead)


def test_dead_letters_are_storable_as_utf8_json_whatever_the_record_held():
    lone = "\ud83d"
    bodies = [body([record(Car_ID=f"CAR-{lone}", Firmware=lone), record(Date=f"2017-03-1{lone}")])]

    _, dead = parse_events(bodies, received=ARRIVED)

    assert [letter.record_index for letter in dead] == [0, 1]
    for letter in dead:
        json.dumps(letter.to_dict(), ensure_ascii=False).encode("utf-8")  # what the dead-letter store writes
    assert json.loads(dead[0].body) == record(Car_ID=f"CAR-{lone}", Firmware=lone), "the record itself, replayable"
    assert "\\ud83d" in dead[1].reason
