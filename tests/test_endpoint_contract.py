"""The endpoint's request → response (shared.endpoint.server.score_request), in process, with a real trained model.

The same function runs inside azmlinfsrv (tests/test_score_script.py checks it over HTTP); here the
per-item errors and the shape checks are exercised in detail without a server.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
from _models import END, batch_rows, comparable_batteries, endpoint_items, fleet, request_items, trained_model

import shared.endpoint.server as endpoint
from shared.core.preparation import prepare_telemetry
from shared.core.risk import INTERVAL_COLUMNS
from shared.endpoint.server import RequestError, RequestTooLarge, find_model_dir, score_request
from shared.models._lightgbm import METADATA_FILE
from shared.models.scoring import score_fleet

AS_OF = END


@pytest.fixture(scope="module")
def model():
    return trained_model()


@pytest.fixture(scope="module")
def items() -> list[dict]:
    """10 batteries' histories up to AS_OF, as the Function App sends them."""
    return endpoint_items(10)


def test_every_item_gets_a_30_day_forecast_and_a_probability_in_order(model, items) -> None:
    response = score_request(model, items)

    assert response["model_version"] == model.version
    predictions = response["predictions"]
    assert [p["Battery_ID"] for p in predictions] == [item["Battery_ID"] for item in items]
    assert [p["Car_ID"] for p in predictions] == [item["Car_ID"] for item in items]
    for prediction in predictions:
        assert prediction["error"] is None
        assert 0.0 <= prediction["failure_probability_30d"] <= 1.0
        assert prediction["days_to_rated_life"] >= 0.0
        interval = [prediction[column] for column in INTERVAL_COLUMNS]  # added (issue 17): p10 <= p50 <= p90
        assert all(isinstance(x, float) for x in interval) and 0.0 <= interval[0] <= interval[1] <= interval[2]
        assert len(prediction["forecast_daily_cycles"]) == 30
        assert all(isinstance(x, float) and math.isfinite(x) for x in prediction["forecast_daily_cycles"])


def test_probabilities_equal_the_batch_paths_for_the_same_data_and_model(model) -> None:
    rows = comparable_batteries(fleet().telemetry, AS_OF)
    clean, _ = prepare_telemetry(fleet().telemetry[fleet().telemetry["Date"] <= AS_OF])
    batch, _ = score_fleet(model, clean, AS_OF, threshold=0.8)
    online = score_request(model, request_items(rows))["predictions"]

    assert len(online) >= 10 and all(p["error"] is None for p in online)
    expected = batch_rows(batch, [p["Battery_ID"] for p in online])
    np.testing.assert_allclose([p["failure_probability_30d"] for p in online], expected["failure_probability_30d"],
                               rtol=0, atol=1e-12)  # fmt: skip
    np.testing.assert_allclose([p["days_to_rated_life"] for p in online], expected["days_to_rated_life"],
                               rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose([[p[c] for c in INTERVAL_COLUMNS] for p in online], expected[INTERVAL_COLUMNS],
                               rtol=1e-12)  # fmt: skip


def broken(items: list[dict], how) -> dict:
    item = copy.deepcopy(items[0])
    how(item)
    return item


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda item: item.pop("Car_ID"), "Car_ID is missing"),
        (lambda item: item.update(Battery_ID=True), "Battery_ID must be a string or an integer, got True"),
        (lambda item: item.update(Battery_ID=" "), "Battery_ID is empty"),
        (lambda item: item.update(Battery_Rated_Cycles="200"), "Battery_Rated_Cycles must be a number, got '200'"),
        (lambda item: item.update(history=[]), "history must be a non-empty array of daily records, got an array"),
        (lambda item: item.update(history={"Date": "2016-06-30"}), "history must be a non-empty array"),
        (lambda item: item["history"].__setitem__(2, "2016-06-30"), "history[2] must be a JSON object, got a string"),
        (lambda item: item["history"][3].pop("Daily_Cycles_Used"), "history[3]: Daily_Cycles_Used is missing"),
        (lambda item: item["history"][1].update(Date=None), "history[1]: Date is missing"),
        (lambda item: item["history"][4].update(Number_Of_Trips="5"), "history[4]: Number_Of_Trips must be a number"),
        (lambda item: item["history"][4].update(Number_Of_Trips=False), "history[4]: Number_Of_Trips must be a number"),
        (lambda item: item["history"][5].update(Date="2016-02-30"), "history[5]: Date: not a date"),
        (lambda item: item["history"][6].update(Daily_Cycles_Used=50.0), "history[6]: Daily_Cycles_Used=50 outside"),
        (lambda item: item["history"][7].update(Number_Of_Trips=2.5), "history[7]: Number_Of_Trips: 2.5 is not"),
        (lambda item: item["history"][8].update(Lifetime_Cycles_Used=10**400), "history[8]: Lifetime_Cycles_Used"),
        (lambda item: [row.update(Daily_Trip_Duration=None) for row in item["history"]],
         "no Daily_Trip_Duration value in the whole history"),
    ],
)  # fmt: skip
def test_a_malformed_item_gets_its_own_error_and_the_others_are_still_scored(model, items, change, error) -> None:
    alone = score_request(model, items[1:3])["predictions"]
    predictions = score_request(model, [broken(items, change), *items[1:3]])["predictions"]

    bad, *good = predictions
    assert error in bad["error"]
    assert bad["failure_probability_30d"] is None and bad["forecast_daily_cycles"] is None
    assert bad["days_to_rated_life"] is None
    assert all(bad[column] is None for column in INTERVAL_COLUMNS)
    assert good == alone  # the bad item changes nothing for the others


def test_items_that_are_not_objects_are_reported_too(model, items) -> None:
    predictions = score_request(model, ["17", None, items[0]])["predictions"]
    assert [p["error"] for p in predictions[:2]] == ["item must be a JSON object, got a string",
                                                     "item must be a JSON object, got null"]  # fmt: skip
    assert predictions[0]["Battery_ID"] is None
    assert predictions[2]["error"] is None


def test_a_battery_sent_twice_is_refused_both_times(model, items) -> None:
    predictions = score_request(model, [items[0], items[1], items[0]])["predictions"]
    assert [p["error"] is None for p in predictions] == [False, True, False]
    assert "is sent 2 times in this request (items [0, 2])" in predictions[0]["error"]


def test_a_null_measure_is_a_gap_preparation_fills(model, items) -> None:
    item = broken(items, lambda item: item["history"][-3].update(Daily_Cycles_Used=None, Daily_Trip_Duration=None))
    (prediction,) = score_request(model, [item])["predictions"]
    assert prediction["error"] is None and 0.0 <= prediction["failure_probability_30d"] <= 1.0


def test_integer_battery_ids_are_scored_as_strings(model, items) -> None:
    item = broken(items, lambda item: item.update(Battery_ID=123456))
    (prediction,) = score_request(model, [item])["predictions"]
    assert (prediction["Battery_ID"], prediction["error"]) == ("123456", None)


def test_a_battery_replaced_under_the_same_id_is_scored_as_the_new_one(model, items) -> None:
    """The history restarts (age and lifetime counter back near zero): only the new battery counts."""
    old = copy.deepcopy(items[0])
    new_life = [dict(row, Battery_Age_Days=day, Lifetime_Cycles_Used=round(0.2 * (day + 1), 3), Daily_Cycles_Used=0.2)
                for day, row in enumerate(old["history"][-40:])]  # fmt: skip
    replaced = dict(old, history=old["history"][:-40] + new_life)
    (prediction,) = score_request(model, [replaced])["predictions"]
    assert prediction["error"] is None
    assert prediction["failure_probability_30d"] < 0.01  # 8 cycles used of the new battery's rated life
    assert prediction["days_to_rated_life"] > 100


def test_a_body_that_is_not_the_contract_shape_is_a_request_error(model) -> None:
    for data in ({"Battery_ID": "17"}, "batteries", 17, None):
        with pytest.raises(RequestError, match="'data' must be a JSON array of battery items") as caught:
            score_request(model, data)
        assert caught.value.status == 400


def test_no_items_no_predictions(model) -> None:
    assert score_request(model, [])["predictions"] == []


def test_oversize_requests_are_refused_before_any_work(model, items, monkeypatch) -> None:
    with pytest.raises(RequestTooLarge, match="1,001 batteries in one request; the limit is 1,000") as caught:
        score_request(model, [{}] * 1001)
    assert caught.value.status == 413
    monkeypatch.setattr(endpoint, "MAX_HISTORY_ROWS_PER_REQUEST", 100)
    rows = sum(len(item["history"]) for item in items[:2])
    with pytest.raises(RequestTooLarge, match=f"{rows:,} history rows in one request; the limit is 100"):
        score_request(model, items[:2])


def test_find_model_dir_looks_one_level_down_as_azure_ml_mounts_it(tmp_path: Path) -> None:
    nested = tmp_path / "battery-model"
    nested.mkdir()
    (nested / METADATA_FILE).write_text("{}")
    assert find_model_dir(tmp_path) == nested
    assert find_model_dir(nested) == nested
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty: expected one model directory"):
        find_model_dir(empty)
