"""Fault injection on the telemetry path (score_telemetry, rescore_parked_telemetry): nothing is lost.

The real function_app through the local host emulator, on Azurite, with the real scoring endpoint (behind
a refusing proxy where a fault needs one) and the head-unit simulator. Each test injects one fault and
records what it lost and how many alerts the gateway got twice (`fault_outcome`, path "telemetry in");
both must be 0. The property-based half at the end draws the hostile events instead of naming them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler

import pandas as pd
import pytest
import requests
from _hostile import encode, hostile_bodies
from _services import (
    AT_RISK,
    DAYS,
    LAST_DAY,
    TELEMETRY,
    backlog_event,
    backlogs,
    batteries,
    battery_days,
    day_events,
    expected_id,
    record,
    scoring_uri_serving,
    stub_endpoint,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shared.adapters.archive import DEADLETTER_CONTAINER, list_dead_letters, load_telemetry_history
from shared.adapters.battery_state import read_windows
from shared.adapters.storage import download_json, list_blob_names
from shared.config.names import BATTERY_STATE_TABLE as STATE_TABLE
from shared.core.alerts import BATTERY_END_OF_LIFE, alert_id
from shared.handlers.telemetry import MAX_PARKED_REFUSALS, PARKED_CONTAINER, PARKED_DEADLETTER_PREFIX

pytestmark = pytest.mark.faults

PATH = "telemetry in"
NEWEST = record(TELEMETRY[TELEMETRY["Battery_ID"] == "B-PAST"].iloc[-1])  # B-PAST's last day, as its car sends it
HOSTILE = {  # fault: (the hostile body, words its dead letter's reason must hold)
    "deeply nested brackets under the size limit": (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    "Date 9999-12-31": (encode(NEWEST | {"Date": "9999-12-31"}), "Date: future date 9999-12-31"),
    "Date 0001-01-01": (encode(NEWEST | {"Date": "0001-01-01"}), "Date: too old 0001-01-01"),
    "Date 3000-01-01": (encode(NEWEST | {"Date": "3000-01-01"}), "Date: future date 3000-01-01"),
    "lone surrogate in Car_ID": (encode(NEWEST | {"Car_ID": "CAR-PAST\ud800"}), "Car_ID: contains a lone surrogate"),
    "3,000-character Battery_ID": (encode(NEWEST | {"Battery_ID": "B" * 3000}), "Battery_ID: longer than 256"),
    "Car_ID ..": (encode(NEWEST | {"Car_ID": ".."}), "Car_ID: '..' is not allowed as an id"),
    "record a year in the future": (encode(NEWEST | {"Date": "2017-03-10"}), "Date: future date 2017-03-10"),
    "duplicate JSON key": (b'{"Car_ID": "CAR-SAFE", ' + encode(NEWEST)[1:], "duplicate key 'Car_ID'"),
}


def good_events() -> list[bytes]:
    """The test fleet's 30 days as its cars send them: a backlog per battery, then the newest day each."""
    return backlogs(batteries(TELEMETRY, 1, DAYS - 1)) + day_events(batteries(TELEMETRY, DAYS, DAYS))


def delivered_twice(harness, cars) -> int:
    """Second deliveries of an alert_id the head-unit simulator received, over `cars`."""
    received = [alert["alert_id"] for car in cars for alert in harness.simulator.received(car)]
    return len(received) - len(set(received))


@pytest.mark.parametrize("fault", list(HOSTILE))
def test_one_hostile_event_in_a_batch_of_good_ones_loses_nothing(harness, fault_outcome, fault):
    hostile, reason = HOSTILE[fault]
    good = good_events()
    bodies = [*good[:2], hostile, *good[2:]]

    [batch] = harness.host.deliver_events("score_telemetry", bodies).batches
    drain = harness.host.drain_queue("push_alert")

    archived = load_telemetry_history(harness.services.blobs)
    letters = list_dead_letters(harness.services.blobs)
    lost = len(TELEMETRY) - len(archived) + (1 - len([letter for letter in letters if letter.event_index == 2]))
    duplicates = delivered_twice(harness, AT_RISK)
    fault_outcome(PATH, f"hostile event in a batch of good ones: {fault}", lost=lost, duplicates=duplicates, bound="0")
    assert (batch.succeeded, batch.attempts, batch.enqueued) == (True, 1, {"maintenance-alerts": 2})
    key = ["Battery_ID", "Date"]
    pd.testing.assert_frame_equal(archived.sort_values(key, ignore_index=True),
                                  TELEMETRY.sort_values(key, ignore_index=True), check_dtype=False)  # fmt: skip
    windows = read_windows(harness.services.tables.get_table_client(STATE_TABLE), TELEMETRY["Battery_ID"].unique())
    assert windows.groupby("Battery_ID")["Date"].max().dt.strftime("%Y-%m-%d").to_dict() == dict.fromkeys(
        ["B-PAST", "B-SAFE", "B-SOON"], LAST_DAY
    ), "no battery's window was moved by the hostile record"
    assert len(windows) == len(TELEMETRY)
    [letter] = letters
    assert (letter.event_index, letter.record_index) == (2, None)
    assert reason in letter.reason
    assert (drain.succeeded, drain.failed_attempts) == (2, 0)
    assert {car: [a["alert_id"] for a in harness.simulator.received(car)] for car in AT_RISK} == {
        car: [expected_id(car)] for car in AT_RISK
    }
    assert (lost, duplicates) == (0, 0)


# --- parked batches --------------------------------------------------------------------------------------


@contextlib.contextmanager
def refusing_proxy(upstream: str, refused: frozenset[str], status: int, seen: list[list[str]]) -> Iterator[str]:
    """A loopback proxy in front of the real endpoint that answers `status` to any request holding one of
    the `refused` batteries and passes every other request through. Yields its SCORING_URI."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200, b'"Healthy"')

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            batteries_asked = [item["Battery_ID"] for item in json.loads(body)["data"]]
            seen.append(batteries_asked)
            if refused & set(batteries_asked):
                self._answer(status, json.dumps({"error": f"proxy answers {status}"}).encode())
                return
            answer = requests.post(upstream, data=body, headers={"Content-Type": "application/json"}, timeout=60)
            self._answer(answer.status_code, answer.content)

        def _answer(self, code: int, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:
            """Quiet."""

    with scoring_uri_serving(Handler) as uri:
        yield uri


def park_one_batch_per_battery(harness) -> dict[str, str]:
    """With the endpoint down, deliver each battery's history as its own batch (B-SOON's first, so its
    request is the oldest); each is parked on its last retry. The parked blob names, by battery."""
    with stub_endpoint(status=503) as down:
        harness.configure(SCORING_URI=down)
        for battery in ("B-SOON", "B-PAST", "B-SAFE"):
            [batch] = harness.host.deliver_events(
                "score_telemetry", [backlog_event(TELEMETRY[TELEMETRY["Battery_ID"] == battery])]
            ).batches
            assert batch.succeeded and batch.attempts == 5
    parked = parked_requests(harness)
    return {request["items"][0]["Battery_ID"]: name for name, request in parked.items()}


def parked_requests(harness) -> dict[str, dict]:
    container = harness.services.blobs.get_container_client(PARKED_CONTAINER)
    return {name: download_json(container, name) for name in list_blob_names(container, "telemetry/")}


def dead_lettered_requests(harness) -> dict[str, dict]:
    container = harness.services.blobs.get_container_client(DEADLETTER_CONTAINER)
    return {name: download_json(container, name) for name in list_blob_names(container, PARKED_DEADLETTER_PREFIX)}


def test_an_endpoint_refusing_one_parked_batch_forever_blocks_none_and_it_is_dead_lettered_after_the_cap(
    harness, scoring_endpoint, fault_outcome
):
    names = park_one_batch_per_battery(harness)
    seen: list[list[str]] = []
    with refusing_proxy(scoring_endpoint.scoring_uri, frozenset({"B-SOON"}), 400, seen) as proxy:
        harness.configure(SCORING_URI=proxy)
        runs = [harness.host.fire_timer("rescore_parked_telemetry") for _ in range(MAX_PARKED_REFUSALS)]
    drain = harness.host.drain_queue("push_alert")

    dead = dead_lettered_requests(harness)
    rescored_or_kept = 2 + len(parked_requests(harness)) + len(dead)
    duplicates = delivered_twice(harness, AT_RISK)
    fault_outcome(PATH, "endpoint refuses (400) one parked batch forever", lost=3 - rescored_or_kept,
                  duplicates=duplicates, bound="0")  # fmt: skip
    # The first run re-scored the two batches behind the refused one; each run asked about B-SOON once.
    assert [run.enqueued for run in runs] == [{"maintenance-alerts": 1}] + [{"maintenance-alerts": 0}] * 2
    assert sorted(map(sorted, seen)) == [["B-PAST"], ["B-SAFE"]] + [["B-SOON"]] * MAX_PARKED_REFUSALS
    assert parked_requests(harness) == {}
    [(name, request)] = dead.items()
    assert name.startswith(f"{PARKED_DEADLETTER_PREFIX}date={harness.clock().date()}/")
    assert request["parked_as"] == names["B-SOON"]
    assert (request["attempts"], request["refusals"]) == (1 + MAX_PARKED_REFUSALS, MAX_PARKED_REFUSALS)
    assert request["reason"].startswith("refused 3 times, the last: ScoringRejected") and "400" in request["reason"]
    assert [item["Battery_ID"] for item in request["items"]] == ["B-SOON"] and len(request["items"][0]["history"])
    assert drain.succeeded == 1
    assert [a["alert_id"] for a in harness.simulator.received("CAR-PAST")] == [expected_id("CAR-PAST")]
    assert (rescored_or_kept, duplicates) == (3, 0)


def test_an_endpoint_failing_on_one_parked_batch_only_holds_up_none_of_the_others(
    harness, scoring_endpoint, fault_outcome
):
    park_one_batch_per_battery(harness)
    seen: list[list[str]] = []
    with refusing_proxy(scoring_endpoint.scoring_uri, frozenset({"B-SOON"}), 503, seen) as proxy:
        harness.configure(SCORING_URI=proxy)
        first, second = (harness.host.fire_timer("rescore_parked_telemetry") for _ in range(2))
    drain = harness.host.drain_queue("push_alert")

    parked = parked_requests(harness)
    fault_outcome(PATH, "endpoint answers 503 to one parked batch only", lost=3 - 2 - len(parked),
                  duplicates=delivered_twice(harness, AT_RISK), bound="0")  # fmt: skip
    # Run 1 tried the oldest request (B-SOON's) and stopped at the endpoint's 503; run 2 tried the others
    # first (fewer attempts) and scored them, then B-SOON's again, which now counts as a refusal.
    assert (first.enqueued, second.enqueued) == ({"maintenance-alerts": 0}, {"maintenance-alerts": 1})
    [request] = parked.values()
    assert [item["Battery_ID"] for item in request["items"]] == ["B-SOON"]
    assert (request["attempts"], request["refusals"]) == (3, 1) and "ScoringUnavailable" in request["reason"]
    assert drain.succeeded == 1 and delivered_twice(harness, AT_RISK) == 0


def test_an_endpoint_that_stays_down_keeps_every_parked_batch_and_tries_them_in_turn(harness):
    names = park_one_batch_per_battery(harness)
    seen: list[list[str]] = []
    with stub_endpoint(status=503, requests=seen) as down:
        harness.configure(SCORING_URI=down)
        runs = [harness.host.fire_timer("rescore_parked_telemetry") for _ in range(2 * MAX_PARKED_REFUSALS)]

    assert all(run.succeeded and run.enqueued == {"maintenance-alerts": 0} for run in runs)
    parked = parked_requests(harness)
    assert sorted(parked) == sorted(names.values()) and dead_lettered_requests(harness) == {}
    assert all((request["attempts"], request["refusals"]) == (3, 0) for request in parked.values()), (
        "unavailability is not a refusal: an outage never dead-letters"
    )
    # Each run waited out the client's retries once, on the request tried least often.
    per_run = harness.services.scoring.retry.max_attempts
    asked = [seen[run * per_run][0] for run in range(len(runs))]
    assert len(seen) == len(runs) * per_run
    assert asked == ["B-SOON", "B-PAST", "B-SAFE"] * 2


# --- property: any mix of good and hostile events ----------------------------------------------------------


@settings(max_examples=8, deadline=None, database=None, phases=[Phase.generate],  # shrinking a 1 s example: minutes
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_any_batch_mixing_hostile_and_good_events_archives_scores_and_alerts_every_good_one(harness, data):
    """Every example runs on the same harness, with cars of its own."""
    run = data.draw(st.uuids()).hex[:8]
    cars = [f"CAR-{run}-{n}" for n in range(data.draw(st.integers(1, 3)))]
    frames = {car: battery_days(f"B-{car}", car, LAST_DAY, DAYS, lifetime_at_end=201.0) for car in cars}
    good = [backlog_event(frame) for frame in frames.values()]
    template = record(frames[cars[0]].iloc[-1])
    hostile = data.draw(st.lists(hostile_bodies(template, date.fromisoformat(LAST_DAY) + timedelta(days=1)),
                                 min_size=1, max_size=4))  # fmt: skip
    bodies = data.draw(st.permutations(good + hostile))

    deadletter = harness.services.blobs.get_container_client(DEADLETTER_CONTAINER)
    earlier = set(list_blob_names(deadletter, "telemetry/"))

    [batch] = harness.host.deliver_events("score_telemetry", bodies).batches
    drain = harness.host.drain_queue("push_alert")

    assert batch.succeeded and batch.attempts == 1
    archived = load_telemetry_history(harness.services.blobs)
    assert archived["Car_ID"].isin(cars).sum() == DAYS * len(cars)
    [written] = set(list_blob_names(deadletter, "telemetry/")) - earlier
    letters = download_json(deadletter, written)["dead_letters"]
    assert sorted({letter["event_index"] for letter in letters}) == sorted(
        n for n, body in enumerate(bodies) if body in hostile
    )
    assert batch.enqueued == {"maintenance-alerts": len(cars)} and drain.succeeded == len(cars)
    for car in cars:
        assert [a["alert_id"] for a in harness.simulator.received(car)] == [
            alert_id(car, f"B-{car}", BATTERY_END_OF_LIFE, LAST_DAY)
        ]
