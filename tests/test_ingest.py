"""score_telemetry and rescore_parked_telemetry: the real function_app, driven as the host drives it.

Real Azurite, the real scoring endpoint (azmlinfsrv with the small test model) and the head-unit
simulator; a loopback stub endpoint only where the real one cannot be made to misbehave. The fleet is
tests/_services.py's three made-up batteries: two at risk (B-PAST, B-SOON), one safe (B-SAFE).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pandas as pd
import pytest
import requests
from _services import (
    AT_RISK,
    DAYS,
    TELEMETRY,
    backlog_event,
    backlogs,
    batteries,
    day_events,
    expected_id,
    record,
    stub_endpoint,
    wipe_storage,
)

import function_app
from shared.adapters.archive import DEADLETTER_CONTAINER, list_dead_letters, load_telemetry_history
from shared.adapters.battery_state import read_windows
from shared.adapters.observability import summary_of
from shared.adapters.scoring_client import ScoringClient
from shared.adapters.storage import download_json, list_blob_names
from shared.config.names import BATTERY_STATE_TABLE as STATE_TABLE
from shared.core.alerts import CRITICAL, HIGH
from shared.core.risk import INTERVAL_COLUMNS
from shared.devtools.azurite import free_port
from shared.devtools.functions_host import FunctionsHost
from shared.handlers.telemetry import PARKED_CONTAINER, STATE_WINDOW_DAYS


def streamed_alerts(harness) -> dict[str, dict]:
    """The alerts on the queue, by car."""
    return {alert["car_id"]: alert for alert in harness.queued()}


def stored_windows(harness) -> pd.DataFrame:
    table = harness.services.tables.get_table_client(STATE_TABLE)
    return read_windows(table, TELEMETRY["Battery_ID"].unique())


def test_bad_events_are_dead_lettered_with_reasons_and_the_good_ones_alert(harness):
    good = backlogs(batteries(TELEMETRY, 1, DAYS - 2)) + day_events(batteries(TELEMETRY, DAYS - 1, DAYS))
    sample = record(TELEMETRY.iloc[0])
    bad = {
        b'{"Date": "2016-03-10", "Battery_ID": ': "invalid JSON",
        json.dumps({k: v for k, v in sample.items() if k != "Car_ID"}).encode(): "missing field Car_ID",
        json.dumps(sample | {"Daily_Cycles_Used": "0.15"}).encode(): "Daily_Cycles_Used: expected a JSON number",
        json.dumps(sample | {"Daily_Cycles_Used": -0.2}).encode(): "Daily_Cycles_Used=-0.2 outside",
        json.dumps(sample | {"Lifetime_Cycles_Used": 1e9}).encode(): "Lifetime_Cycles_Used=1e+09 outside",
        b"[" + b" " * 300_000 + b"]": "oversize body",
    }
    bodies = good[:2] + list(bad) + good[2:]  # bad events in the middle of the batch

    delivery = harness.host.deliver_events("score_telemetry", bodies)

    [batch] = delivery.batches
    assert (batch.succeeded, batch.attempts, batch.enqueued) == (True, 1, {"maintenance-alerts": 2})
    letters = list_dead_letters(harness.services.blobs)
    assert [letter.event_index for letter in letters] == [2, 3, 4, 5, 6, 7]
    for letter, (body, reason) in zip(letters, bad.items(), strict=True):
        assert reason in letter.reason
        assert letter.metadata["sequence_number"] == letter.event_index  # traceable to its event
        if len(body) < 1000:
            assert letter.body.encode() == body  # kept as received, to fix and replay
    archived = load_telemetry_history(harness.services.blobs)
    assert len(archived) == len(TELEMETRY)
    windows = stored_windows(harness)
    assert windows.groupby("Battery_ID").size().to_dict() == {"B-PAST": DAYS, "B-SAFE": DAYS, "B-SOON": DAYS}
    alerts = streamed_alerts(harness)
    assert sorted(alerts) == ["CAR-PAST", "CAR-SOON"]
    assert alerts["CAR-PAST"]["alert_id"] == expected_id("CAR-PAST")  # about the battery's newest day
    assert alerts["CAR-PAST"]["severity"] == CRITICAL
    assert alerts["CAR-SOON"]["severity"] == HIGH
    assert alerts["CAR-SOON"]["failure_probability_30d"] >= 0.8
    interval = [alerts["CAR-SOON"][column] for column in INTERVAL_COLUMNS]  # added (issue 17), via the endpoint
    assert 0.0 < interval[0] < interval[1] < interval[2], interval
    assert [alerts["CAR-PAST"][column] for column in INTERVAL_COLUMNS] == [0.0, 0.0, 0.0]
    assert alerts["CAR-SOON"]["model_version"] == json.loads(model_metadata_path().read_text())["version"]


def test_repeated_and_out_of_order_days_count_once_and_alert_once(harness):
    newest = day_events(batteries(TELEMETRY, DAYS - 4, DAYS))
    backlog = backlogs(batteries(TELEMETRY, 1, DAYS - 5))  # a car that was offline sends older days late
    repeats = day_events(batteries(TELEMETRY, DAYS - 3, DAYS - 2)) + day_events(batteries(TELEMETRY, 5, 5))

    runs = [harness.host.deliver_events("score_telemetry", bodies) for bodies in (newest, backlog + repeats)]

    windows = stored_windows(harness).set_index(["Battery_ID", "Date"]).sort_index()
    expected = TELEMETRY.set_index(["Battery_ID", "Date"]).sort_index()
    pd.testing.assert_frame_equal(windows, expected, check_dtype=False)  # each day once, none lost
    # Both batches alert about each battery's newest day, though the second batch's own records end
    # days earlier: the same two alerts twice, delivered once.
    assert [(run.batches[0].succeeded, run.batches[0].enqueued) for run in runs] == [
        (True, {"maintenance-alerts": 2})
    ] * 2
    assert sorted(alert["alert_id"] for alert in harness.queued()) == sorted([expected_id(c) for c in AT_RISK] * 2)
    drain = harness.host.drain_queue("push_alert")
    assert (drain.succeeded, drain.failed_attempts) == (4, 0)
    assert {car: len(harness.simulator.received(car)) for car in AT_RISK} == {"CAR-PAST": 1, "CAR-SOON": 1}


@pytest.mark.parametrize("down", ["closed port", "503"])
def test_endpoint_down_retries_then_parks_and_rescoring_later_alerts(harness, scoring_endpoint, down):
    client_retries = harness.services.scoring.retry.max_attempts - 1
    with stub_endpoint(status=503) as answering_503:
        harness.configure(SCORING_URI=answering_503 if down == "503" else f"http://127.0.0.1:{free_port()}/score")
        [batch] = harness.host.deliver_events("score_telemetry", backlogs(TELEMETRY)).batches
        client_waits = len(harness.scoring_waits)
        still_down = harness.host.fire_timer("rescore_parked_telemetry")

    # Retried under function_app's policy (4 retries, exponential from 5 s), each attempt after the
    # client's own retries; the last attempt parked the request instead of failing, so nothing is lost.
    assert (batch.succeeded, batch.attempts, batch.enqueued) == (True, 5, {"maintenance-alerts": 0})
    assert batch.retry_delays == [timedelta(seconds=s) for s in (5, 10, 20, 40)]
    assert client_waits == 5 * client_retries
    parked = parked_requests(harness)
    [(name, request)] = parked.items()
    assert name.startswith(f"telemetry/date={harness.clock().date()}/")
    assert "ScoringUnavailable" in request["reason"]
    assert sorted(item["Battery_ID"] for item in request["items"]) == ["B-PAST", "B-SAFE", "B-SOON"]
    assert all(len(item["history"]) == DAYS for item in request["items"])
    # Five runs of the same batch archived and merged it once.
    assert len(load_telemetry_history(harness.services.blobs)) == len(TELEMETRY)
    assert len(stored_windows(harness)) == len(TELEMETRY)
    # Re-scoring while the endpoint is still down keeps the request, with one more attempt.
    assert (still_down.succeeded, still_down.enqueued) == (True, {"maintenance-alerts": 0})
    assert parked_requests(harness)[name]["attempts"] == 2

    harness.configure(SCORING_URI=scoring_endpoint.scoring_uri)
    rescored = harness.host.fire_timer("rescore_parked_telemetry")

    assert rescored.enqueued == {"maintenance-alerts": 2}
    assert parked_requests(harness) == {}
    assert sorted(alert["alert_id"] for alert in harness.queued()) == sorted(expected_id(c) for c in AT_RISK)
    assert harness.host.drain_queue("push_alert").succeeded == 2
    assert [alert["alert_id"] for alert in harness.simulator.received("CAR-PAST")] == [expected_id("CAR-PAST")]


def test_an_endpoint_that_refuses_the_request_parks_it_at_once(harness):
    with stub_endpoint(status=400) as refusing:
        harness.configure(SCORING_URI=refusing)
        [batch] = harness.host.deliver_events("score_telemetry", backlogs(TELEMETRY)).batches

    assert (batch.succeeded, batch.attempts) == (True, 1)  # retrying would be refused the same way
    [request] = parked_requests(harness).values()
    assert "ScoringRejected" in request["reason"] and "400" in request["reason"]


def test_a_batch_scored_in_chunks_alerts_exactly_as_unchunked_on_the_real_endpoint(harness, scoring_endpoint):
    """The real model tells the batteries apart (the stub endpoint scores every one alike), so an item
    paired with another chunk's prediction, or a chunk lost, shows as a different alert."""

    def run(chunk_size: int) -> tuple[list[int], dict[str, dict]]:
        wipe_storage(harness.connection)  # a fresh deployment for each run: no state, no alerts
        harness.send_alerts([])  # the alert queue exists, as after deployment
        sizes: list[int] = []  # batteries per request, as sent
        session = requests.Session()
        session.hooks["response"].append(lambda sent, **_: sizes.append(len(json.loads(sent.request.body)["data"])))
        services = harness.configure(SCORING_URI=scoring_endpoint.scoring_uri)
        services.scoring = ScoringClient.from_settings(services.settings, chunk_size=chunk_size, session=session)
        [batch] = harness.host.deliver_events("score_telemetry", backlogs(TELEMETRY)).batches
        assert batch.succeeded, batch.error
        return sizes, streamed_alerts(harness)

    chunked_sizes, chunked = run(chunk_size=1)
    whole_sizes, whole = run(chunk_size=250)

    assert (sorted(chunked_sizes), whole_sizes) == ([1, 1, 1], [3])
    assert sorted(whole) == sorted(AT_RISK)  # B-SAFE, half way to its rated life, is not alerted
    assert chunked == whole  # the same alerts, field for field
    assert {car: alert["battery_id"] for car, alert in whole.items()} == AT_RISK


def test_a_chunk_that_finds_the_endpoint_down_holds_back_the_rest_and_all_are_parked_together(harness):
    client_attempts = harness.services.scoring.retry.max_attempts
    sent: list[list[str]] = []
    with stub_endpoint(status=503, requests=sent) as down:
        harness.configure(SCORING_URI=down).scoring.chunk_size = 1
        [batch] = harness.host.deliver_events("score_telemetry", backlogs(TELEMETRY)).batches

    assert (batch.succeeded, batch.attempts, batch.enqueued) == (True, 5, {"maintenance-alerts": 0})
    assert len(sent) == 5 * client_attempts, "per run, only the first chunk was tried"
    [request] = parked_requests(harness).values()
    assert sorted(item["Battery_ID"] for item in request["items"]) == ["B-PAST", "B-SAFE", "B-SOON"]
    assert len(stored_windows(harness)) == len(TELEMETRY), "every chunk's state was merged all the same"


def test_a_refused_chunk_is_parked_while_the_other_chunks_alert(harness):
    with stub_endpoint(refused_batteries=frozenset({"B-SOON"})) as refusing:
        harness.configure(SCORING_URI=refusing).scoring.chunk_size = 1
        [batch] = harness.host.deliver_events("score_telemetry", backlogs(TELEMETRY)).batches

    assert (batch.succeeded, batch.attempts, batch.enqueued) == (True, 1, {"maintenance-alerts": 2})
    assert sorted(streamed_alerts(harness)) == ["CAR-PAST", "CAR-SAFE"]
    [request] = parked_requests(harness).values()
    assert [item["Battery_ID"] for item in request["items"]] == ["B-SOON"]
    assert "ScoringRejected" in request["reason"] and "400" in request["reason"]


def test_items_the_endpoint_cannot_score_are_recorded_not_alerted(harness):
    with stub_endpoint(failing_batteries=frozenset({"B-SOON"})) as stub:
        harness.configure(SCORING_URI=stub)
        [batch] = harness.host.deliver_events("score_telemetry", backlogs(TELEMETRY)).batches

    assert batch.succeeded
    alerts = streamed_alerts(harness)
    assert sorted(alerts) == ["CAR-PAST", "CAR-SAFE"]  # the stub scores every other battery 0.95
    assert {alert["model_version"] for alert in alerts.values()} == {"stub-1"}
    deadletter = harness.services.blobs.get_container_client(DEADLETTER_CONTAINER)
    [name] = list_blob_names(deadletter, "scoring/")
    record_ = download_json(deadletter, name)
    assert record_["count"] == 1
    [error] = record_["errors"]
    assert error["reason"] == "stub: cannot score this battery"
    assert error["item"]["Battery_ID"] == "B-SOON" and len(error["item"]["history"]) == DAYS


def test_the_state_window_keeps_more_days_than_the_model_reads():
    metadata = json.loads(model_metadata_path().read_text())
    assert metadata["window_days"] <= STATE_WINDOW_DAYS


# --- helpers ------------------------------------------------------------------------------------------


def parked_requests(harness) -> dict[str, dict]:
    container = harness.services.blobs.get_container_client(PARKED_CONTAINER)
    return {name: download_json(container, name) for name in list_blob_names(container, "telemetry/")}


def model_metadata_path():
    from _models import model_dir

    return model_dir() / "metadata.json"


def test_batches_of_different_partitions_never_share_a_batch_id(harness, caplog):
    """Each Event Hub partition numbers its events from 0 and may be read by another host instance, so two
    partitions deliver batches with the same sequence numbers. Each car's backlog on a partition of its own
    (one host per partition, as the scale controller spreads them), all at sequence number 0: every batch
    must be named apart, or one's archive blob would overwrite another's and its records would be lost."""
    partitions = [FunctionsHost(function_app.app, harness.connection, clock=harness.clock) for _ in AT_RISK]
    partitions.append(harness.host)
    by_battery = dict(list(TELEMETRY.groupby("Battery_ID")))
    with caplog.at_level(logging.INFO, logger="function_app"):
        for host, battery in zip(partitions, sorted(by_battery), strict=True):
            [batch] = host.deliver_events("score_telemetry", [backlog_event(by_battery[battery])]).batches
            assert batch.succeeded, batch.error

    ids = [fields["batch_id"] for step, fields in filter(None, map(summary_of, caplog.records))
           if step == "score_telemetry"]  # fmt: skip
    assert len(ids) == 3 and all(batch.startswith("0-0-") for batch in ids)  # the same sequence span each
    assert len(set(ids)) == 3
    archived = load_telemetry_history(harness.services.blobs)
    assert sorted(archived.groupby("Battery_ID").size().items()) == [("B-PAST", DAYS), ("B-SAFE", DAYS),
                                                                     ("B-SOON", DAYS)]  # fmt: skip
