"""The model monitor's measures against hand-computed values (pure), then the monitor on Azurite."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pandas as pd
import pytest

from shared.adapters import monitor_store
from shared.adapters.archive import archive_telemetry
from shared.adapters.registry import ModelRegistry
from shared.core import monitoring as m
from shared.core.risk import HORIZON_DAYS
from shared.devtools.fleet_simulator import Fleet, UsageChange, simulate_fleet

SCORED_ON = date(2016, 3, 1)


def day(offset: int) -> pd.Timestamp:
    return pd.Timestamp(SCORED_ON) + pd.Timedelta(days=offset)


def hand_case() -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Four batteries scored on SCORED_ON, every forecast 0.15 cycles a day, and what the next 30 days showed.

    B1 reaches rated on day 1 (positive); B2 reports on day 30 below rated (negative); B3 stops reporting on
    day 10 (censored); B4 was past rated when scored (counted apart)."""
    scores = pd.DataFrame({
        "Battery_ID": ["B1", "B2", "B3", "B4"], "Car_ID": ["C1", "C2", "C3", "C4"],
        "failure_probability_30d": [0.9, 0.2, 0.6, 0.95], "Lifetime_Cycles_Used": [195.0, 100.0, 150.0, 205.0],
        "Battery_Rated_Cycles": [200, 200, 200, 200],
    })  # fmt: skip
    later = pd.DataFrame([
        ("B1", day(1), 0.3, 201.0),
        ("B2", day(2), -1.0, 100.0),  # a glitch: left out
        ("B2", day(30), 0.1, 104.5),
        ("B2", day(31), 5.0, 300.0),  # after the horizon: left out
        ("B3", day(5), 0.1, 151.0), ("B3", day(5) + pd.Timedelta(hours=12), 0.1, 151.1),  # 12-hour rows add up
        ("B3", day(10), 0.2, 152.0),
        ("B9", day(3), 1.0, 500.0),  # a battery not scored that day
    ], columns=["Battery_ID", "Date", "Daily_Cycles_Used", "Lifetime_Cycles_Used"])  # fmt: skip
    return scores, np.full((4, 30), 0.15), later


def test_matured_outcomes_label_censor_and_set_apart_as_the_backtest_does():
    scores, forecast, later = hand_case()
    outcomes = m.matured_outcomes(scores, forecast, later, SCORED_ON)
    assert outcomes.label.tolist() == [True, False, False, True]
    assert outcomes.labelled.tolist() == [True, True, False, True]
    assert outcomes.already_past.tolist() == [False, False, False, True]
    assert outcomes.judged.tolist() == [True, True, False, False]
    assert outcomes.actual[2, 4] == pytest.approx(0.2)  # day 5: the two halves
    assert np.isfinite(outcomes.actual).sum() == 4  # B1 d1, B2 d30, B3 d5 and d10


def test_accuracy_per_fleet_and_segment_matches_the_hand_computed_figures():
    scores, forecast, later = hand_case()
    outcomes = m.matured_outcomes(scores, forecast, later, SCORED_ON)
    segments = pd.DataFrame({"Car_ID": ["C1", "C2", "C3"], "Make": ["A", "A", "B"]})

    accuracy, reliability = m.accuracy_tables(outcomes, segments, 0.8, scored_on=SCORED_ON, model_version="v1",
                                              role=m.CHAMPION)  # fmt: skip

    rows = accuracy.set_index([m.SEGMENT_KIND, m.SEGMENT])
    fleet = rows.loc[(m.ALL_SEGMENTS, m.ALL_SEGMENTS)]
    assert fleet[m.BATTERIES] == 2 and fleet[m.POSITIVES] == 1
    assert fleet[m.BRIER] == pytest.approx(((0.9 - 1) ** 2 + 0.2**2) / 2)  # 0.025
    assert (fleet[m.RECALL], fleet[m.PRECISION], fleet[m.AVERAGE_PRECISION]) == (1.0, 1.0, 1.0)
    assert fleet[m.ALERTS] == 2  # B1 and B4 at or above 0.8, labelled or not
    # errors 0.15, -0.05, -0.05, -0.05 over an actual range of 0.3 - 0.1
    assert fleet[m.NRMSE] == pytest.approx(math.sqrt((0.15**2 + 3 * 0.05**2) / 4) / 0.2)
    assert fleet[m.MATURED_ON] == pd.Timestamp("2016-03-31")
    make_a = rows.loc[("make", "A")]
    assert make_a[m.NRMSE] == pytest.approx(math.sqrt((0.15**2 + 0.05**2) / 2) / 0.2)
    assert make_a[m.BRIER] == pytest.approx(0.025)
    make_b = rows.loc[("make", "B")]
    assert make_b[m.BATTERIES] == 0 and math.isnan(make_b[m.BRIER]) and math.isnan(make_b[m.NRMSE])
    assert rows.loc[("make", m.UNKNOWN_SEGMENT), m.ALERTS] == 1  # C4 is not in the car table
    fleet_bins = reliability[reliability[m.SEGMENT_KIND] == m.ALL_SEGMENTS].set_index(m.BIN)
    assert fleet_bins[m.COUNT].sum() == 2
    assert fleet_bins.loc["0.9-1.0", m.OBSERVED_RATE] == 1.0 and fleet_bins.loc["0.2-0.3", m.OBSERVED_RATE] == 0.0


def test_psi_of_a_shifted_feature_against_its_reference_bins_per_segment():
    bins = {"Daily_Trip_Duration": {"edges": [1.0], "shares": [0.5, 0.5]}}
    reference = {"all=all": bins, "region=Nordic": bins}
    minutes = [0.0, 0.0, 0.0, 2.0, 9999.0] * 150  # 9999: a glitch, left out
    recent = pd.DataFrame({"Car_ID": ["N"] * 400 + ["S"] * 350, "Daily_Trip_Duration": minutes})
    segments = pd.DataFrame({"Car_ID": ["N", "S"], "Region": ["Nordic", "Atlantic"]})

    drift = m.population_stability(reference, recent, 0.2, segments).set_index(m.SEGMENT)

    shifted = 0.25 * math.log(1.5) + 0.25 * math.log(2.0)  # 0.2747: shares 0.75 / 0.25 against 0.5 / 0.5
    assert drift.loc[m.ALL_SEGMENTS, m.PSI] == pytest.approx(shifted) and drift.loc[m.ALL_SEGMENTS, m.DRIFTED]
    assert drift.loc["Nordic", m.PSI] == pytest.approx(shifted) and drift.loc["Nordic", m.RECORDS] == 320
    assert drift.loc[m.ALL_SEGMENTS, m.THRESHOLD] == 0.2 and drift.loc["Nordic", m.SEGMENT_KIND] == "region"
    few = m.population_stability(reference, recent.iloc[:300], 0.2, segments).set_index(m.SEGMENT)
    assert math.isnan(few.loc["Nordic", m.PSI]) and not few.loc["Nordic", m.DRIFTED]  # 240 records: noise
    unchanged = m.population_stability(reference, pd.DataFrame({"Daily_Trip_Duration": [0.0, 2.0]}), 0.2)
    assert unchanged[m.PSI].iloc[0] == pytest.approx(0.0) and not unchanged[m.DRIFTED].iloc[0]


def test_the_training_reference_is_deciles_of_the_last_weeks():
    daily = pd.DataFrame({
        "Date": pd.date_range("2016-01-01", periods=40), "Number_Of_Trips": 5, "Daily_Cycles_Used": 0.1,
        "Daily_Trip_Duration": np.r_[np.full(12, 500.0), np.arange(28.0)],
    })  # fmt: skip
    reference = m.feature_reference(daily, days=28, bins=4)
    assert list(reference) == ["all=all"]  # no car table: the fleet only
    minutes = reference["all=all"]["Daily_Trip_Duration"]
    assert minutes["edges"] == pytest.approx([6.75, 13.5, 20.25])  # the first 12 days (500 minutes) are too old
    assert minutes["shares"] == pytest.approx([0.25] * 4)
    assert reference["all=all"]["Number_Of_Trips"] == {"edges": [5.0], "shares": [0.0, 1.0]}  # one value, one edge
    cars = pd.DataFrame({"Car_ID": ["C1"], "Make": ["A"]})
    per_segment = m.feature_reference(daily.assign(Car_ID="C1"), cars, days=28, bins=4)
    assert list(per_segment) == ["all=all"]  # make=A has 28 records: fewer than MIN_DRIFT_RECORDS


def test_retrain_reasons_name_the_degraded_figure_and_the_drifted_feature():
    drift = pd.DataFrame({m.FEATURE: ["Daily_Trip_Duration", "Number_Of_Trips"], m.PSI: [0.31, 0.05],
                          m.THRESHOLD: [0.2, 0.2], m.DRIFTED: [True, False], m.SEGMENT_KIND: ["region", m.ALL_SEGMENTS],
                          m.SEGMENT: ["Nordic", m.ALL_SEGMENTS]})  # fmt: skip
    matured = {"days": 7, "brier": 0.0626, "nrmse": 0.5, "total_error": 0.2}
    backtest = {"brier": 0.05, "nrmse": 0.10, "total_error": 0.1}
    reasons = m.retrain_reasons(matured, backtest, drift, margin=0.25)
    assert reasons == ["matured Brier 0.0626 over 7 days is more than 25% above the backtest's 0.05",
                       "matured 30-day total error 0.2 over 7 days is more than 25% above the backtest's 0.1",
                       "input drift in region Nordic: Daily_Trip_Duration PSI 0.31 ≥ 0.2"]  # fmt: skip
    assert m.retrain_reasons({"days": 7, "brier": 0.0624, "nrmse": 0.5, "total_error": 0.125}, backtest,
                             drift.iloc[1:], margin=0.25) == []  # fmt: skip  # NRMSE is not compared


def test_pooled_metrics_weigh_days_by_batteries_judged_and_cooldown_reads_the_last_trigger():
    fleet = pd.DataFrame({m.SEGMENT_KIND: [m.ALL_SEGMENTS, m.ALL_SEGMENTS, "make"], m.BATTERIES: [30, 10, 5],
                          m.BRIER: [0.1, 0.3, 0.9], m.NRMSE: [0.2, 0.4, 0.9], m.AVERAGE_PRECISION: [0.5, np.nan, 0.1],
                          m.RECALL: [1.0, 0.0, 0.0], m.PRECISION: [np.nan, np.nan, 1.0],
                          m.TOTAL_ERROR: [0.1, np.nan, 0.5]})  # fmt: skip
    pooled = m.pooled_metrics(fleet)
    assert pooled["brier"] == pytest.approx((30 * 0.1 + 10 * 0.3) / 40)
    assert pooled["nrmse"] == pytest.approx(0.3) and pooled["average_precision"] == 0.5
    assert pooled["precision_at_threshold"] is None and pooled["days"] == 2 and pooled["total_error"] == 0.1
    decisions = pd.DataFrame({m.TRIGGERED: [True, False, True, False],
                              m.COOLDOWN_UNTIL: pd.to_datetime(["2016-01-01", None, "2016-02-01", None])})  # fmt: skip
    assert m.cooldown_until(decisions) == date(2016, 2, 1)
    assert m.cooldown_until(decisions[~decisions[m.TRIGGERED]]) is None


# --- the monitor on Azurite, nights through the local host ----------------------------------------------

# From this day the Atlantic cars drive 40 % more: in June, between the thaw and the summer holidays, so the
# season moves no segment's inputs past the threshold (a champion trained in July would see the holidays).
CHANGE = date(2015, 6, 10)
FIRST_NIGHT = CHANGE - timedelta(days=35)  # the first champion is trained on the archive up to this day
LAST_DAY = CHANGE + timedelta(days=60)  # the simulated fleet's last day
JUDGED_NIGHTS = 8  # nights scored after the retrain, whose outcomes show the new model


def night_after(last_day: date) -> datetime:
    """The night the nightly jobs run for `last_day` (they score and judge "yesterday")."""
    return datetime.combine(last_day + timedelta(days=1), time(3), tzinfo=UTC)


@pytest.fixture(scope="module")
def changing_fleet() -> Fleet:
    return simulate_fleet(120, "2014-09-01", LAST_DAY, seed=7, usage_change=UsageChange("Atlantic", CHANGE, 1.4))


def run_night(harness, last_day: date, *timers: str) -> None:
    """The night after `last_day`: the timers named, in order."""
    harness.clock.now = night_after(last_day)
    for timer in timers:
        run = harness.host.fire_timer(timer)
        assert run.succeeded, f"{timer} {last_day}: {run.error}"


def test_a_change_of_usage_is_seen_retrains_once_and_the_new_model_recovers(harness, changing_fleet):
    """The nights whose scores the test judges are scored (the batch score of the other nights would change
    nothing the monitor decides, and takes most of the time); every night is monitored but those in the
    cooldown where no score matures (three weeks after the retrain). The accuracy trigger
    is set out of reach (MONITOR_DEGRADATION_MARGIN=3): a 120-car fleet's week of matured Brier swings around
    one to three times its backtest's, so this test isolates the drift trigger and watches the accuracy."""
    blobs = harness.services.blobs
    harness.configure(RETRAIN_HISTORY_DAYS="237", MONITOR_DEGRADATION_MARGIN="3")
    archive_telemetry(blobs, changing_fleet.telemetry, night_after(LAST_DAY), batch_id="fleet")
    monitor_store.write_car_segments(blobs, changing_fleet.cars)
    run_night(harness, FIRST_NIGHT, "nightly_retrain_timer")
    registry = ModelRegistry(blobs)
    first = registry.champion_version()
    for offset in range(34, 30, -1):  # scores whose 30 days all come before the change
        run_night(harness, CHANGE - timedelta(days=offset), "nightly_batch_score_timer")
    retrained = None
    last_day = CHANGE - timedelta(days=3)
    while retrained is None or last_day <= retrained + timedelta(days=HORIZON_DAYS + JUDGED_NIGHTS):
        judged = retrained is not None and last_day < retrained + timedelta(days=JUDGED_NIGHTS)
        if retrained is not None and last_day == retrained + timedelta(days=JUDGED_NIGHTS):
            last_day = max(last_day, CHANGE + timedelta(days=HORIZON_DAYS - 3))  # till then nothing matures
        scored = last_day <= CHANGE or judged
        run_night(harness, last_day, *(["nightly_batch_score_timer"] if scored else []), "nightly_monitor_timer")
        decisions = monitor_store.read_retrain_decisions(blobs)
        if retrained is None and decisions[m.TRIGGERED].any():
            retrained = last_day
        last_day += timedelta(days=1)
        assert last_day <= LAST_DAY, "no retrain was triggered"

    decisions = monitor_store.read_retrain_decisions(blobs)
    accuracy = monitor_store.read_accuracy(blobs)
    fleet = accuracy[accuracy[m.SEGMENT_KIND] == m.ALL_SEGMENTS].set_index([m.MODEL_VERSION, m.SCORED_ON])
    print(fleet[[m.ROLE, m.BATTERIES, m.BRIER, m.NRMSE, m.TOTAL_ERROR]].to_string())
    print(decisions[[m.DAY, m.REASON, m.TRIGGERED]].to_string())
    triggered = decisions[decisions[m.TRIGGERED]]
    assert len(triggered) == 1, triggered  # one retrain, not one a night
    [trigger] = triggered.to_dict("records")
    assert "input drift in region Atlantic" in trigger[m.REASON]
    assert CHANGE < retrained < CHANGE + timedelta(days=20)
    assert trigger[m.COOLDOWN_UNTIL].date() == retrained + timedelta(days=40)
    outcome = json.loads(trigger[m.RETRAIN_OUTCOME])
    second = outcome["trained"]
    assert second != first and (outcome["promoted"] or outcome["shadow"])
    if outcome["promoted"]:  # trained on the new usage, the new champion's inputs match its training again
        assert not decisions.loc[decisions[m.DAY] > trigger[m.DAY], m.REASON].str.contains("drift").any()

    drift = monitor_store.read_drift(blobs)
    atlantic = drift[(drift[m.SEGMENT] == "Atlantic") & (drift[m.FEATURE] == "Daily_Trip_Duration")
                     & (drift[m.MODEL_VERSION] == first)].set_index(m.DAY)[m.PSI]  # fmt: skip
    assert atlantic[: pd.Timestamp(CHANGE)].max() < 0.2 <= atlantic[pd.Timestamp(CHANGE) :].max()

    before = fleet.loc[first].loc[: pd.Timestamp(CHANGE - timedelta(days=31)), m.TOTAL_ERROR].mean()
    across = fleet.loc[first].loc[pd.Timestamp(CHANGE - timedelta(days=3)) : pd.Timestamp(CHANGE), m.TOTAL_ERROR]
    assert across.mean() > 1.3 * before  # the matured accuracy fell with the change
    recovered = fleet.loc[second, m.TOTAL_ERROR]
    assert len(recovered) >= 7 and recovered.mean() < across.mean() / 1.3  # and the new model is right again
