"""The alert lifecycle through the real functions on Azurite: expiry, supersession, retraction after a battery
replacement (or counter reset) in telemetry, quiet hours in the car's time zone.

The app's clock is the harness's simulated one; Azurite hides a held alert's copy on wall time, so the
test hands that copy to push_alert itself once the simulated clock has passed its release (as the queue
would once it is visible again).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from _models import model_dir
from _services import DAYS, LAST_DAY, TELEMETRY, backlogs, batteries, battery_days, day_events
from azure.functions.queue import QueueMessage
from test_spark_submit import DATABRICKS, recording_session

from shared.adapters import alert_store
from shared.adapters.archive import archive_telemetry
from shared.adapters.lifecycle_store import write_time_zones
from shared.adapters.registry import ModelRegistry
from shared.adapters.storage import queue_service
from shared.config.settings import SettingsError, load_settings
from shared.core.alerts import iso_utc
from shared.core.lifecycle import InstalledBattery, QuietHours, battery_change
from shared.core.telemetry import InputError


def stored(harness, alert: dict) -> dict | None:
    return alert_store.get_alert(alert_store.alerts_table(harness.services.tables), alert["car_id"], alert["alert_id"])


def records(harness, car: str) -> list[dict]:
    return alert_store.list_alerts(alert_store.alerts_table(harness.services.tables), car)


def queued_for(harness, car: str) -> list[dict]:
    return [alert for alert in harness.queued() if alert["car_id"] == car]


@pytest.mark.parametrize(("waited_hours", "state"), [(23, "delivered"), (25, "expired")])
def test_an_alert_not_delivered_within_the_expiry_is_expired_not_delivered_late(harness, make_alert,
                                                                                 waited_hours, state):  # fmt: skip
    alert = make_alert()
    harness.clock.now = datetime(2017, 3, 20, 3, tzinfo=UTC) + timedelta(hours=waited_hours)  # created 03:00
    harness.send_alerts([alert])

    drain = harness.host.drain_queue("push_alert")

    assert (drain.succeeded, drain.failed_attempts) == (1, 0)
    record = stored(harness, alert)
    assert record["state"] == state
    if state == "expired":
        assert harness.simulator.attempts == []
        assert "not delivered within 24 h of 2017-03-20T03:00:00Z" in record["reason"]
    else:
        assert harness.simulator.received("CAR-00017") == [alert]


def test_of_two_alerts_queued_for_one_battery_only_the_newer_is_delivered(harness):
    harness.host.deliver_events("score_telemetry", backlogs(batteries(TELEMETRY, 1, DAYS - 1)))
    harness.clock.advance(hours=1)  # the last day's record arrives an hour after the backlog
    harness.host.deliver_events("score_telemetry", day_events(batteries(TELEMETRY, DAYS, DAYS)))
    older, newer = sorted(queued_for(harness, "CAR-PAST"), key=lambda alert: alert["created_at"])
    assert older["alert_id"] != newer["alert_id"]  # two days, two alerts for B-PAST

    harness.host.drain_queue("push_alert")

    assert harness.simulator.received("CAR-PAST") == [newer]
    record = stored(harness, older)
    assert record["state"] == "superseded"
    assert f"superseded by alert {newer['alert_id']} for battery B-PAST" in record["reason"]


@pytest.mark.parametrize("new_battery", ["B-NEW", "B-SOON"], ids=["replaced", "counter-reset"])
def test_a_battery_replaced_in_telemetry_retracts_its_queued_alert_and_resolves_its_delivered_one(harness, new_battery):
    """CAR-PAST's alert is delivered before the change, CAR-SOON's still queued: after telemetry shows a new
    battery in both cars (or, with "counter-reset", B-SOON's age and counter back near 0 under its id),
    the delivered one is resolved and the queued one retracted when dequeued, never sent."""
    history = batteries(TELEMETRY, 1, DAYS)
    harness.host.deliver_events("score_telemetry", backlogs(history[history["Car_ID"] == "CAR-PAST"]))
    harness.host.drain_queue("push_alert")
    [delivered] = harness.simulator.received("CAR-PAST")
    harness.host.deliver_events("score_telemetry", backlogs(history[history["Car_ID"] == "CAR-SOON"]))
    [queued] = queued_for(harness, "CAR-SOON")
    harness.clock.advance(hours=12)

    next_day = (pd.Timestamp(LAST_DAY) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    fresh = pd.concat([battery_days("B-NEW", "CAR-PAST", next_day, 1, lifetime_at_end=0.15),
                       battery_days(new_battery, "CAR-SOON", next_day, 1, lifetime_at_end=0.15)])  # fmt: skip
    fresh["Battery_Age_Days"] = 0.0
    changed = harness.host.deliver_events("score_telemetry", day_events(fresh))
    harness.host.drain_queue("push_alert")

    assert changed.errors == []
    assert harness.simulator.received("CAR-SOON") == []
    retracted = stored(harness, queued)
    assert retracted["state"] == "retracted"
    reset = new_battery == "B-SOON"
    assert ("reset" if reset else "battery B-SOON replaced by B-NEW") in retracted["reason"]
    resolved = stored(harness, delivered)
    assert resolved["state"] == "resolved"
    assert "battery B-PAST replaced by B-NEW" in resolved["reason"]
    assert harness.simulator.received("CAR-PAST") == [delivered]  # nothing sent about it again


@pytest.mark.parametrize("engine", ["in-process", "spark"])
def test_the_nightly_batch_sees_a_replacement_too(harness, engine):
    """With SPARK_TARGET set the night's scoring runs on a cluster, but the timer still notes the batteries."""
    harness.clock.now = datetime(2016, 3, 11, 12, tzinfo=UTC)  # the alert made at noon: unexpired at 03:00 tomorrow
    history = batteries(TELEMETRY, 1, DAYS)
    harness.host.deliver_events("score_telemetry", backlogs(history[history["Car_ID"] == "CAR-PAST"]))
    [queued] = queued_for(harness, "CAR-PAST")
    # The next day's record shows a new battery; it reaches the archive (as an offline car's upload would),
    # and the nightly run after it notes the replacement before the old alert is dequeued.
    next_day = (pd.Timestamp(LAST_DAY) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    fresh = battery_days("B-NEW", "CAR-PAST", next_day, 1, lifetime_at_end=0.15).assign(Battery_Age_Days=0.0)
    archive_telemetry(harness.services.blobs, fresh, harness.clock(), "replacement-upload")
    ModelRegistry(harness.services.blobs).promote_if_better(model_dir())
    harness.clock.now = datetime(2016, 3, 12, 3, tzinfo=UTC)
    if engine == "spark":
        session, api = recording_session([(200, {"run_id": 5})])
        harness.configure(**DATABRICKS, DATABRICKS_TOKEN="t").gateway = session

    nightly = harness.host.fire_timer("nightly_batch_score_timer")
    harness.host.drain_queue("push_alert")

    assert nightly.succeeded
    if engine == "spark":
        assert len(api.sent) == 1  # submitted, not scored here
    assert harness.simulator.received("CAR-PAST") == []
    assert stored(harness, queued)["state"] == "retracted"


# --- quiet hours ---------------------------------------------------------------------------------------

# 21:30 UTC on 2017-03-19 is 22:30 in Berlin (CET, UTC+1: quiet until 07:00 the next day, 06:00 UTC) and
# 17:30 in New York (EDT since 12 March, UTC-4: not quiet). 10:00 UTC the next day is 11:00 in Berlin and
# 06:00 in New York (quiet until 07:00 there, 11:00 UTC).
EVENING = datetime(2017, 3, 19, 21, 30, tzinfo=UTC)
MORNING = datetime(2017, 3, 20, 10, 0, tzinfo=UTC)


def quiet_harness(harness):
    harness.configure(QUIET_HOURS="22:00-07:00")
    cars = pd.DataFrame({"Car_ID": ["CAR-BER", "CAR-NYC"], "Region": ["Continental", "Nordic"],
                         "time_zone": [None, "America/New_York"]})  # fmt: skip
    assert write_time_zones(harness.services.tables, cars) == 2  # Berlin from the Region, New York named
    return harness


@pytest.mark.parametrize(("moment", "quiet_car", "awake_car", "release"), [
    (EVENING, "CAR-BER", "CAR-NYC", datetime(2017, 3, 20, 6, tzinfo=UTC)),
    (MORNING, "CAR-NYC", "CAR-BER", datetime(2017, 3, 20, 11, tzinfo=UTC)),
], ids=["berlin-night", "new-york-night"])  # fmt: skip
def test_quiet_hours_hold_a_non_critical_alert_in_the_cars_local_night_until_they_end(
    harness, make_alert, moment, quiet_car, awake_car, release
):
    quiet_harness(harness)
    harness.clock.now = moment
    held, sent = (dict(make_alert(car_id=car), created_at=iso_utc(moment)) for car in (quiet_car, awake_car))
    harness.send_alerts([held, sent])

    drain = harness.host.drain_queue("push_alert")

    assert (drain.succeeded, drain.failed_attempts) == (2, 0)
    assert harness.simulator.received(awake_car) == [sent]
    assert harness.simulator.received(quiet_car) == []
    record = stored(harness, held)
    assert (record["state"], record["release_at"]) == ("held", iso_utc(release))
    assert queue_length(harness) == 1  # its copy waits on the queue, hidden until the release (data, not a sleep)

    # The copy comes back when the quiet hours have ended: delivered then, not before.
    push_alert = harness.host.functions["push_alert"].user_function
    harness.clock.now = release - timedelta(minutes=1)
    push_alert(QueueMessage(id="again", body=json.dumps(held).encode(), dequeue_count=1))
    assert harness.simulator.received(quiet_car) == []
    harness.clock.now = release
    push_alert(QueueMessage(id="again", body=json.dumps(held).encode(), dequeue_count=1))
    assert harness.simulator.received(quiet_car) == [held]
    assert stored(harness, held)["state"] == "delivered"


def test_a_critical_alert_is_not_held_by_quiet_hours(harness, make_alert):
    quiet_harness(harness)
    harness.clock.now = EVENING
    critical = dict(make_alert(car_id="CAR-BER", days_left=5.0), created_at=iso_utc(EVENING))
    assert critical["severity"] == "critical"
    harness.send_alerts([critical])

    harness.host.drain_queue("push_alert")

    assert harness.simulator.received("CAR-BER") == [critical]


def queue_length(harness, name: str = "maintenance-alerts") -> int:
    """Messages on a queue, the invisible ones included."""
    return queue_service(harness.connection).get_queue_client(name).get_queue_properties().approximate_message_count


# --- the rules on their own -----------------------------------------------------------------------------


@pytest.mark.parametrize(("local", "zone", "release"), [
    ("2017-03-25T23:30", "Europe/Berlin", "2017-03-26T05:00:00Z"),  # the night the clocks go forward: 07:00 CEST
    ("2017-03-20T06:59", "Europe/Berlin", "2017-03-20T06:00:00Z"),  # the morning part of the window
    ("2017-03-20T07:00", "Europe/Berlin", None),  # the end is not inside
    ("2017-03-19T21:59", "America/New_York", None),
], ids=["dst", "morning", "end", "before"])  # fmt: skip
def test_quiet_hours_are_read_on_the_local_calendar(local, zone, release):
    now = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone))
    got = QuietHours.parse("22:00-07:00").release(now, zone)
    assert (iso_utc(got) if got else None) == release


@pytest.mark.parametrize(("name", "value", "says"), [
    ("QUIET_HOURS", "22-7", "HH:MM-HH:MM"), ("QUIET_HOURS", "07:00-07:00", "same time"),
    ("ALERT_EXPIRY_HOURS", "0", "more than 0"), ("ALERT_EXPIRY_HOURS", "soon", "must be a number"),
])  # fmt: skip
def test_bad_lifecycle_settings_fail_naming_the_setting(name, value, says):
    with pytest.raises(SettingsError, match=name) as error:
        load_settings({name: value})
    assert says in str(error.value)


def test_defaults_expire_after_a_day_and_hold_nothing():
    settings = load_settings({})
    assert (settings.alert_expiry_hours, settings.quiet_hours) == (24.0, "")


def test_a_time_zone_that_is_not_one_is_refused_naming_the_car(harness):
    with pytest.raises(InputError, match=r"CAR-X.*Europe/Berlln"):
        write_time_zones(harness.services.tables, pd.DataFrame({"Car_ID": ["CAR-X"], "Region": ["Nordic"],
                                                                "time_zone": ["Europe/Berlln"]}))  # fmt: skip


@pytest.mark.parametrize(("known_counter", "seen", "kind"), [
    (190.0, InstalledBattery("B-2", 0.0, 0.1, "2016-03-11"), "replaced"),
    (190.0, InstalledBattery("B-1", 0.0, 0.1, "2016-03-11"), "counter_reset"),  # counter and age back near 0
    (190.0, InstalledBattery("B-1", 431.0, 0.0, "2016-03-11"), None),  # a counter reading of 0 alone: a glitch
    (2.5e5, InstalledBattery("B-1", 431.0, 190.1, "2016-03-11"), None),  # the reading after a spike
    (190.0, InstalledBattery("B-2", 0.0, 0.1, "2016-03-09"), None),  # an older record (out of order)
])  # fmt: skip
def test_a_battery_change_is_a_new_id_or_a_counter_reset_with_the_age(known_counter, seen, kind):
    known = InstalledBattery("B-1", 430.0, known_counter, "2016-03-10")
    change = battery_change("CAR-1", known, seen)
    assert (change.kind if change else None) == kind
