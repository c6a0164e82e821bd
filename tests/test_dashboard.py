"""The operations dashboard (GET /api/dashboard): its figures against the stores they come from, the car
lookup, and bad input — an impossible id (400 with the reason), a car nobody knows (404 saying so), an
empty deployment (every section "no data yet"). Through the real function_app on Azurite, plus the pure
figures on small frames whose answers a reader can count."""

from __future__ import annotations

import io
import json
import re
from collections import Counter

import pandas as pd
import pytest
from _dashboard_run import BAD_EVENTS, CARS, MONITORED_DAYS, NEXT_DAY, main_job_like_run, write_monitor_history

from shared.adapters.alert_store import list_alerts
from shared.adapters.archive import list_dead_letters
from shared.adapters.storage import download_bytes, list_blob_names
from shared.config.names import ALERTS_TABLE, SCORES_CONTAINER
from shared.core.dashboard import (
    DeliveryHealth,
    alerts_per_day,
    highest_risk,
    risk_distribution,
    segment_alert_rates,
)
from shared.core.dashboard_page import NO_DATA

SECTIONS = ["alerts", "delivery", "risk", "segments", "models", "accuracy", "drift"]


def metrics(page: str) -> dict[str, str]:
    """Every `data-metric` figure on the page (the first of each name), as shown."""
    found: dict[str, str] = {}
    for name, value in re.findall(r'data-metric="([^"]+)"[^>]*>([^<]*)<', page):
        found.setdefault(name, value)
    return found


def section(page: str, anchor: str) -> str:
    return re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)[1]


def get(harness, **params: str):
    return harness.host.call_http("dashboard", params=params)


# --- the figures, pure ----------------------------------------------------------------------------------


def test_alerts_per_day_counts_each_type_and_severity_per_creation_day():
    alerts = pd.DataFrame(
        {
            "Car_ID": ["A", "B", "A", "C"],
            "type": ["battery_end_of_life"] * 3 + ["component_compliance"],
            "severity": ["high", "critical", "high", "high"],
            "created_at": [
                "2016-03-10T03:00:00Z",
                "2016-03-10T23:00:00Z",
                "2016-03-11T03:00:00Z",
                "2016-03-11T03:00:00Z",
            ],
            "state": ["delivered"] * 4,
        }
    )
    table = alerts_per_day(alerts)
    assert list(table.index) == ["2016-03-10", "2016-03-11"]
    assert table.loc["2016-03-10"].to_dict() == {
        ("battery_end_of_life", "critical"): 1,
        ("battery_end_of_life", "high"): 1,
        ("component_compliance", "high"): 0,
    }
    assert table.loc["2016-03-11"].sum() == 2


def test_risk_distribution_bins_in_tenths_and_highest_risk_ranks_by_probability_then_days():
    scores = pd.DataFrame(
        {
            "Battery_ID": ["a", "b", "c", "d"],
            "Car_ID": ["A", "B", "C", "D"],
            "failure_probability_30d": [0.05, 0.95, 1.0, 0.95],
            "days_to_rated_life": [300.0, 9.0, 0.0, 4.0],
        }
    )
    assert risk_distribution(scores)["batteries"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 3]
    assert highest_risk(scores, rows=3)["Battery_ID"].tolist() == ["c", "d", "b"]


def test_segment_rates_share_the_cars_alerted_per_segment_value():
    alerts = pd.DataFrame({"Car_ID": ["CAR-PAST", "CAR-PAST", "CAR-SOON"]})
    rates = segment_alert_rates(alerts, CARS).set_index(["attribute", "value"])
    assert rates.loc[("Make", "Contoso"), ["cars", "alerts", "cars_alerted"]].tolist() == [2, 3, 2]
    assert rates.loc[("Make", "Fabrikam"), "alerted_share"] == 0.0
    assert rates.loc[("Region", "Desert"), "alerted_share"] == 0.5  # CAR-SOON of CAR-SOON and CAR-IDLE


def test_delivery_health_names_every_place_a_loss_is_recorded():
    health = DeliveryHealth(
        {"delivered": 3, "failed": 1, "unknown": 1, "superseded": 2},
        poisoned_messages=4,
        dead_lettered_events=5,
        dead_lettered_alert_messages=8,
        scoring_error_batches=9,
        dead_lettered_parked=6,
        parked_batches=7,
    )
    shown = {key: count for key, _, count in health.rows()}
    assert shown == {
        "delivered": 3,
        "suppressed": 0,
        "rejected": 0,
        "failed_or_unknown": 2,
        "waiting": 0,
        "ended": 2,
        "poisoned": 4,
        "dead_lettered": 5,
        "alert_messages_dead_lettered": 8,
        "scoring_errors": 9,
        "parked_dead_lettered": 6,
        "parked": 7,
    }


# --- the page on Azurite ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_page_shows_the_stores_figures_after_a_main_job_like_run(harness):
    champion = main_job_like_run(harness)

    response = get(harness)

    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_body().decode()
    shown = metrics(page)
    table = harness.services.tables.get_table_client(ALERTS_TABLE)
    alerts = [alert for car in CARS["Car_ID"] for alert in list_alerts(table, car)]
    states = Counter(alert["state"] for alert in alerts)
    assert states["delivered"] == 2 and states["suppressed"] >= 1  # the run did what it says
    assert int(shown["delivered"]) == states["delivered"]
    assert int(shown["suppressed"]) == states["suppressed"]
    assert int(shown["alerts-total"]) == len(alerts)
    assert int(shown["dead_lettered"]) == len(list_dead_letters(harness.services.blobs)) == len(BAD_EVENTS)
    assert int(shown["poisoned"]) == 1
    scores_blob = f"date=2016-03-10/{champion}.parquet"
    container = harness.services.blobs.get_container_client(SCORES_CONTAINER)
    assert list_blob_names(container) == [scores_blob]
    scores = pd.read_parquet(io.BytesIO(download_bytes(container, scores_blob)))
    assert int(shown["batteries-scored"]) == len(scores)
    assert int(shown["batteries-over-threshold"]) == int(scores["alert"].sum())
    top = scores.sort_values("failure_probability_30d", ascending=False).iloc[0]
    assert shown["probability"] == f"{top['failure_probability_30d']:.3f}"  # the first row of "highest risk"
    alerted_cars = {alert["car_id"] for alert in alerts}
    contoso = CARS[CARS["Make"] == "Contoso"]["Car_ID"]
    assert shown["segment:Make:Contoso"] == f"{contoso.isin(alerted_cars).mean():.1%}"
    for anchor in ("models", "accuracy", "drift"):  # the monitor has written nothing
        assert NO_DATA in section(page, anchor)
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


@pytest.mark.slow
def test_a_car_lookup_shows_its_telemetry_score_and_alerts(harness):
    main_job_like_run(harness)

    response = get(harness, car="CAR-PAST")

    assert response.status_code == 200
    shown = metrics(response.get_body().decode())
    table = harness.services.tables.get_table_client(ALERTS_TABLE)
    assert int(shown["car-alerts"]) == len(list_alerts(table, "CAR-PAST")) >= 2
    assert int(shown["car-telemetry-days"]) == 14  # the lookup's days, up to NEXT_DAY
    assert float(shown["car-probability"]) > 0.8
    page = response.get_body().decode()
    assert f"{NEXT_DAY[5:]}" in section(page, "car-telemetry")
    forecast = section(page, "car-score").split("Forecast daily cycles", 1)[1]
    assert forecast.count("<circle") == 30  # the 30 forecast days stored with the night's scores


def test_an_impossible_car_id_is_400_with_the_reason(harness):
    for bad in ("CAR/1", "", "CAR?x", "x" * 600):
        response = get(harness, car=bad)
        assert response.status_code == 400, bad
        assert response.mimetype == "application/json"
        assert json.loads(response.get_body())["error"].startswith("car "), bad  # names the parameter sent


def test_a_car_nobody_knows_is_404_saying_so(harness):
    response = get(harness, car="CAR-99999")

    assert response.status_code == 404 and response.mimetype == "text/html"
    page = response.get_body().decode()
    assert "No car CAR-99999 is known" in metrics(page).get("unknown-car", "")
    assert "no scores yet" in page


def test_an_empty_deployment_renders_no_data_yet_in_every_section_but_delivery(harness):
    response = get(harness)

    assert response.status_code == 200
    page = response.get_body().decode()
    for anchor in SECTIONS:
        assert (NO_DATA in section(page, anchor)) == (anchor != "delivery"), anchor
    assert {key: int(value) for key, value in metrics(page).items()} == dict.fromkeys(
        [
            "delivered",
            "suppressed",
            "rejected",
            "failed_or_unknown",
            "waiting",
            "ended",
            "poisoned",
            "dead_lettered",
            "alert_messages_dead_lettered",
            "scoring_errors",
            "parked_dead_lettered",
            "parked",
        ],
        0,
    )


def test_the_lookup_form_keeps_the_function_key(harness):
    page = get(harness, code="the-function-key").get_body().decode()

    form = re.search(r'<form id="car-lookup".*?</form>', page, re.S)[0]
    assert '<input type="hidden" name="code" value="the-function-key">' in form


def test_the_monitor_sections_show_what_the_monitor_stored(harness):
    write_monitor_history(harness.services.blobs)

    page = get(harness).get_body().decode()

    shown = metrics(page)
    batteries = sum(day.batteries for day in MONITORED_DAYS)
    champion = sum(day.batteries * day.champion_brier for day in MONITORED_DAYS) / batteries
    shadow = sum(day.batteries * day.shadow_brier for day in MONITORED_DAYS) / batteries
    assert shown["champion:Brier"] == f"{champion:.4g}"  # pooled over the days, weighted by batteries
    assert shown["shadow:Brier"] == f"{shadow:.4g}"
    assert shown["psi:Daily_Trip_Duration"] == "0.310" and shown["psi:Number_Of_Trips"] == "0.020"
    assert "drifted" in section(page, "drift")
    assert "<td>Desert</td>" in section(page, "drift").split("Segments past the threshold", 1)[1]
    assert section(page, "accuracy").count("<polyline") == 4  # Brier and recall, for both models
