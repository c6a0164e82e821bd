"""GET /api/health and GET /api/vehicles/{car_id}/alerts: the real function_app over call_http.

Real Azurite, the real scoring endpoint and head-unit simulator; "down" is a loopback port nothing
listens on.
"""

from __future__ import annotations

import json
import logging

import pytest
from _models import model_dir

from shared.adapters.registry import ModelRegistry
from shared.adapters.storage import ACCOUNT_KEY, AzuriteEndpoints
from shared.devtools.azurite import free_port
from shared.handlers.ops import endpoint_root


def get(harness, function: str, **route_params: str) -> tuple[int, object]:
    response = harness.host.call_http(function, route_params=route_params)
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


def test_health_is_ok_when_storage_and_endpoint_answer_and_names_the_champion(harness):
    status, report = get(harness, "health")
    assert status == 200
    assert report["healthy"] is True
    assert {name: check["ok"] for name, check in report["checks"].items()} == {
        "blob": True, "table": True, "scoring_endpoint": True, "configuration": True,
    }  # fmt: skip
    assert report["champion_model"] is None  # before the first promotion

    ModelRegistry(harness.services.blobs).promote_if_better(model_dir())
    version = json.loads((model_dir() / "metadata.json").read_text())["version"]
    assert get(harness, "health")[1]["champion_model"] == version


def test_health_is_503_naming_the_endpoint_when_it_is_down(harness):
    harness.configure(SCORING_URI=f"http://127.0.0.1:{free_port()}/score")

    status, report = get(harness, "health")

    assert (status, report["healthy"]) == (503, False)
    assert report["checks"]["scoring_endpoint"]["ok"] is False
    assert "ConnectionError" in report["checks"]["scoring_endpoint"]["detail"]
    assert report["checks"]["blob"]["ok"] and report["checks"]["table"]["ok"]


def test_health_is_503_when_storage_is_down_without_leaking_its_key(harness):
    nowhere = AzuriteEndpoints(free_port(), free_port(), free_port()).connection_string
    harness.configure(AzureWebJobsStorage=nowhere)

    response = harness.host.call_http("health")

    report = json.loads(response.get_body())
    assert (response.status_code, report["healthy"], report["champion_model"]) == (503, False, None)
    assert not report["checks"]["blob"]["ok"] and not report["checks"]["table"]["ok"]
    assert report["checks"]["scoring_endpoint"]["ok"]
    assert ACCOUNT_KEY not in response.get_body().decode()


@pytest.mark.parametrize("key", [None, "", "   "])
def test_an_unset_or_blank_signing_key_fails_health_and_the_start_up_check_naming_it(harness, caplog, key):
    with caplog.at_level(logging.ERROR, logger="services"):
        harness.configure(HEAD_UNIT_SIGNING_KEY=key)  # the app's start-up: its services are built

    status, report = get(harness, "health")

    assert (status, report["healthy"]) == (503, False)
    assert report["checks"]["configuration"]["ok"] is False
    assert "HEAD_UNIT_SIGNING_KEY is not set" in report["checks"]["configuration"]["detail"]
    assert report["checks"]["blob"]["ok"] and report["checks"]["scoring_endpoint"]["ok"]  # only that is wrong
    [failed] = [record.getMessage() for record in caplog.records if record.name == "services"]
    assert failed.startswith("start-up check failed: HEAD_UNIT_SIGNING_KEY is not set")


def test_health_takes_either_iot_hub_setting_for_alert_channel_iothub_and_names_both_without_one(harness):
    harness.configure(ALERT_CHANNEL="iothub", IOTHUB_CONNECTION=None, IOTHUB_HOSTNAME=None)
    status, report = get(harness, "health")
    assert status == 503 and "neither IOTHUB_CONNECTION nor IOTHUB_HOSTNAME is set" in (
        report["checks"]["configuration"]["detail"])  # fmt: skip
    harness.configure(IOTHUB_HOSTNAME="trey-hub.azure-devices.net")  # the app identity signs in: no secret
    status, report = get(harness, "health")
    assert (status, report["checks"]["configuration"]["ok"]) == (200, True)


def test_endpoint_root_is_derived_from_the_scoring_uri():
    assert endpoint_root("http://127.0.0.1:5001/score") == "http://127.0.0.1:5001/"
    assert endpoint_root("https://ep.westeurope.inference.ml.azure.com/score?x=1") == (
        "https://ep.westeurope.inference.ml.azure.com/"
    )


def test_vehicle_alerts_lists_what_a_car_was_sent_and_how_it_went(harness, make_alert):
    delivered = make_alert(day="2016-03-09")
    held_back = make_alert(day="2016-03-10")  # same severity the next day: the cooldown holds it
    other_car = make_alert(car_id="CAR-00018")
    for alert in (delivered, held_back, other_car):
        harness.send_alerts([alert])
        harness.host.drain_queue("push_alert")

    status, alerts = get(harness, "list_vehicle_alerts", car_id="CAR-00017")

    assert status == 200
    by_id = {alert["alert_id"]: alert for alert in alerts}
    assert {alert_id: alert["state"] for alert_id, alert in by_id.items()} == {
        delivered["alert_id"]: "delivered", held_back["alert_id"]: "suppressed",
    }  # fmt: skip
    record = by_id[delivered["alert_id"]]
    assert (record["message"], record["delivered_at"]) == (delivered["message"], "2016-03-11T03:00:00Z")
    assert get(harness, "list_vehicle_alerts", car_id="CAR-99999") == (200, [])


@pytest.mark.parametrize(
    ("car_id", "words"),
    [("..", "dot segment"), (".", "dot segment"), ("CAR\x00", "contains"), ("CAR\\17", "contains"),
     ("x" * 600, "over the limit of 512")],
)  # fmt: skip
def test_vehicle_alerts_of_an_impossible_car_id_is_a_400_naming_why(harness, car_id, words):
    status, body = get(harness, "list_vehicle_alerts", car_id=car_id)
    assert status == 400
    assert body["error"].startswith("car_id") and words in body["error"]
