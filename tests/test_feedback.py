"""Head-unit feedback: POST /api/vehicles/{car_id}/alerts/{alert_id}/feedback through the local host, and its
effect on the next alerts, whichever path (nightly batch or streaming telemetry) produced them.

Real Azurite, the real scoring endpoint and head-unit simulator (which signs the answers); requests are
real `azure.functions.HttpRequest` objects built by the host for the app's route. The cooldown is set to 0
days, so that every later alert held back is held back by the owner's answer and nothing else.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from _models import model_dir
from _services import (
    AT_RISK,
    DAYS,
    NIGHT,
    SIGNING_KEY,
    TELEMETRY,
    backlogs,
    batteries,
    battery_days,
    day_events,
    expected_id,
)  # fmt: skip

from shared.adapters import alert_store
from shared.adapters.feedback_store import outcome_counts
from shared.adapters.headunit import signed_headers
from shared.adapters.registry import ModelRegistry
from shared.core.alerts import CRITICAL, HIGH, iso_utc

GRACE_DAYS = 14


@pytest.fixture
def app(harness):
    harness.configure(ALERT_COOLDOWN_DAYS="0", FEEDBACK_BOOKING_GRACE_DAYS=str(GRACE_DAYS))
    return harness


def answer(harness, alert: dict, action: str, *, car_id: str | None = None, timestamp: int | None = None,
           at: datetime | None = None, **fields) -> tuple[int, dict]:  # fmt: skip
    """Send the head unit's signed answer about `alert` (stamped with the app's clock unless told)."""
    now = harness.clock.now
    stamp = int(now.timestamp()) if timestamp is None else timestamp
    body, headers = harness.simulator.feedback_request(alert["alert_id"], action, at or now, timestamp=stamp, **fields)
    return post(harness, car_id or alert["car_id"], alert["alert_id"], body, headers)


def post(harness, car_id: str, alert_id: str, body: bytes, headers: dict) -> tuple[int, dict]:
    response = harness.host.call_http("alert_feedback", "POST", route_params={"car_id": car_id, "alert_id": alert_id},
                                      headers=headers, body=body)  # fmt: skip
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


def deliver(harness, *alerts: dict) -> None:
    harness.send_alerts(list(alerts))
    harness.host.drain_queue("push_alert")


def stored(harness, alert: dict) -> dict:
    return alert_store.get_alert(alert_store.alerts_table(harness.services.tables), alert["car_id"], alert["alert_id"])


def received_ids(harness, car_id: str = "CAR-00017") -> list[str]:
    return [alert["alert_id"] for alert in harness.simulator.received(car_id)]


# --- what each action does to the next alerts ---------------------------------------------------------


def test_after_a_dismissal_and_a_booking_neither_path_delivers_the_next_alerts(app):
    """Both producers at once: the stream and the nightly batch each queue the next day's alert of both cars."""
    ModelRegistry(app.services.blobs).promote_if_better(model_dir())
    app.clock.now = NIGHT - timedelta(days=1)
    app.host.deliver_events("score_telemetry", backlogs(batteries(TELEMETRY, 1, DAYS - 1)))
    app.host.drain_queue("push_alert")
    first = {car: app.simulator.received(car)[0] for car in AT_RISK}
    assert first["CAR-SOON"]["severity"] == HIGH and first["CAR-PAST"]["severity"] == CRITICAL
    assert answer(app, first["CAR-SOON"], "dismissed")[0] == 200
    assert answer(app, first["CAR-PAST"], "service_booked", booking_ref="WS-1",
                  service_at=app.clock.now + timedelta(days=3))[0] == 200  # fmt: skip

    app.clock.now = NIGHT
    streamed = app.host.deliver_events("score_telemetry", day_events(batteries(TELEMETRY, DAYS, DAYS)))
    nightly = app.host.fire_timer("nightly_batch_score_timer")
    drain = app.host.drain_queue("push_alert")

    assert streamed.batches[0].enqueued == nightly.enqueued == {"maintenance-alerts": 2}
    assert (drain.succeeded, drain.failed_attempts) == (4, 0)
    for car in AT_RISK:
        assert app.simulator.received(car) == [first[car]]  # nothing new reached either head unit
    next_soon, next_past = (
        stored(app, {"car_id": car, "alert_id": expected_id(car)}) for car in ("CAR-SOON", "CAR-PAST")
    )
    assert (next_soon["state"], next_soon["severity"]) == ("suppressed", HIGH)
    assert next_soon["reason"].startswith("dismissed: a high alert was dismissed")
    assert next_past["state"] == "suppressed"
    assert next_past["reason"].startswith("service_booked: service booked (WS-1)")


def test_seen_stops_nothing(app, make_alert):
    first, second = make_alert(day="2016-03-08"), make_alert(day="2016-03-09")
    deliver(app, first)
    assert answer(app, first, "seen")[1]["result"] == "accepted"

    deliver(app, second)

    assert received_ids(app) == [first["alert_id"], second["alert_id"]]


def test_a_dismissal_holds_back_as_severe_alerts_of_that_battery_until_the_severity_rises(app, make_alert):
    first, same = make_alert(day="2016-03-07"), make_alert(day="2016-03-08", days_left=11.5)
    worse = make_alert(day="2016-03-09", days_left=5.0)
    other_battery = make_alert(day="2016-03-08") | {"battery_id": "18", "alert_id": "b" * 32}  # starts clean
    deliver(app, first)
    answer(app, first, "dismissed")

    deliver(app, same, other_battery, worse)

    assert received_ids(app) == [first["alert_id"], other_battery["alert_id"], worse["alert_id"]]
    assert stored(app, same)["state"] == "suppressed"


def test_a_snooze_holds_back_non_critical_alerts_until_its_time_and_critical_ones_pass(app, make_alert):
    first, held = make_alert(day="2016-03-07"), make_alert(day="2016-03-08", days_left=11.5)
    critical, after = make_alert(day="2016-03-09", days_left=5.0), make_alert(day="2016-03-10", days_left=10.5)
    deliver(app, first)
    answer(app, first, "snoozed", snooze_until=app.clock.now + timedelta(days=2))

    deliver(app, held, critical)
    app.clock.advance(days=2)  # the snooze is over
    deliver(app, after)

    assert received_ids(app) == [first["alert_id"], critical["alert_id"], after["alert_id"]]
    assert stored(app, held)["reason"].startswith("snoozed: snoozed until " + iso_utc(NIGHT + timedelta(days=2)))


def test_a_booking_holds_back_every_alert_of_the_battery_until_the_appointment_plus_the_grace(app, make_alert):
    first, critical = make_alert(day="2016-03-07"), make_alert(day="2016-03-08", days_left=5.0)
    reminder = make_alert(day="2016-03-09", days_left=4.0)
    appointment = app.clock.now + timedelta(days=5)
    deliver(app, first)
    answer(app, first, "service_booked", service_at=appointment)

    deliver(app, critical)
    app.clock.now = appointment + timedelta(days=GRACE_DAYS) - timedelta(seconds=1)
    deliver(app, reminder)
    assert received_ids(app) == [first["alert_id"]]
    app.clock.advance(seconds=1)  # the grace is over: the battery is still there, so the owner hears again
    deliver(app, reminder)

    assert received_ids(app) == [first["alert_id"], reminder["alert_id"]]
    assert stored(app, critical)["reason"].startswith("service_booked:")


# --- refusals -----------------------------------------------------------------------------------------


def test_a_bad_signature_or_a_timestamp_outside_the_tolerance_is_401_and_records_nothing(app, make_alert):
    alert = make_alert(day="2016-03-08")
    deliver(app, alert)
    now = int(app.clock.now.timestamp())
    body, headers = app.simulator.feedback_request(alert["alert_id"], "seen", app.clock.now, timestamp=now)

    assert post(app, alert["car_id"], alert["alert_id"], body.replace(b"seen", b"dismissed"), headers)[0] == 401
    assert post(app, alert["car_id"], alert["alert_id"], body, headers | {"X-Signature": "sha256=00"}) == (
        401, {"error": "missing or bad X-Signature"})  # fmt: skip
    assert post(app, alert["car_id"], alert["alert_id"], body, headers | {"webhook-signature": "v1,AAAA"})[0] == 401
    stale = answer(app, alert, "seen", timestamp=now - 301)  # a captured answer replayed 5 minutes later
    future = answer(app, alert, "seen", timestamp=now + 301)
    assert stale == (401, {"error": "webhook-timestamp is +301 s from now, outside ±300 s"})
    assert future == (401, {"error": "webhook-timestamp is -301 s from now, outside ±300 s"})
    assert stored(app, alert)["seen_at"] is None


def test_the_same_answer_twice_changes_nothing_and_a_replay_within_the_window_is_that(app, make_alert):
    alert = make_alert(day="2016-03-08")
    deliver(app, alert)
    body, headers = app.simulator.feedback_request(alert["alert_id"], "seen", app.clock.now,
                                                   timestamp=int(app.clock.now.timestamp()))  # fmt: skip
    assert post(app, alert["car_id"], alert["alert_id"], body, headers)[1]["result"] == "accepted"
    table = alert_store.alerts_table(app.services.tables)
    etag = table.get_entity(alert["car_id"], alert["alert_id"]).metadata["etag"]

    app.clock.advance(seconds=200)
    replayed = post(app, alert["car_id"], alert["alert_id"], body, headers)
    tapped_again = answer(app, alert, "seen")

    assert replayed[1]["result"] == tapped_again[1]["result"] == "unchanged"
    assert table.get_entity(alert["car_id"], alert["alert_id"]).metadata["etag"] == etag
    assert stored(app, alert)["seen_at"] == iso_utc(NIGHT)


def test_another_cars_alert_or_an_unknown_one_is_404_and_left_alone(app, make_alert):
    mine, theirs = make_alert(), make_alert(car_id="CAR-00018")
    deliver(app, mine, theirs)

    assert answer(app, theirs, "dismissed", car_id="CAR-00017")[0] == 404
    assert answer(app, {"car_id": "CAR-00017", "alert_id": "0" * 32}, "seen")[0] == 404
    assert answer(app, {"car_id": "CAR-00017", "alert_id": "latest-battery_end_of_life"}, "seen")[0] == 404
    assert stored(app, theirs)["dismissed_at"] is None


def test_an_alert_the_car_never_got_is_409_with_its_state(app, make_alert):
    first, held_back = make_alert(day="2016-03-08"), make_alert(day="2016-03-09")
    app.configure(ALERT_COOLDOWN_DAYS="7")
    deliver(app, first, held_back)

    status, body = answer(app, held_back, "seen")

    assert (status, body["state"]) == (409, "suppressed")


@pytest.mark.parametrize(
    ("fields", "words"),
    [({"action": "liked"}, "action must be one of"), ({"action": "seen"}, "at is required"),
     ({"action": "snoozed", "at": "2016-03-11T03:00:00Z"}, "snooze_until is required"),
     ({"action": "seen", "at": "2016-03-11 03:00"}, "at must say its time zone"),
     ({"action": "seen", "at": "2016-03-12T03:00:00Z"}, "at is 2016-03-12T03:00:00Z, in the future"),
     ({"action": "seen", "at": "2016-03-11T03:00:00Z", "colour": "red"}, "unknown field(s): colour"),
     ({"action": "seen", "at": "2016-03-11T03:00:00Z", "booking_ref": "x"}, "booking_ref and service_at are only")],
)  # fmt: skip
def test_a_malformed_body_is_400_naming_the_field(app, make_alert, fields, words):
    alert = make_alert()
    deliver(app, alert)
    body = json.dumps(fields).encode()  # signed as a head unit would sign whatever it sends
    headers = signed_headers("fb_test", body, SIGNING_KEY, int(app.clock.now.timestamp()))

    status, answer_body = post(app, alert["car_id"], alert["alert_id"], body, headers)

    assert status == 400
    assert words in answer_body["error"]


# --- the staff view and the outcome labels ------------------------------------------------------------


def test_the_staff_view_shows_the_lifecycle_and_the_battery_replaced_after_a_booking(app):
    ModelRegistry(app.services.blobs).promote_if_better(model_dir())
    app.host.deliver_events("score_telemetry", backlogs(TELEMETRY))
    app.host.drain_queue("push_alert")
    [alert] = app.simulator.received("CAR-PAST")
    answer(app, alert, "seen")
    app.clock.advance(minutes=5)
    answer(app, alert, "service_booked", booking_ref="WS-9", service_at=app.clock.now + timedelta(days=2))
    app.clock.advance(days=3)
    new_battery = battery_days("B-NEW", "CAR-PAST", "2016-03-13", 1, lifetime_at_end=0.15)

    app.host.deliver_events("score_telemetry", day_events(new_battery))
    response = app.host.call_http("list_vehicle_alerts", route_params={"car_id": "CAR-PAST"})

    [record] = json.loads(response.get_body())
    assert [(step["step"], step["at"]) for step in record["lifecycle"]] == [
        ("queued", iso_utc(NIGHT)), ("delivered", iso_utc(NIGHT)), ("seen", iso_utc(NIGHT)),
        ("booked", iso_utc(NIGHT + timedelta(minutes=5))),
        ("resolved", iso_utc(NIGHT + timedelta(days=3, minutes=5))),  # the battery it was about was replaced
    ]  # fmt: skip
    assert (record["state"], record["booking_ref"], record["outcome"]) == ("resolved", "WS-9", "replaced")
    assert record["battery_outcome"]["replaced_by"] == "B-NEW"
    assert outcome_counts(alert_store.alerts_table(app.services.tables)) == {
        "answered": 1, "booked": 1, "replaced": 1, "booked_replaced": 1}  # fmt: skip
