"""Alert policy: the contract's JSON, severity, ids, words, and when an alert may go out."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from shared.core.alerts import (
    ALERT_KEYS,
    BATTERY_END_OF_LIFE,
    COOLDOWN,
    COOLDOWN_ELAPSED,
    DUPLICATE,
    ESCALATED,
    FIRST,
    MAX_ID_LENGTH,
    alert_id,
    alerts_from_scores,
    build_alerts,
    check_id,
    should_deliver,
    validate_alert,
)
from shared.core.telemetry import InputError

CREATED = datetime(2017, 3, 20, 3, 0, tzinfo=UTC)
URL = "https://service.example.com/book"


def scores(**columns) -> pd.DataFrame:
    """One battery's score row (the contract's example), with any column overridden; lists make rows."""
    row = {
        "Battery_ID": 17, "Car_ID": "CAR-00017", "failure_probability_30d": 0.93,
        "days_to_rated_life": 12.5, "Lifetime_Cycles_Used": 196.4, "Battery_Rated_Cycles": 200,
        "As_Of": "2017-03-19", "model_version": "v7",
    }  # fmt: skip
    row.update(columns)
    n = max((len(v) for v in row.values() if isinstance(v, list)), default=1)
    return pd.DataFrame({k: v if isinstance(v, list) else [v] * n for k, v in row.items()})


def one_alert(**columns) -> dict:
    [alert] = alerts_from_scores(scores(**columns), 0.8, CREATED, URL)
    return alert


def test_alert_matches_the_contract_exactly():
    alert = one_alert()
    assert tuple(alert) == ALERT_KEYS
    assert alert | {"alert_id": "x", "reasons": []} == {
        "alert_id": "x", "car_id": "CAR-00017", "battery_id": "17", "type": "battery_end_of_life",
        "severity": "high", "failure_probability_30d": 0.93, "days_to_rated_life": 12.5,
        "title": "Battery service recommended",
        "message": "Your battery is expected to reach the end of its rated life in about 12 days.",
        "action": {"type": "schedule_service", "url": URL}, "reasons": [],
        "model_version": "v7", "created_at": "2017-03-20T03:00:00Z", "locale": "en",
        "days_to_rated_life_p10": None, "days_to_rated_life_p50": None, "days_to_rated_life_p90": None,
    }  # fmt: skip
    assert isinstance(alert["alert_id"], str) and len(alert["alert_id"]) == 32
    assert alert["reasons"] and all(isinstance(r, str) for r in alert["reasons"])
    # Native types only: the alert goes through json.dumps on the queue and to the gateway.
    assert json.loads(json.dumps(alert, allow_nan=False)) == alert
    assert type(alert["failure_probability_30d"]) is float and type(alert["battery_id"]) is str


INTERVAL = {"days_to_rated_life_p10": 9.63, "days_to_rated_life_p50": 12.4, "days_to_rated_life_p90": 15.2}


def test_the_interval_is_added_to_the_payload_and_said_in_the_message_when_informative():
    """The added fields (issue 17) come after every contract field, rounded to a tenth of a day as
    days_to_rated_life is; the message gives the interval with its ends rounded outwards."""
    alert = one_alert(**INTERVAL)
    assert tuple(alert)[: len(ALERT_KEYS) - 3] == ALERT_KEYS[:-3]
    assert [alert[key] for key in INTERVAL] == [9.6, 12.4, 15.2]
    assert alert["message"] == (
        "Your battery is expected to reach the end of its rated life in about 12 days (between 9 and 16)."
    )
    assert json.loads(json.dumps(alert, allow_nan=False)) == alert
    validate_alert(alert)


@pytest.mark.parametrize(
    ("p10", "p90", "why"),
    [
        (2.0, 30.0, "wider than the days it is about"),
        (0.4, 14.0, "its early end is within a day"),
        (12.1, 12.9, "no wider than the day itself"),
        (float("nan"), float("nan"), "not given (a model from before the interval)"),
    ],
)
def test_an_uninformative_interval_is_left_out_of_the_message(p10, p90, why):
    alert = one_alert(days_to_rated_life_p10=p10, days_to_rated_life_p50=12.5, days_to_rated_life_p90=p90)
    assert alert["message"] == "Your battery is expected to reach the end of its rated life in about 12 days.", why


def test_a_negative_or_non_numeric_interval_in_a_queued_alert_is_refused():
    alert = one_alert(**INTERVAL)
    for bad in (-1.0, "9", True):
        with pytest.raises(InputError, match="days_to_rated_life_p10 must be null or a number"):
            validate_alert(alert | {"days_to_rated_life_p10": bad})
    validate_alert({key: value for key, value in alert.items() if key not in INTERVAL})  # queued before it existed


def test_only_rows_at_or_over_the_threshold_become_alerts_and_unscored_rows_do_not():
    frame = scores(Car_ID=["A", "B", "C", "D"], Battery_ID=[1, 2, 3, 4],
                   failure_probability_30d=[0.8, 0.7999, float("nan"), 1.0])  # fmt: skip
    alerts = alerts_from_scores(frame, 0.8, CREATED, URL)
    assert [a["car_id"] for a in alerts] == ["A", "D"]
    assert alerts_from_scores(frame.iloc[:0], 0.8, CREATED, URL) == []


@pytest.mark.parametrize(("threshold", "alerted"), [(0.5, "DEFGHI"), (0.8, "FGHI"), (0.95, "HI")])
def test_a_battery_below_the_threshold_is_never_alerted_even_with_some_risk(threshold, alerted):
    probabilities = [0.0, 0.3, 0.49, 0.5, 0.79, 0.8, 0.94, 0.95, 1.0]
    cars = [chr(ord("A") + n) for n in range(len(probabilities))]
    frame = scores(Car_ID=cars, Battery_ID=list(range(len(cars))), failure_probability_30d=probabilities)
    assert "".join(alert["car_id"] for alert in alerts_from_scores(frame, threshold, CREATED, URL)) == alerted


@pytest.mark.parametrize(
    ("days", "lifetime", "severity"),
    [(7.0, 150.0, "critical"), (7.04, 150.0, "critical"), (7.1, 150.0, "high"), (25.0, 200.0, "critical"),
     (25.0, 199.9, "high"), (float("nan"), 210.0, "critical"), (float("nan"), 150.0, "high")],
)  # fmt: skip
def test_severity_is_critical_within_seven_days_or_past_rated_life(days, lifetime, severity):
    assert one_alert(days_to_rated_life=days, Lifetime_Cycles_Used=lifetime)["severity"] == severity


@pytest.mark.parametrize(
    ("days", "lifetime", "message"),
    [
        (12.5, 150.0, "Your battery is expected to reach the end of its rated life in about 12 days."),
        (2.0, 150.0, "Your battery is expected to reach the end of its rated life in about 2 days."),
        (1.6, 150.0, "Your battery is expected to reach the end of its rated life in about 1 day."),
        (0.4, 150.0, "Your battery is expected to reach the end of its rated life within a day."),
        (0.0, 150.0, "Your battery is expected to reach the end of its rated life within a day."),
        (0.0, 200.0, "Your battery has reached the end of its rated life."),
        (float("nan"), 150.0, "Your battery is likely to reach the end of its rated life within the next 30 days."),
    ],
)
def test_message_says_what_and_when_in_plain_words(days, lifetime, message):
    alert = one_alert(days_to_rated_life=days, Lifetime_Cycles_Used=lifetime)
    assert alert["message"] == message
    assert "about 0 days" not in alert["message"]


def test_unknown_days_to_rated_life_is_null_not_nan():
    assert one_alert(days_to_rated_life=float("inf"))["days_to_rated_life"] is None


def test_alert_id_depends_on_car_battery_type_and_day_only():
    batch = one_alert(failure_probability_30d=0.91, days_to_rated_life=13.0, model_version="batch")
    streaming = alerts_from_scores(
        scores(As_Of=pd.Timestamp("2017-03-19"), failure_probability_30d=0.95, model_version="online"),
        0.9, CREATED + timedelta(hours=9), URL,
    )[0]  # fmt: skip
    assert batch["alert_id"] == streaming["alert_id"] == alert_id("CAR-00017", "17", BATTERY_END_OF_LIFE,
                                                                    date(2017, 3, 19))  # fmt: skip
    assert one_alert(As_Of="2017-03-20")["alert_id"] != batch["alert_id"]
    assert one_alert(Battery_ID=18)["alert_id"] != batch["alert_id"]
    assert one_alert(Car_ID="CAR-00018")["alert_id"] != batch["alert_id"]
    assert alert_id("CAR-00017", "17", "component_compliance", "2017-03-19") != batch["alert_id"]
    # Ids that would collide if the parts were simply joined with a separator do not.
    day = "2017-03-19"
    assert alert_id("A|B", "C", BATTERY_END_OF_LIFE, day) != alert_id("A", "B|C", BATTERY_END_OF_LIFE, day)


def test_reasons_from_the_scorer_are_kept_and_missing_ones_are_the_numbers():
    frame = scores(Car_ID=["A", "B"], Battery_ID=[1, 2], reasons=[["usage doubled this month"], None])
    given, default = alerts_from_scores(frame, 0.8, CREATED, URL)
    assert given["reasons"] == ["usage doubled this month"]
    assert default["reasons"] == ["93% chance of reaching the rated 200 cycles within 30 days",
                                  "196.4 of 200 rated cycles used",
                                  "rated life expected to be reached around 31 March 2017"]  # fmt: skip


def test_model_version_argument_is_used_when_the_frame_has_none():
    frame = scores().drop(columns="model_version")
    assert alerts_from_scores(frame, 0.8, CREATED, URL, model_version="v9")[0]["model_version"] == "v9"
    with pytest.raises(InputError, match="model_version"):
        alerts_from_scores(frame, 0.8, CREATED, URL)


def test_each_alert_owns_its_action_object():
    first, second = alerts_from_scores(scores(Car_ID=["A", "B"]), 0.8, CREATED, URL)
    first["action"]["url"] = "changed"
    assert second["action"]["url"] == URL


@pytest.mark.parametrize(
    ("columns", "words"),
    [
        ({"As_Of": "yesterday"}, "column As_Of: not a date on row(s) 0"),
        ({"Car_ID": "  "}, "column Car_ID: empty id"),
        ({"failure_probability_30d": 1.5}, "failure_probability_30d: outside [0, 1]"),
        ({"Lifetime_Cycles_Used": "lots"}, "column Lifetime_Cycles_Used: not a number"),
    ],
)
def test_bad_scores_are_named(columns, words):
    with pytest.raises(InputError, match=re.escape(words)):
        alerts_from_scores(scores(**columns), 0.8, CREATED, URL)


def test_missing_columns_and_naive_times_are_refused():
    with pytest.raises(InputError, match=r"missing column.*As_Of"):
        alerts_from_scores(scores().drop(columns="As_Of"), 0.8, CREATED, URL)
    with pytest.raises(ValueError, match="no time zone"):
        alerts_from_scores(scores(), 0.8, datetime(2017, 3, 20, 3), URL)


def test_the_envelope_takes_other_alert_types():
    content = pd.DataFrame({
        "car_id": ["CAR-1"], "battery_id": ["9"], "day": ["2017-03-19"], "severity": ["high"],
        "failure_probability_30d": [0.85], "days_to_rated_life": [float("nan")], "title": ["Recall check"],
        "message": ["A part in your car needs a check."], "reasons": [["recall 42"]], "model_version": ["r1"],
    })  # fmt: skip
    [alert] = build_alerts(content, "component_compliance", CREATED, URL)
    assert alert["type"] == "component_compliance" and alert["days_to_rated_life"] is None
    assert alert["alert_id"] == alert_id("CAR-1", "9", "component_compliance", "2017-03-19")
    with pytest.raises(ValueError, match="lower_snake_case"):
        build_alerts(content, "Bad Type!", CREATED, URL)


def test_validate_alert_names_every_problem():
    validate_alert(one_alert())
    broken = one_alert() | {"severity": "urgent", "created_at": "yesterday", "car_id": ""}
    del broken["message"]
    with pytest.raises(InputError) as error:
        validate_alert(broken)
    for words in ("missing message", "car_id must be a non-empty string", "severity must be one of",
                  "created_at must look like"):  # fmt: skip
        assert words in str(error.value)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("CAR/17", "contains ['/']"), ("CAR\\17", "contains ['\\\\']"), ("CAR#17", "contains ['#']"),
        ("CAR?17", "contains ['?']"), ("CAR\x0017", "contains ['\\x00']"), ("CAR\n17", "contains ['\\n']"),
        ("CAR\x7f", "contains ['\\x7f']"), ("CAR\x85", "contains ['\\x85']"),
        (".", "dot segment"), ("..", "dot segment"), ("CAR\ud800", "lone surrogate"),
        ("x" * (MAX_ID_LENGTH + 1), f"over the limit of {MAX_ID_LENGTH}"),
        ("", "non-empty string"), ("   ", "non-empty string"), (17, "non-empty string"), (None, "non-empty string"),
    ],
)  # fmt: skip
def test_ids_no_table_key_or_url_segment_can_hold_are_refused_naming_why(value, words):
    with pytest.raises(InputError) as error:
        check_id(value, "car_id")
    assert str(error.value).startswith("car_id") and words in str(error.value)


@pytest.mark.parametrize("value", ["CAR-00017", "car 17", "Pkw-Müller", "CAR.1", "...", "x" * MAX_ID_LENGTH])
def test_ids_that_fit_everywhere_pass_unchanged(value):
    assert check_id(value, "car_id") == value


@pytest.mark.parametrize("key", ["alert_id", "car_id"])
def test_an_alert_whose_id_cannot_be_stored_or_sent_is_malformed(key):
    with pytest.raises(InputError, match=f"{key} '..' is a URL dot segment"):
        validate_alert(one_alert() | {key: ".."})


# --- cooldown -----------------------------------------------------------------------------------------

NOW = datetime(2017, 3, 20, 3, 0, tzinfo=UTC)


def delivered(days_ago: float, severity: str = "high", alert_id: str = "earlier") -> dict:
    moment = NOW - timedelta(days=days_ago)
    return {"alert_id": alert_id, "severity": severity, "delivered_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ")}


@pytest.mark.parametrize(
    ("severity", "previous", "decision"),
    [
        ("high", None, (True, FIRST)),
        ("high", delivered(2), (False, COOLDOWN)),
        ("high", delivered(6.99), (False, COOLDOWN)),
        ("high", delivered(7), (True, COOLDOWN_ELAPSED)),
        ("critical", delivered(2, "high"), (True, ESCALATED)),
        ("critical", delivered(2, "critical"), (False, COOLDOWN)),
        ("high", delivered(2, "critical"), (False, COOLDOWN)),
        ("critical", delivered(30, "critical"), (True, COOLDOWN_ELAPSED)),
    ],
)
def test_cooldown_holds_repeats_back_unless_severity_rose(severity, previous, decision):
    alert = one_alert() | {"severity": severity}
    assert should_deliver(alert, previous, cooldown_days=7, now=NOW) == decision


def test_the_same_alert_already_delivered_is_a_duplicate_even_after_the_cooldown():
    alert = one_alert() | {"severity": "critical"}
    previous = delivered(30, "high", alert_id=alert["alert_id"])
    assert should_deliver(alert, previous, cooldown_days=7, now=NOW) == (False, DUPLICATE)


def test_zero_cooldown_never_holds_back():
    assert should_deliver(one_alert(), delivered(0), cooldown_days=0, now=NOW) == (True, COOLDOWN_ELAPSED)
