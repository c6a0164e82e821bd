"""Batch scoring: which batteries are in service, what data is used, and what comes out."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from _forecast_fleet import clean, fleet, model

from shared.core.windows import build_windows
from shared.models.scoring import batteries_in_service, score_fleet, score_windows

pytestmark = pytest.mark.slow

AS_OF = date(2017, 3, 15)


@pytest.fixture(scope="module")
def scored() -> tuple[pd.DataFrame, pd.DataFrame]:
    return score_fleet(model(), clean(), AS_OF, threshold=0.8)


def test_scores_and_forecast_have_the_contract_columns(scored):
    scores, forecast = scored
    assert list(scores.columns) == [
        "Battery_ID",
        "Car_ID",
        "failure_probability_30d",
        "days_to_rated_life",
        "Lifetime_Cycles_Used",
        "Battery_Rated_Cycles",
        "alert",
        "reasons",
        "days_to_rated_life_p10",  # added (issue 17), after every contract column
        "days_to_rated_life_p50",
        "days_to_rated_life_p90",
    ]
    interval = scores[["days_to_rated_life_p10", "days_to_rated_life_p50", "days_to_rated_life_p90"]].to_numpy()
    assert (interval >= 0).all() and (np.diff(interval, axis=1) >= 0).all()
    assert scores["Battery_ID"].is_unique and scores["Car_ID"].is_unique  # one battery in service per car
    assert scores["failure_probability_30d"].between(0, 1).all()
    assert (scores["alert"] == (scores["failure_probability_30d"] >= 0.8)).all()
    assert scores["alert"].any() and not scores["alert"].all()

    assert list(forecast.columns) == ["Battery_ID", "Date", "Daily_Cycles_Used"]
    assert len(forecast) == 30 * len(scores)
    first, last = forecast["Date"].min(), forecast["Date"].max()
    assert (first, last) == (pd.Timestamp(AS_OF + timedelta(days=1)), pd.Timestamp(AS_OF + timedelta(days=30)))
    assert (forecast.groupby("Battery_ID")["Date"].nunique() == 30).all()


def test_in_service_batteries_are_the_ones_fitted_in_the_cars_on_that_day(scored):
    scores, _ = scored
    batteries = fleet().batteries
    day = pd.Timestamp(AS_OF)
    fitted = batteries[(batteries["Installed"] <= day) & ~(batteries["Replaced"] <= day)]
    assert len(scores) == len(fitted)
    assert set(scores["Car_ID"]) == set(fitted["Car_ID"])
    # A battery replaced under the same id is split by preparation ("<id>#2"); the others keep their id.
    reported_as_itself = fitted[fitted["Reported_ID"] == fitted["Battery_ID"]]
    assert set(reported_as_itself["Battery_ID"]) <= set(scores["Battery_ID"])


def test_only_data_up_to_as_of_is_used(scored):
    frame = clean()
    later = frame["Date"] > pd.Timestamp(AS_OF)
    changed = frame.copy()
    changed.loc[later, "Daily_Cycles_Used"] *= 3.0
    changed.loc[later, "Lifetime_Cycles_Used"] += 500.0
    changed = changed.drop(changed.index[later].to_numpy()[::2])

    scores, forecast = score_fleet(model(), changed, AS_OF, threshold=0.8)
    pd.testing.assert_frame_equal(scores, scored[0])
    pd.testing.assert_frame_equal(forecast, scored[1])


def test_a_battery_silent_for_two_weeks_is_out_of_service_and_one_silent_for_ten_days_is_not():
    frame = clean()
    upto = frame[frame["Date"] <= pd.Timestamp(AS_OF)]
    in_service = batteries_in_service(upto, AS_OF)["Battery_ID"].unique()
    silent_long, silent_short = in_service[:2]

    def without_last(frame: pd.DataFrame, battery: str, days: int) -> pd.DataFrame:
        gone = (frame["Battery_ID"] == battery) & (frame["Date"] > pd.Timestamp(AS_OF - timedelta(days=days)))
        return frame[~gone]

    changed = without_last(without_last(upto, silent_long, 14), silent_short, 10)
    remaining = set(batteries_in_service(changed, AS_OF)["Battery_ID"])
    assert silent_long not in remaining
    assert silent_short in remaining
    assert remaining == set(in_service) - {silent_long}


def test_a_replaced_battery_is_out_of_service_even_if_it_reports_late():
    frame = clean()
    batteries = fleet().batteries
    day = pd.Timestamp(AS_OF)
    replaced = batteries[(batteries["Replaced"] <= day) & (batteries["Replaced"] > day - pd.Timedelta(days=60))]
    old = replaced.iloc[0]
    backlog = frame[frame["Battery_ID"] == old["Battery_ID"]].tail(1).assign(Date=day - pd.Timedelta(days=2))
    with_backlog = pd.concat([frame, backlog], ignore_index=True)

    selected = set(batteries_in_service(with_backlog, AS_OF)["Battery_ID"])
    assert old["Battery_ID"] not in selected
    newer = batteries[(batteries["Car_ID"] == old["Car_ID"]) & (batteries["Installed"] == old["Replaced"])]
    assert set(newer["Battery_ID"]) <= selected


def test_a_battery_past_rated_life_is_certain_and_alerted(scored):
    scores, _ = scored
    past = scores[scores["Lifetime_Cycles_Used"] >= scores["Battery_Rated_Cycles"]]
    assert len(past) > 0
    assert (past["failure_probability_30d"] == 1.0).all() and past["alert"].all()
    assert (past["days_to_rated_life"] == 0.0).all()


def test_probability_rises_as_the_battery_nears_its_rated_cycles():
    windows = build_windows(clean(), as_of=AS_OF, window_days=model().window_days).take(np.arange(1))
    rated = windows.rated_cycles[0]
    many = replace(windows.take(np.zeros(60, dtype=np.int64)), lifetime_cycles=np.linspace(rated - 15, rated - 0.1, 60))

    scores, _ = score_windows(model(), many)
    probability = scores["failure_probability_30d"].to_numpy()
    assert np.all(np.diff(probability) >= 0)
    assert probability[0] < 0.05 and probability[-1] > 0.95
    assert np.all(np.diff(scores["days_to_rated_life"].to_numpy()) < 0)


def test_a_battery_scores_the_same_alone_as_in_the_whole_fleet():
    windows = build_windows(clean(), as_of=AS_OF, window_days=model().window_days)
    together, forecast = score_windows(model(), windows)
    for row in (0, len(windows) // 2, len(windows) - 1):
        alone, alone_forecast = score_windows(model(), windows.take(np.array([row])))
        pd.testing.assert_frame_equal(alone, together.iloc[[row]].reset_index(drop=True))
        np.testing.assert_allclose(alone_forecast[0], forecast[row], rtol=1e-12)
