"""The fleet simulator: realistic enough to matter, dirty in known ways, the same for the same seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.compliance.classifier import COMPONENT_COLUMNS, TEMPLATE, read_components_csv
from shared.core.telemetry import (
    BATTERY_ID,
    CAR_COLUMNS,
    CAR_ID,
    COLUMNS,
    DAILY_CYCLES,
    DATE,
    LIFETIME_CYCLES,
    MEASURE_COLUMNS,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
    InputError,
    implausible_values,
    read_cars_csv,
    read_telemetry_csv,
)
from shared.devtools.fleet_simulator import (
    BATTERY_COLUMNS,
    CLIMATES,
    COLD_REGION,
    CYCLES_PER_MINUTE,
    HOT_REGION,
    REFERENCE_BATTERY_MODEL,
    REFERENCE_ENGINE,
    REFERENCE_REGION,
    climate_factor,
    simulate_fleet,
    write_fleet,
)

START, END = pd.Timestamp("2014-10-01"), pd.Timestamp("2015-12-31")
N_CARS = 300
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def fleet():
    return simulate_fleet(N_CARS, START.date(), str(END.date()), seed=11)


@pytest.fixture(scope="module")
def reported(fleet):
    """Telemetry with the car-day it reports, whether it is a copy, and the truth for that car-day."""
    telemetry = fleet.telemetry.assign(
        day=fleet.telemetry[DATE].dt.normalize(),
        copy=fleet.telemetry.duplicated([BATTERY_ID, DATE]),
        implausible=implausible_values(fleet.telemetry).notna(),
        blank=fleet.telemetry[MEASURE_COLUMNS].isna().any(axis=1),
    )
    truth = fleet.truth.rename(columns={DATE: "day"})
    both = telemetry.merge(truth, on=[CAR_ID, "day"], suffixes=("", "_truth"), validate="m:1")
    # a counter reading of 0 is a glitch only in context: the real counter had counted something
    both["zero_counter"] = (both[LIFETIME_CYCLES] == 0) & (both[f"{LIFETIME_CYCLES}_truth"] >= 5)
    both["glitch"] = both["implausible"] | both["zero_counter"]
    return both


def test_same_seed_gives_the_same_fleet_and_another_seed_a_different_one():
    first = simulate_fleet(40, "2014-12-01", "2015-02-28", seed=5)
    again = simulate_fleet(40, "2014-12-01", "2015-02-28", seed=5)
    other = simulate_fleet(40, "2014-12-01", "2015-02-28", seed=6)
    for name in ("telemetry", "cars", "truth", "batteries", "components"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(again, name))
    assert first.planted == again.planted
    assert not np.array_equal(first.truth[DAILY_CYCLES], other.truth[DAILY_CYCLES])
    assert not first.cars["Region"].equals(other.cars["Region"])


def test_frames_follow_the_schema(fleet):
    telemetry, truth, cars, batteries = fleet.telemetry, fleet.truth, fleet.cars, fleet.batteries
    assert list(telemetry.columns) == COLUMNS and list(truth.columns) == COLUMNS
    assert list(cars.columns) == CAR_COLUMNS and list(batteries.columns) == BATTERY_COLUMNS
    for frame in (telemetry, truth):
        assert frame[DATE].dtype == "datetime64[ns]"
        assert all(frame[column].dtype == "float64" for column in MEASURE_COLUMNS)
        for column in (BATTERY_ID, CAR_ID):
            assert frame[column].dtype == object
            assert frame[column].map(type).eq(str).all()
    assert cars[CAR_ID].is_unique and len(cars) == N_CARS
    assert set(telemetry[CAR_ID]) == set(cars[CAR_ID])
    assert batteries[BATTERY_ID].is_unique and set(truth[BATTERY_ID]) == set(batteries[BATTERY_ID])

    days = pd.date_range(START, END)
    assert len(truth) == N_CARS * len(days)
    assert not truth.duplicated([CAR_ID, DATE]).any() and not truth.duplicated([BATTERY_ID, DATE]).any()
    assert truth[DATE].min() == START and truth[DATE].max() == END

    first_installed = batteries.groupby(CAR_ID)["Installed"].min()
    assert (cars.set_index(CAR_ID)["Purchase_Date"] <= first_installed).all()


def test_rows_before_2015_come_every_12_hours_as_halves_of_the_day(fleet, reported):
    early = reported[DATE] < "2015-01-01"
    assert set(reported.loc[early, DATE].dt.hour) == {0, 12}
    assert (reported.loc[~early, DATE] == reported.loc[~early, "day"]).all()
    assert (early & ~reported["copy"]).sum() == fleet.planted["twelve_hour_rows"]

    clean = reported[early & ~reported["copy"] & ~reported["glitch"] & ~reported["blank"]]
    whole_days = clean.groupby([CAR_ID, "day"]).filter(lambda day: len(day) == 2)
    sums = whole_days.groupby([CAR_ID, "day"])[[TRIPS, TRIP_MINUTES, DAILY_CYCLES]].sum()
    truth = whole_days.groupby([CAR_ID, "day"])[[f"{c}_truth" for c in (TRIPS, TRIP_MINUTES, DAILY_CYCLES)]]
    assert len(sums) > 0.9 * fleet.planted["twelve_hour_rows"] / 2
    np.testing.assert_allclose(sums.to_numpy(), truth.first().to_numpy(), atol=1e-9)
    noon = whole_days[whole_days[DATE].dt.hour == 12]
    np.testing.assert_allclose(noon[LIFETIME_CYCLES], noon[f"{LIFETIME_CYCLES}_truth"], atol=1e-9)


def test_planted_problems_are_where_and_as_many_as_recorded(fleet, reported):
    planted, telemetry = fleet.planted, fleet.telemetry
    rows = len(telemetry)
    assert telemetry.duplicated().sum() == planted["exact_duplicates"]
    near = telemetry.duplicated([BATTERY_ID, DATE]).sum() - telemetry.duplicated().sum()
    assert near == planted["near_duplicates"]
    assert telemetry[MEASURE_COLUMNS].isna().sum().sum() == planted["blank_values"]
    assert 0.008 < planted["exact_duplicates"] / rows < 0.012
    assert 0.002 < planted["near_duplicates"] / rows < 0.004
    assert 0.0005 < planted["blank_values"] / rows < 0.0015

    assert reported["glitch"].sum() == planted["glitches"]
    assert 0 < reported["zero_counter"].sum() < reported["implausible"].sum()
    assert 0.0015 < planted["glitches"] / rows < 0.0025

    reported_days = reported[[CAR_ID, "day"]].drop_duplicates()
    missing = fleet.truth.merge(reported_days, left_on=[CAR_ID, DATE], right_on=[CAR_ID, "day"], how="left")
    missing = missing["day"].isna()
    assert missing.sum() == planted["missing_days"]
    assert 0.02 < missing.mean() < 0.04
    runs = missing.ne(missing.shift()).cumsum()[missing]
    assert runs.value_counts().max() >= 5, "some gaps last several days"

    daily = reported[(reported[DATE] >= "2015-01-01") & ~reported["copy"]]
    measures = daily[MEASURE_COLUMNS].to_numpy()
    as_true = daily[[f"{c}_truth" for c in MEASURE_COLUMNS]].to_numpy()
    differs = ~np.isclose(measures, as_true, rtol=0, atol=1e-9).all(axis=1)
    problem = daily["glitch"] | daily["blank"]
    assert (differs == problem.to_numpy()).all(), "apart from planted problems, daily rows are the truth"


def test_counter_is_the_running_sum_of_daily_cycles_across_unreported_days(fleet):
    truth = fleet.truth
    carried = truth[LIFETIME_CYCLES] - truth.groupby(BATTERY_ID)[DAILY_CYCLES].cumsum()
    initial = carried.groupby(truth[BATTERY_ID]).agg(["min", "max"])
    assert (initial["max"] - initial["min"]).max() < 1e-6
    batteries = fleet.batteries.set_index(BATTERY_ID)
    new = batteries.index[batteries["Installed"] >= START]
    assert len(new) > 50 and initial.loc[new, "max"].abs().max() < 1e-6
    old = batteries.index[batteries["Installed"] < START]
    assert (initial.loc[old, "min"] >= 0).all()
    assert (initial.loc[old, "max"] < batteries.loc[old, RATED_CYCLES]).all()


def test_replacement_gives_the_car_a_new_battery_counting_from_zero(fleet):
    batteries, truth = fleet.batteries, fleet.truth
    replaced = batteries.dropna(subset=["Replaced"])
    assert len(replaced) > 50
    delay = (replaced["Replaced"] - replaced["Rated_Life_Reached"]).dt.days
    assert delay.between(1, 46).all()

    on_the_day = replaced[[CAR_ID, BATTERY_ID, "Replaced", RATED_CYCLES]].merge(
        truth, left_on=[CAR_ID, "Replaced"], right_on=[CAR_ID, DATE], suffixes=("_old", "")
    )
    assert len(on_the_day) == len(replaced)
    assert (on_the_day[BATTERY_ID] != on_the_day[f"{BATTERY_ID}_old"]).all()
    assert (on_the_day["Battery_Age_Days"] == 0).all()
    assert np.allclose(on_the_day[LIFETIME_CYCLES], on_the_day[DAILY_CYCLES])

    last_day = truth.groupby(BATTERY_ID).last().loc[replaced[BATTERY_ID]]
    assert (last_day[LIFETIME_CYCLES] >= last_day[RATED_CYCLES]).all()


def test_a_silent_replacement_keeps_the_old_id_but_resets_the_counter(fleet):
    batteries = fleet.batteries
    silent = batteries[batteries["Reported_ID"] != batteries[BATTERY_ID]]
    assert len(silent) == fleet.planted["silent_replacements"] > 0
    original = batteries.set_index(BATTERY_ID).loc[silent["Reported_ID"]]
    assert (original[CAR_ID].to_numpy() == silent[CAR_ID].to_numpy()).all()
    assert (original["Installed"].to_numpy() < silent["Installed"].to_numpy()).all()
    for battery in silent.itertuples():
        series = fleet.telemetry[fleet.telemetry[BATTERY_ID] == battery.Reported_ID].dropna()
        series = series[implausible_values(series).isna()]
        after = series[series[DATE] >= battery.Installed]
        before = series[series[DATE] < battery.Installed]
        assert after["Battery_Age_Days"].min() < 15 < before["Battery_Age_Days"].max()
        assert after[LIFETIME_CYCLES].iloc[0] < before[LIFETIME_CYCLES].iloc[-1]


def test_reference_battery_in_a_mild_climate_uses_0_00246_cycles_per_minute(fleet):
    days = _with_battery_and_car(fleet)
    reference = days[
        (days["Battery_Model"] == REFERENCE_BATTERY_MODEL)
        & (days["Engine_Type"] == REFERENCE_ENGINE)
        & (days["Region"] == REFERENCE_REGION)
        & (days[LIFETIME_CYCLES] < 0.25 * days[RATED_CYCLES])
        & (days[TRIP_MINUTES] > 0)
    ]
    assert len(reference) > 1000
    per_minute = reference[DAILY_CYCLES] / reference[TRIP_MINUTES]
    assert per_minute.median() == pytest.approx(CYCLES_PER_MINUTE, rel=0.02)


def test_cold_region_wears_clearly_faster_in_winter_and_hot_region_a_little_in_summer(fleet):
    days = _with_battery_and_car(fleet)
    days = days[days[TRIP_MINUTES] > 0]
    climate = days[DAILY_CYCLES] / (days[TRIP_MINUTES] * days["Wear_Factor"])
    season = np.select(
        [days[DATE].dt.month.isin([12, 1, 2]), days[DATE].dt.month.isin([6, 7, 8])], ["winter", "summer"], ""
    )
    cost = climate.groupby([days["Region"], season]).median()
    assert cost[COLD_REGION, "winter"] > 1.6 * cost[REFERENCE_REGION, "winter"]
    assert cost[COLD_REGION, "summer"] < 1.45 * cost[REFERENCE_REGION, "summer"]
    hot_summer = cost[HOT_REGION, "summer"] / cost[HOT_REGION, "winter"]
    assert 1.05 < hot_summer < cost[COLD_REGION, "winter"] / cost[COLD_REGION, "summer"]


def test_the_cold_region_s_wear_steps_up_at_the_first_frost_and_no_other_region_s_does():
    before = pd.date_range("2015-11-01", "2015-11-14")
    after = pd.date_range("2015-11-15", "2015-11-28")
    for climate in CLIMATES:
        step = climate_factor(climate.region, after).mean() / climate_factor(climate.region, before).mean()
        if climate.region == COLD_REGION:
            assert step > 1.8
        else:
            assert step == pytest.approx(1.0, abs=0.02)  # the smooth seasonal cosine only
    # Before the frost the cold region is as mild as a temperate one: nothing in its history gives it away.
    assert climate_factor(COLD_REGION, before).mean() < climate_factor("Continental", before).mean()


def test_at_every_date_a_few_percent_of_batteries_are_within_30_days_of_rated_life(fleet):
    reaches = fleet.batteries.set_index(BATTERY_ID)["Rated_Life_Reached"]
    for cut_off in [*pd.date_range(START, END, freq="MS"), END]:
        in_use = fleet.truth.loc[fleet.truth[DATE] == cut_off, BATTERY_ID]
        when = reaches.loc[in_use]
        soon = ((when > cut_off) & (when <= cut_off + 30 * DAY)).mean()
        assert 0.01 <= soon <= 0.08, f"{cut_off.date()}: {soon:.3f}"

    after_end = fleet.batteries[fleet.batteries["Rated_Life_Reached"].between(END + DAY, END + 30 * DAY)]
    last = fleet.truth[fleet.truth[DATE] == END].set_index(BATTERY_ID).loc[after_end[BATTERY_ID]]
    assert (last[LIFETIME_CYCLES] < last[RATED_CYCLES]).all()


def test_cars_differ_in_how_much_and_on_which_days_they_drive(fleet):
    truth = fleet.truth
    weekend = truth[DATE].dt.day_of_week >= 5
    minutes = truth.groupby([truth[CAR_ID], weekend])[TRIP_MINUTES].mean().unstack()
    weekday_over_weekend = minutes[False] / minutes[True]
    assert (weekday_over_weekend > 1.3).mean() > 0.2, "commuters"
    assert (weekday_over_weekend < 0.85).mean() > 0.1, "leisure drivers"
    per_car = truth.groupby(CAR_ID)[TRIP_MINUTES].mean()
    assert 50 < per_car.median() < 70
    assert per_car.quantile(0.9) > 1.8 * per_car.quantile(0.1)
    trips_per_minute = truth[TRIPS].sum() / truth[TRIP_MINUTES].sum()
    assert trips_per_minute == pytest.approx(1 / 12, rel=0.1)
    assert ((truth[TRIP_MINUTES] == 0) == (truth[TRIPS] == 0)).all()


def test_written_files_read_back_as_the_same_frames(tmp_path):
    fleet = simulate_fleet(15, "2014-12-25", "2015-01-05", seed=2)
    paths = write_fleet(fleet, tmp_path / "out")
    assert set(paths) == {"telemetry", "cars", "components"}
    pd.testing.assert_frame_equal(read_telemetry_csv(paths["telemetry"]), fleet.telemetry)
    pd.testing.assert_frame_equal(read_cars_csv(paths["cars"]), fleet.cars)
    components = read_components_csv(paths["components"], labelled=True)
    written = [*COMPONENT_COLUMNS, TEMPLATE]
    pd.testing.assert_frame_equal(components[written], fleet.components[written])

    lines = paths["telemetry"].read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    dates = [line.split(",")[0] for line in lines[1:]]
    assert {d for d in dates if d < "2015"} >= {"2014-12-31 00:00:00", "2014-12-31 12:00:00"}
    assert "2015-01-01" in dates and not any(len(d) != 10 for d in dates if d >= "2015")
    rated_cells = {line.split(",")[-1] for line in lines[1:]}
    assert rated_cells <= {"150", "200", "250", "300", ""}


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ((0, "2015-01-01", "2015-01-31", 1), "n_cars"),
        ((10, "2015-02-01", "2015-01-31", 1), "before start"),
        ((10, "first of May", "2015-01-31", 1), "start"),
        ((10, "2015-01-01", None, 1), "end: not a date"),
        ((10, "2015-01-01", "2015-01-31", -3), "seed"),
    ],
)
def test_bad_arguments_are_refused_with_the_argument_named(arguments, named):
    with pytest.raises(InputError, match=named):
        simulate_fleet(*arguments)


def test_a_thousand_cars_over_three_years(tmp_path):
    fleet = simulate_fleet(1000, "2014-01-01", "2016-12-31", seed=1)
    planted = fleet.planted
    assert len(fleet.cars) == 1000
    assert len(fleet.truth) == 1000 * 1096
    expected_rows = (
        len(fleet.truth)
        - planted["missing_days"]
        + planted["twelve_hour_rows"] // 2
        + planted["exact_duplicates"]
        + planted["near_duplicates"]
    )
    assert len(fleet.telemetry) == expected_rows
    assert fleet.batteries[BATTERY_ID].nunique() == fleet.truth[BATTERY_ID].nunique() > 1500


def _with_battery_and_car(fleet) -> pd.DataFrame:
    return fleet.truth.merge(
        fleet.batteries[[BATTERY_ID, "Battery_Model", "Wear_Factor"]], on=BATTERY_ID, validate="m:1"
    ).merge(fleet.cars[[CAR_ID, "Engine_Type", "Region"]], on=CAR_ID, validate="m:1")
