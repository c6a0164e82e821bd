"""The true failure probability of simulated batteries (shared/devtools/true_risk.py), the simulator's options
for fleets that differ from the default, and the backtest's comparison with the truth (issue 17)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _forecast_fleet import TRUTH_DRAWS, fleet, model

from shared.adapters.training_tracking import backtest_metrics
from shared.core.preparation import prepare_telemetry
from shared.core.telemetry import CAR_ID, DATE, InputError
from shared.devtools.fleet_simulator import HOT_REGION, SimulatorOptions, simulate_fleet
from shared.devtools.true_risk import (
    COMPARISON_FLEETS,
    fleet_truth,
    simulate_comparison_fleet,
    true_failure_probability,
)
from shared.models._lightgbm import train_model
from shared.models.backtest import backtest_markdown

pytestmark = pytest.mark.slow
SIGMAS = 3.0


@pytest.fixture(scope="module")
def scored() -> pd.DataFrame:
    evaluation = model().backtest.evaluation
    return evaluation[evaluation["scored"]]


def test_the_true_probability_agrees_with_what_the_simulated_batteries_did(scored):
    """The truth is a replica of the simulator's own future: where it is sure, the battery did as it said,
    and where it is not, the failures it expects are within 3 sd of those that happened."""
    truth, label = scored["true_probability"].to_numpy(), scored["label"].to_numpy()
    sure = (truth == 0.0) | (truth == 1.0)
    assert sure.mean() > 0.9
    assert np.mean((truth[sure] == 1.0) != label[sure]) <= 0.001  # prepared labels may differ by a glitch repair
    unsure = ~sure
    expected, spread = truth[unsure].sum(), np.sqrt(np.sum(truth[unsure] * (1 - truth[unsure])))
    assert unsure.sum() >= 30 and label[unsure].sum() > 10
    assert abs(label[unsure].sum() - expected) <= SIGMAS * spread


def test_the_backtest_reports_each_methods_ratios_to_the_truth_with_a_negligible_monte_carlo_error():
    summary = model().metadata["backtest"]
    truth, metrics = summary["truth"], summary["metrics"]
    assert truth["draws"] == TRUTH_DRAWS and truth["drawn"] > 50
    for method in metrics:
        ratios = truth["ratios"][method]
        assert ratios["brier_to_truth"] == pytest.approx(metrics[method]["brier"] / truth["metrics"]["brier"])
        assert ratios["average_precision_gap"] == pytest.approx(
            truth["metrics"]["average_precision"] - metrics[method]["average_precision"]
        )
    assert (
        truth["metrics"]["brier"]
        < metrics["model"]["brier"]
        < min(metrics[baseline]["brier"] for baseline in ("seasonal_naive", "recent_mean"))
    )
    assert truth["standard_error"]["brier"] < 0.01 * truth["metrics"]["brier"]
    assert truth["standard_error"]["average_precision"] < 0.0002
    text = backtest_markdown(summary)
    assert "Against the true probability" in text and f"{TRUTH_DRAWS:,} draws" in text
    assert f"| Brier score ÷ truth's | {truth['ratios']['model']['brier_to_truth']:.4f} |" in text
    tracked = backtest_metrics(summary)
    assert tracked["brier_to_truth"] == truth["ratios"]["model"]["brier_to_truth"]
    assert tracked["recent_mean_brier_to_truth"] == truth["ratios"]["recent_mean"]["brier_to_truth"]
    assert tracked["truth_brier"] == truth["metrics"]["brier"] and tracked["truth_brier_se"] > 0


def test_the_reliability_where_alerts_are_decided_is_reported_beside_the_truth():
    summary = model().metadata["backtest"]
    near = summary["reliability_near"]
    assert 40 <= sum(row["count"] for row in near) < summary["counts"]["labelled"] / 10
    assert all("mean_true" in row for row in near)
    assert "Reliability where alerts are decided" in backtest_markdown(summary)


def test_a_battery_past_rated_life_is_certain_and_one_far_from_it_is_safe():
    simulated = fleet()
    day = np.datetime64("2016-06-01")
    on_day = simulated.truth[simulated.truth[DATE] == day]
    remaining = (on_day["Battery_Rated_Cycles"] - on_day["Lifetime_Cycles_Used"]).to_numpy()
    cars = on_day[CAR_ID].to_numpy()[[np.argmin(remaining), np.argmax(remaining)]]
    result = true_failure_probability(simulated, cars, np.array([day, day]), draws=80)
    assert remaining.min() <= 0 and result.probability.tolist() == [1.0, 0.0]
    with pytest.raises(InputError, match="multiple of 8"):
        true_failure_probability(simulated, cars, np.array([day, day]), draws=10)
    with pytest.raises(InputError, match="not in the simulated fleet's period"):
        true_failure_probability(simulated, cars, np.array([day, np.datetime64("2030-01-01")]), draws=80)


def test_the_data_only_reference_lies_between_the_truth_and_the_model_and_is_calibrated(scored):
    """The reference that does not know the car's usage scale (drawn from its posterior given the minutes the
    car reported) is worse than the truth, which knows it, and no worse than the model, which also has to
    learn everything else; where it is unsure, the failures it expects are within 3 sd of those that happened."""
    reference = true_failure_probability(fleet(), scored[CAR_ID].to_numpy(), scored["origin"].to_numpy(),
                                         draws=TRUTH_DRAWS, usage_known=False).probability  # fmt: skip
    label = scored["label"].to_numpy()

    def brier(p: np.ndarray) -> float:
        return float(np.mean((p - label) ** 2))

    truth, model_probability = scored["true_probability"].to_numpy(), scored["probability"].to_numpy()
    assert 1.02 * brier(truth) < brier(reference) < brier(model_probability)
    unsure = (reference > 0) & (reference < 1)
    expected, spread = reference[unsure].sum(), np.sqrt(np.sum(reference[unsure] * (1 - reference[unsure])))
    assert unsure.sum() >= 30 and abs(label[unsure].sum() - expected) <= SIGMAS * spread


SMALL = (300, "2015-01-01", "2015-12-31", 3)


def test_heavier_missing_data_plants_that_many_more_missing_days():
    default = simulate_fleet(*SMALL).planted["missing_days"]
    heavier = simulate_fleet(*SMALL, SimulatorOptions(missing_scale=4.0)).planted["missing_days"]
    assert 3.3 <= heavier / default <= 4.3


def test_a_fleet_of_one_region_has_only_its_cars_and_an_unknown_region_is_refused():
    hot = simulate_fleet(*SMALL, SimulatorOptions(regions=(HOT_REGION,)))
    assert set(hot.cars["Region"]) == {HOT_REGION}
    with pytest.raises(InputError, match="regions: unknown Sahara"):
        simulate_fleet(*SMALL, SimulatorOptions(regions=("Sahara",)))


def test_usage_regime_changes_jump_the_usage_level_at_their_rate():
    rate = 1 / 60
    changing = simulate_fleet(*SMALL, SimulatorOptions(regime_change_rate=rate))
    level = changing.process.usage_level_all
    jumps = np.diff(level, axis=1) != 0
    assert abs(jumps.mean() - rate) < 0.2 * rate
    minutes = changing.truth["Daily_Trip_Duration"].to_numpy().reshape(level.shape[0], -1)
    default = simulate_fleet(*SMALL).truth["Daily_Trip_Duration"].to_numpy().reshape(level.shape[0], -1)
    assert np.std(np.log(minutes.mean(axis=1) / default.mean(axis=1))) > 0.1  # cars' usage really moved


def test_short_histories_start_reporting_late_on_a_share_of_the_cars():
    late = simulate_fleet(*SMALL, SimulatorOptions(late_start_share=0.5))
    first = late.telemetry.groupby(CAR_ID)[DATE].min()
    share = (first > pd.Timestamp(SMALL[1]) + pd.Timedelta(days=30)).mean()
    assert 0.35 <= share <= 0.5


# Issue 17's targets for the model against the truth.
BRIER_TO_TRUTH_TARGET = 1.15
AP_GAP_TARGET = 0.002
# What the test fleet must keep (measured 1.15 and 0.0006; README, "Against the truth").
BRIER_TO_TRUTH_GUARD = 1.2


def test_on_the_test_fleet_the_model_stays_close_to_the_truth():
    ratios = model().metadata["backtest"]["truth"]["ratios"]["model"]
    assert ratios["brier_to_truth"] <= BRIER_TO_TRUTH_GUARD
    assert ratios["average_precision_gap"] <= AP_GAP_TARGET


@pytest.mark.xfail(
    strict=True,
    reason="issue 17 point 2 not reached: on the seed-31 fleet the model's Brier score is 1.23x the truth's (1.65 "
    "before the level top-up and the region's season; its average precision is 0.0008 below); most of what is "
    "left is the truth's knowledge of the car's usage level (README, 'Against the truth')",
)
def test_on_another_seed_the_model_reaches_the_issues_targets_against_the_truth():
    other = simulate_comparison_fleet(COMPARISON_FLEETS["seed 31"], 500)
    clean, _ = prepare_telemetry(other.telemetry)
    trained = train_model(clean, other.cars, max_training_rows=60_000, truth=fleet_truth(other, TRUTH_DRAWS))
    ratios = trained.metadata["backtest"]["truth"]["ratios"]["model"]
    assert ratios["brier_to_truth"] <= BRIER_TO_TRUTH_TARGET
    assert ratios["average_precision_gap"] <= AP_GAP_TARGET
