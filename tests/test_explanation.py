"""Explanations: importance, path contributions that add up, and reasons that are right for known cases."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest
from _forecast_fleet import clean, fleet, model

from shared.cli import main
from shared.core.alerts import alerts_from_scores
from shared.core.windows import BatteryWindows, build_windows
from shared.models.explanation import (
    FEATURE_REASONS,
    battery_reasons,
    contributions,
    explain_battery,
    feature_importance,
    leaf_contributions,
)
from shared.models.scoring import batteries_in_service, score_windows

pytestmark = pytest.mark.slow

AS_OF = date(2017, 3, 15)


@pytest.fixture(scope="module")
def windows() -> BatteryWindows:
    return build_windows(batteries_in_service(clean(), AS_OF), as_of=AS_OF, window_days=model().window_days)


def test_global_importance_covers_every_feature_and_the_shares_add_up():
    importance = feature_importance(model())
    assert sorted(importance["feature"]) == sorted(model().metadata["features"])
    assert importance["share"].sum() == pytest.approx(1.0)
    assert importance["gain"].is_monotonic_decreasing
    assert importance["gain"].iloc[0] > 0


def test_contributions_sum_to_the_raw_prediction(windows):
    contribution = contributions(model(), windows)
    raw = model().booster.predict(model().feature_matrix(windows), num_threads=1)
    assert list(contribution.columns) == [*model().metadata["features"], "bias"]
    np.testing.assert_allclose(contribution.sum(axis=1).to_numpy(), raw, rtol=1e-6, atol=1e-9)
    assert contribution.drop(columns="bias").abs().to_numpy().max() > 0  # something is attributed


def test_path_contributions_name_the_features_treeshap_names(windows):
    """The reasons come from path contributions; TreeSHAP is the reference they are checked against."""
    path = contributions(model(), windows).drop(columns="bias").to_numpy()
    shap = model().booster.predict(model().feature_matrix(windows), pred_contrib=True, num_threads=1)[:, :-1]
    correlation = [np.corrcoef(p, s)[0, 1] for p, s in zip(path, shap, strict=True)]
    shap_top_in_path_top_two = (np.argsort(-path, axis=1)[:, :2] == shap.argmax(axis=1)[:, None]).any(axis=1)
    assert np.mean(correlation) > 0.85
    assert shap_top_in_path_top_two.mean() > 0.7


def test_leaf_contributions_are_worked_out_once_per_booster():
    assert leaf_contributions(model().booster) is leaf_contributions(model().booster)


def at_lifetime_share(windows: BatteryWindows, rows: np.ndarray, share: float) -> BatteryWindows:
    picked = windows.take(rows)
    return replace(picked, lifetime_cycles=picked.rated_cycles * share)


def test_a_battery_at_99_percent_of_rated_life_says_so(windows):
    rows = np.flatnonzero(windows.rated_cycles == 200)[:3]
    worn = at_lifetime_share(windows, rows, 0.99)
    _, forecast = score_windows(model(), worn)
    reasons = battery_reasons(model(), worn, forecast)
    assert [r[0] for r in reasons] == ["battery has used 99% of its rated cycles (198 of 200)"] * 3
    half = at_lifetime_share(windows, rows, 0.5)
    assert battery_reasons(model(), half, forecast)[0][0] == "battery has used 50% of its rated cycles (100 of 200)"


def test_the_forecast_reason_compares_with_the_recent_pace(windows):
    one = windows.take(np.arange(1))
    recent = np.nanmean(one.daily_cycles[0, -28:])
    forecast = np.full((1, 30), recent * 1.2)
    [reasons] = battery_reasons(model(), one, forecast)
    assert (
        reasons[1] == f"expected to use {recent * 36:.1f} cycles in the next 30 days (20% above its pace over the "
        "last 28 days)"
    )


def test_a_surge_in_driving_is_named_among_the_reasons(windows):
    """Tripled driving and use in the last week: the forecast goes up, and the reasons say why."""
    rows = np.arange(20)
    calm = windows.take(rows)
    surge = windows.take(rows)
    for values in (surge.daily_cycles, surge.trip_minutes):
        values[:, -7:] *= 3.0
    _, calm_forecast = score_windows(model(), calm)
    scores, surge_forecast = score_windows(model(), surge, explain_from=0.0)
    assert (surge_forecast.sum(axis=1) > calm_forecast.sum(axis=1)).mean() > 0.9
    named = [
        any(text.startswith(("driving time up", "battery use up")) for text in reasons) for reasons in scores["reasons"]
    ]
    assert np.mean(named) > 0.8, scores["reasons"].tolist()
    assert all(sum(text.startswith("battery use up") for text in reasons) <= 1 for reasons in scores["reasons"])
    calm_scores, _ = score_windows(model(), calm, explain_from=0.0)
    stated = [any(text.startswith("battery use up") for text in reasons) for reasons in calm_scores["reasons"]]
    assert np.mean(stated) < 0.2, calm_scores["reasons"].tolist()


def test_feature_reasons_read_right_for_constructed_values():
    features = pd.DataFrame({"minutes_7_ratio": [1.35, 0.8], "level_7_ratio": [1.1, 1.0], "month": [1.0, 7.0],
                             "Region": [2.0, np.nan], "region_season_ratio": [1.86, 0.54]})  # fmt: skip
    metadata = {"car_categories": {"Region": ["Atlantic", "Continental", "Nordic"]}}
    assert FEATURE_REASONS["minutes_7_ratio"](features, metadata).tolist() == [
        "driving time up 35% over the last 7 days",
        "driving time down 20% over the last 7 days",
    ]
    assert FEATURE_REASONS["region_season_ratio"](features, metadata).tolist() == [
        "the region's seasonal wear per minute up 86% over the next 30 days",
        "the region's seasonal wear per minute down 46% over the next 30 days",
    ]
    assert FEATURE_REASONS["Region"](features, metadata).tolist() == [
        "Nordic region climate (winter usage)",
        "unknown region climate (summer usage)",
    ]
    assert FEATURE_REASONS["month"](features, metadata).tolist() == [
        "seasonal usage for January",
        "seasonal usage for July",
    ]


def test_reasons_reach_the_alert_of_the_batch_path(windows):
    worn = at_lifetime_share(windows, np.flatnonzero(windows.rated_cycles == 200)[:5], 0.99)
    scores, _ = score_windows(model(), worn, explain_from=0.5)
    alerts = alerts_from_scores(scores, 0.5, datetime(2017, 3, 16, 3, tzinfo=UTC), "https://service.example.com/b",
                                model_version=model().version)  # fmt: skip
    assert alerts, scores["failure_probability_30d"].tolist()
    for alert in alerts:
        assert alert["reasons"][0] == "battery has used 99% of its rated cycles (198 of 200)"
        assert alert["reasons"] == scores.set_index("Battery_ID").loc[alert["battery_id"], "reasons"]


def test_only_batteries_that_may_alert_are_explained(windows):
    some = windows.take(np.arange(200))
    plain, _ = score_windows(model(), some)
    assert all(reasons == [] for reasons in plain["reasons"])
    scores, _ = score_windows(model(), some, explain_from=0.3)
    explained = scores["failure_probability_30d"] >= 0.3
    assert 0 < explained.sum() < len(scores)
    assert all(len(r) >= 2 for r in scores.loc[explained, "reasons"])
    assert all(r == [] for r in scores.loc[~explained, "reasons"])


def test_explain_battery_table_adds_up_to_the_prediction(windows):
    one = windows.take(np.arange(1))
    _, forecast = score_windows(model(), one)
    table = explain_battery(model(), one, forecast)
    raw = model().booster.predict(model().feature_matrix(one), num_threads=1)[0]
    assert table["contribution"].sum() == pytest.approx(raw, rel=1e-6)
    assert table["feature"].iloc[-1] == "bias (fleet average)"


def test_explain_command_prints_importance_and_one_battery(tmp_path, capsys):
    model().save(tmp_path / "model")
    assert main(["explain", "--model-dir", str(tmp_path / "model")]) == 0
    printed = capsys.readouterr().out
    assert "global feature importance" in printed and "level" in printed

    telemetry = fleet().telemetry
    on_day = clean()[clean()["Date"] == pd.Timestamp("2016-06-30")]["Battery_ID"].astype(str)
    battery = on_day[~on_day.str.contains("#")].iloc[0]
    rows = telemetry[telemetry["Battery_ID"].astype(str) == battery]
    rows.to_csv(tmp_path / "telemetry.csv", index=False, date_format="%Y-%m-%d")
    code = main(["explain", "--model-dir", str(tmp_path / "model"), "--battery", battery,
                 "--data", str(tmp_path / "telemetry.csv"), "--as-of", "2016-06-30"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert f"battery {battery}" in printed and "as of 2016-06-30" in printed
    assert "% of its rated cycles" in printed and "bias (fleet average)" in printed


def test_explain_command_needs_data_for_a_battery(tmp_path, capsys):
    model().save(tmp_path / "model")
    assert main(["explain", "--model-dir", str(tmp_path / "model"), "--battery", "17"]) == 2
    assert "--battery needs --data" in capsys.readouterr().err
