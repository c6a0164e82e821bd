"""Data preparation: each data problem in isolation on small hand-built frames, the clean-frame contract,
and one run on a simulated fleet compared with the truth behind it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import shared.core.preparation as preparation
from shared.core.preparation import CLEAN_COLUMNS, IMPUTED, prepare_telemetry
from shared.core.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_ID,
    COLUMNS,
    DAILY_CYCLES,
    DATE,
    INTEGER_COLUMNS,
    LIFETIME_CYCLES,
    MEASURE_COLUMNS,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
    InputError,
)
from shared.devtools.fleet_simulator import simulate_fleet

CYCLES_PER_MINUTE = 0.0025
MINUTES_PER_TRIP = 12.0


def battery(
    battery_id: str = "7",
    start: str = "2017-03-01",
    days: int = 10,
    counter_before: float = 100.0,
    first_age: int = 400,
    rated: float = 200.0,
) -> pd.DataFrame:
    """A clean daily history, typed like coerce_telemetry's output. Cycles per minute and minutes per trip
    are constant, so every repair from a ratio has one right answer."""
    trips = 5.0 + np.arange(days) % 3
    minutes = MINUTES_PER_TRIP * trips
    cycles = CYCLES_PER_MINUTE * minutes
    return pd.DataFrame(
        {
            DATE: pd.date_range(start, periods=days, freq="D", unit="us"),
            BATTERY_ID: pd.Series([battery_id] * days, dtype=object),
            CAR_ID: pd.Series([f"CAR-{battery_id}"] * days, dtype=object),
            AGE_DAYS: first_age + np.arange(days, dtype=float),
            TRIPS: trips,
            TRIP_MINUTES: minutes,
            DAILY_CYCLES: cycles,
            LIFETIME_CYCLES: counter_before + np.cumsum(cycles),
            RATED_CYCLES: np.full(days, rated),
        }
    )


def with_value(frame: pd.DataFrame, row: int, column: str, value: float) -> pd.DataFrame:
    changed = frame.copy()
    changed.loc[row, column] = value
    return changed


def assert_same_measures(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(actual[COLUMNS], expected[COLUMNS], check_exact=False, atol=1e-9)


def assert_clean_contract(clean: pd.DataFrame) -> None:
    assert list(clean.columns) == CLEAN_COLUMNS
    assert isinstance(clean.index, pd.RangeIndex) and clean.index.start == 0
    for column in INTEGER_COLUMNS:
        assert clean[column].dtype == np.int64, column
    for column in (TRIP_MINUTES, DAILY_CYCLES, LIFETIME_CYCLES):
        assert clean[column].dtype == np.float64, column
    assert clean[BATTERY_ID].dtype == object and clean[CAR_ID].dtype == object
    assert clean[IMPUTED].dtype == bool
    assert pd.api.types.is_datetime64_dtype(clean[DATE])
    assert not clean.isna().any().any()
    assert (clean[DATE] == clean[DATE].dt.normalize()).all()
    assert clean[[BATTERY_ID, DATE]].equals(clean[[BATTERY_ID, DATE]].sort_values([BATTERY_ID, DATE]))
    same = clean[BATTERY_ID].eq(clean[BATTERY_ID].shift())
    assert (clean[DATE].diff()[same] == pd.Timedelta(days=1)).all(), "days must be contiguous"
    assert (clean[DAILY_CYCLES] >= 0).all()
    counter_step = clean[LIFETIME_CYCLES].diff()[same]
    np.testing.assert_allclose(counter_step, clean[DAILY_CYCLES][same], atol=1e-6)


# --- clean input ----------------------------------------------------------------------------------------


def test_clean_history_comes_through_unchanged_and_nothing_is_counted():
    raw = battery()
    clean, report = prepare_telemetry(raw)

    assert_clean_contract(clean)
    assert_same_measures(clean, raw.astype(dict.fromkeys(INTEGER_COLUMNS, np.int64)))
    assert not clean[IMPUTED].any()
    assert (report.rows_in, report.rows_out, report.batteries_in, report.batteries_out) == (10, 10, 1, 1)
    assert not any(report.counts.values()), report.counts


def test_single_row_battery():
    raw = battery(days=1)
    clean, _ = prepare_telemetry(raw)

    assert_clean_contract(clean)
    assert len(clean) == 1 and not clean[IMPUTED].any()
    assert clean.loc[0, LIFETIME_CYCLES] == pytest.approx(raw.loc[0, LIFETIME_CYCLES])
    assert clean.loc[0, DAILY_CYCLES] == pytest.approx(raw.loc[0, DAILY_CYCLES])


def test_empty_input_gives_an_empty_clean_frame():
    clean, report = prepare_telemetry(battery().iloc[:0])

    assert list(clean.columns) == CLEAN_COLUMNS and clean.empty
    assert clean[AGE_DAYS].dtype == np.int64 and clean[DAILY_CYCLES].dtype == np.float64
    assert report.rows_in == report.rows_out == 0


# --- duplicates and 12-hour rows ------------------------------------------------------------------------


def test_exact_duplicate_rows_are_dropped_and_counted():
    raw = battery()
    clean, report = prepare_telemetry(pd.concat([raw, raw.iloc[[3, 3, 8]]], ignore_index=True))

    expected, _ = prepare_telemetry(raw)
    pd.testing.assert_frame_equal(clean, expected)
    assert report.counts["exact_duplicates"] == 3
    assert report.counts["near_duplicates"] == 0


def test_near_duplicates_collapse_to_their_median_and_are_counted():
    raw = battery()
    copy = raw.iloc[[3]].copy()
    copy[TRIP_MINUTES] += 0.02
    copy[LIFETIME_CYCLES] += 0.0002
    clean, report = prepare_telemetry(pd.concat([raw, copy], ignore_index=True))

    assert len(clean) == 10
    assert report.counts["near_duplicates"] == 1 and report.counts["exact_duplicates"] == 0
    assert clean.loc[3, TRIP_MINUTES] == pytest.approx(raw.loc[3, TRIP_MINUTES] + 0.01)
    assert not clean[IMPUTED].any()


def split_into_twelve_hour_rows(daily: pd.DataFrame) -> pd.DataFrame:
    """What an old car sends: a row for each half day, the counter as of the end of that half."""
    morning, afternoon = daily.copy(), daily.copy()
    afternoon[DATE] += pd.Timedelta(hours=12)
    morning[TRIPS] = np.floor(daily[TRIPS] / 2)
    afternoon[TRIPS] = daily[TRIPS] - morning[TRIPS]
    for half in (morning, afternoon):
        half[TRIP_MINUTES] = daily[TRIP_MINUTES] / 2
        half[DAILY_CYCLES] = daily[DAILY_CYCLES] / 2
    morning[LIFETIME_CYCLES] = daily[LIFETIME_CYCLES] - daily[DAILY_CYCLES] / 2
    afternoon[AGE_DAYS] = daily[AGE_DAYS] + 1  # a car that counts age at noon: the day keeps the minimum
    return pd.concat([morning, afternoon]).sort_values(DATE, kind="stable").reset_index(drop=True)


def test_twelve_hour_rows_merge_into_days_with_the_right_aggregation_per_column():
    daily = battery()
    clean, report = prepare_telemetry(split_into_twelve_hour_rows(daily))

    assert_same_measures(clean, daily.astype(dict.fromkeys(INTEGER_COLUMNS, np.int64)))
    assert not clean[IMPUTED].any()
    assert report.counts["twelve_hour_rows_merged"] == 20


def test_a_blank_half_day_is_repaired_from_the_counter_not_undercounted():
    daily = battery()
    halves = split_into_twelve_hour_rows(daily)
    halves.loc[9, DAILY_CYCLES] = np.nan  # the afternoon of day 4
    clean, report = prepare_telemetry(halves)

    assert clean.loc[4, DAILY_CYCLES] == pytest.approx(daily.loc[4, DAILY_CYCLES])
    assert clean[IMPUTED].tolist() == [day == 4 for day in range(10)]
    assert report.counts["lifetime_gap_reconciled"] == 1


# --- missing days ---------------------------------------------------------------------------------------


def test_missing_days_are_filled_from_the_lifetime_counter_rise():
    full = battery()
    raw = full.drop(index=[4, 5, 6]).reset_index(drop=True)
    clean, report = prepare_telemetry(raw)

    assert_clean_contract(clean)
    assert clean[DATE].tolist() == full[DATE].tolist()
    assert clean[IMPUTED].tolist() == [day in (4, 5, 6) for day in range(10)]
    filled = clean.loc[4:6]
    # The counter kept counting while the car was silent: its rise, less day 7's own cycles.
    gap_cycles = full.loc[7, LIFETIME_CYCLES] - full.loc[3, LIFETIME_CYCLES] - full.loc[7, DAILY_CYCLES]
    assert filled[DAILY_CYCLES].sum() == pytest.approx(gap_cycles)
    np.testing.assert_allclose(filled[DAILY_CYCLES], gap_cycles / 3)
    reported = ~clean[IMPUTED]
    np.testing.assert_allclose(clean[LIFETIME_CYCLES][reported], full[LIFETIME_CYCLES][reported])
    np.testing.assert_allclose(filled[TRIP_MINUTES], filled[DAILY_CYCLES] / CYCLES_PER_MINUTE)
    assert filled[TRIPS].tolist() == np.round(filled[TRIP_MINUTES] / MINUTES_PER_TRIP).tolist()
    assert filled[AGE_DAYS].tolist() == [404, 405, 406]
    assert (filled[CAR_ID] == "CAR-7").all() and (filled[RATED_CYCLES] == 200).all()
    assert report.counts["missing_days_filled"] == 3
    assert report.counts["lifetime_gap_reconciled"] == 3


def test_a_counter_rise_no_car_could_drive_is_not_spread_over_the_gap():
    full = battery()
    raw = full.drop(index=[5, 6]).reset_index(drop=True)
    raw.loc[raw[DATE] > "2017-03-05", LIFETIME_CYCLES] += 100.0  # a counter reset to another value
    clean, report = prepare_telemetry(raw)

    assert_clean_contract(clean)
    assert report.counts["lifetime_gap_reconciled"] == 0
    assert report.counts["interpolated.Daily_Cycles_Used"] == 2
    low, high = full.loc[4, DAILY_CYCLES], full.loc[7, DAILY_CYCLES]
    np.testing.assert_allclose(clean.loc[5:6, DAILY_CYCLES], [low + (high - low) / 3, low + 2 * (high - low) / 3])
    # The counter follows the majority of readings (the five before the jump), not the jump.
    np.testing.assert_allclose(clean.loc[:4, LIFETIME_CYCLES], full.loc[:4, LIFETIME_CYCLES])
    assert report.counts["lifetime_counter_corrected"] == 3


# --- glitches and blanks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "column", "bad"),
    [
        (4, DAILY_CYCLES, -0.3),
        (4, TRIP_MINUTES, 9999.0),
        (4, TRIP_MINUTES, -1.0),
        (4, TRIPS, -3.0),
        (4, LIFETIME_CYCLES, 250_000.0),  # outside the plausible range
        (4, LIFETIME_CYCLES, 0.0),  # a dip
        (4, LIFETIME_CYCLES, 5_000.0),  # a spike that is plausible on its own, not between its neighbours
        (0, LIFETIME_CYCLES, 5_000.0),  # first reading above the ones after it
        (0, LIFETIME_CYCLES, 0.0),  # first reading the counter could not have risen from in a day
        (9, LIFETIME_CYCLES, 0.0),  # last reading below the ones before it
        (9, LIFETIME_CYCLES, 5_000.0),  # last reading the counter could not have risen to in a day
        (4, RATED_CYCLES, 300.0),  # not the battery's own
        (4, RATED_CYCLES, 0.0),
        (4, AGE_DAYS, 9.0),  # contradicts the calendar
        (4, AGE_DAYS, -5.0),
    ],
)
def test_each_glitch_is_repaired_and_counted_per_column(row, column, bad):
    raw = battery()
    clean, report = prepare_telemetry(with_value(raw, row, column, bad))

    expected, _ = prepare_telemetry(raw)
    assert_same_measures(clean, expected)
    assert clean[IMPUTED].tolist() == [day == row for day in range(10)]
    assert report.counts["glitch_values"] == 1
    assert report.counts[f"glitch_values.{column}"] == 1


def test_two_counter_dips_in_a_row_are_both_found():
    raw = with_value(with_value(battery(), 4, LIFETIME_CYCLES, 0.0), 5, LIFETIME_CYCLES, 0.0)
    clean, report = prepare_telemetry(raw)

    np.testing.assert_allclose(clean[LIFETIME_CYCLES], battery()[LIFETIME_CYCLES])
    assert report.counts["glitch_values.Lifetime_Cycles_Used"] == 2


@pytest.mark.parametrize("column", MEASURE_COLUMNS)
def test_blank_values_are_repaired_and_counted(column):
    raw = battery()
    clean, report = prepare_telemetry(with_value(raw, 4, column, np.nan))

    expected, _ = prepare_telemetry(raw)
    assert_same_measures(clean, expected)
    assert clean[IMPUTED].tolist() == [day == 4 for day in range(10)]
    assert report.counts["blank_values"] == 1 and report.counts[f"blank_values.{column}"] == 1
    assert report.counts["glitch_values"] == 0


def test_a_value_nothing_can_fill_drops_its_battery_and_says_so():
    lone = battery("0-lone", days=1)  # sorts first: what it lacks must not spill into the others
    lone.loc[0, DAILY_CYCLES] = lone.loc[0, TRIP_MINUTES] = np.nan
    clean, report = prepare_telemetry(pd.concat([battery("7"), lone, battery("8")], ignore_index=True))

    assert_clean_contract(clean)
    assert clean[BATTERY_ID].drop_duplicates().tolist() == ["7", "8"]
    np.testing.assert_allclose(clean[LIFETIME_CYCLES], np.tile(battery()[LIFETIME_CYCLES], 2))
    assert report.batteries_in == 3 and report.batteries_out == 2
    assert report.counts["batteries_dropped"] == 1
    assert report.counts["batteries_dropped.no_Daily_Cycles_Used"] == 1


def test_a_lone_blank_is_filled_from_the_fleet_ratio_when_its_battery_has_none():
    lone = battery("lone", days=1)
    lone.loc[0, DAILY_CYCLES] = np.nan
    clean, report = prepare_telemetry(pd.concat([battery("7"), lone], ignore_index=True))

    filled = clean.set_index(BATTERY_ID).loc["lone"]
    assert filled[DAILY_CYCLES] == pytest.approx(lone.loc[0, TRIP_MINUTES] * CYCLES_PER_MINUTE)
    assert report.counts["filled_from_ratio.Daily_Cycles_Used"] == 1


# --- replacements ---------------------------------------------------------------------------------------


def test_a_battery_replaced_under_the_same_id_is_split_into_a_new_series():
    old = battery("7", start="2017-03-01", days=10, counter_before=190.0, first_age=900)
    new = battery("7", start="2017-03-12", days=5, counter_before=0.0, first_age=0)
    clean, report = prepare_telemetry(pd.concat([old, new], ignore_index=True))

    assert_clean_contract(clean)
    assert clean[BATTERY_ID].value_counts().to_dict() == {"7": 10, "7#2": 5}
    second = clean[clean[BATTERY_ID] == "7#2"].reset_index(drop=True)
    assert second[DATE].iloc[0] == pd.Timestamp("2017-03-12")
    np.testing.assert_allclose(second[LIFETIME_CYCLES], new[LIFETIME_CYCLES])
    assert second[AGE_DAYS].tolist() == [0, 1, 2, 3, 4]
    assert report.counts["series_split_at_replacement"] == 1
    assert report.batteries_in == 1 and report.batteries_out == 2


def test_one_garbled_row_does_not_split_a_series():
    raw = with_value(with_value(battery(), 5, LIFETIME_CYCLES, 0.0), 5, AGE_DAYS, 0.0)
    clean, report = prepare_telemetry(raw)

    assert set(clean[BATTERY_ID]) == {"7"}
    assert report.counts["series_split_at_replacement"] == 0
    assert report.counts["glitch_values"] == 2
    expected, _ = prepare_telemetry(battery())
    assert_same_measures(clean, expected)


def test_split_series_sort_by_their_new_id():
    old = battery("1", days=3, counter_before=190.0, first_age=900)
    new = battery("1", start="2017-03-05", days=3, counter_before=0.0, first_age=0)
    clean, _ = prepare_telemetry(pd.concat([old, battery("1!", days=2), new], ignore_index=True))

    assert clean[BATTERY_ID].drop_duplicates().tolist() == ["1", "1!", "1#2"]
    assert_clean_contract(clean)


# --- the whole contract ---------------------------------------------------------------------------------


def test_a_messy_shuffled_fleet_meets_the_clean_frame_contract():
    first = split_into_twelve_hour_rows(battery("10", days=6))
    second = battery("2", days=12).drop(index=[3, 7, 8])
    second = with_value(second.reset_index(drop=True), 5, TRIPS, -1.0)
    third = battery("3", days=4)
    third.loc[2, DAILY_CYCLES] = np.nan
    raw = pd.concat([first, second, third, second.iloc[[1]]], ignore_index=True)
    shuffled = raw.sample(frac=1.0, random_state=1).reset_index(drop=True)

    clean, report = prepare_telemetry(shuffled)

    assert_clean_contract(clean)
    pd.testing.assert_frame_equal(clean, prepare_telemetry(raw)[0])
    assert clean[BATTERY_ID].drop_duplicates().tolist() == ["10", "2", "3"]
    assert report.rows_out == 6 + 12 + 4 and report.batteries_out == 3


@pytest.mark.parametrize(
    "raw",
    [
        battery(),
        pd.concat([battery("8", start="2017-02-11", days=30), battery("10", counter_before=0.0, first_age=0)]),
        battery().assign(**{DATE: battery()[DATE] + pd.Timedelta(hours=13)}),  # one report a day, not at midnight
        simulate_fleet(12, "2016-01-01", "2016-03-31", seed=4).truth,
        battery().iloc[:0],
    ],
    ids=["one battery", "two batteries", "afternoon reports", "simulated fleet", "empty"],
)
def test_telemetry_that_needs_no_repair_skips_the_repairs_and_ends_the_same(raw, monkeypatch):
    """The fast path (a scoring request is usually clean daily rows) must give the repair path's frame and report."""
    with monkeypatch.context() as repairs:
        repairs.setattr(preparation, "_repaired_grid", lambda rows, counts: pytest.fail("took the repair path"))
        fast, fast_report = prepare_telemetry(raw)
    monkeypatch.setattr(preparation, "_needs_no_repair", lambda rows: False)
    repaired, report = prepare_telemetry(raw)

    pd.testing.assert_frame_equal(fast, repaired, check_exact=True)
    assert fast_report.to_dict() == report.to_dict() and list(fast_report.counts) == list(report.counts)


def test_the_report_is_json_ready_and_renders_as_a_table():
    raw = battery()
    _, report = prepare_telemetry(pd.concat([raw, raw.iloc[[2]]], ignore_index=True))

    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["rows_in"] == 11 and as_dict["rows_out"] == 10
    assert as_dict["counts"]["exact_duplicates"] == 1
    table = report.to_markdown()
    assert "| exact_duplicates | 1 |" in table and "| rows in | 11 |" in table


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw.drop(columns=[LIFETIME_CYCLES]), "missing column(s): Lifetime_Cycles_Used"),
        (lambda raw: raw.assign(Date=raw[DATE].dt.strftime("%Y-%m-%d")), "column Date: expected"),
        (lambda raw: with_value(raw, 2, BATTERY_ID, " "), "column Battery_ID: empty id on row(s) 2"),
        (lambda raw: with_value(raw, 3, CAR_ID, None), "column Car_ID: empty id on row(s) 3"),
        (lambda raw: raw.assign(Number_Of_Trips="5"), "column Number_Of_Trips: expected numbers"),
    ],
)
def test_input_that_is_not_typed_telemetry_is_refused_with_the_column_named(change, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare_telemetry(change(battery()))


# --- a simulated fleet ----------------------------------------------------------------------------------


def test_a_simulated_fleet_is_recovered_close_to_its_truth():
    fleet = simulate_fleet(120, "2014-09-01", "2015-08-31", seed=0)  # 12-hour rows, then daily
    assert fleet.planted["silent_replacements"] >= 1  # this seed plants some, so the split is exercised
    clean, report = prepare_telemetry(fleet.telemetry)

    assert_clean_contract(clean)
    planted, counts = fleet.planted, report.counts
    for problem in ("exact_duplicates", "near_duplicates", "blank_values"):
        assert counts[problem] == planted[problem], problem
    assert counts["twelve_hour_rows_merged"] == planted["twelve_hour_rows"]
    assert counts["series_split_at_replacement"] == planted["silent_replacements"]
    # A zero counter on a battery's very first reading can pass for a young battery; nothing else may.
    assert planted["glitches"] * 0.99 <= counts["glitch_values"] <= planted["glitches"]
    # Days missing at the start or end of a battery's reports are not between reports: nothing to fill.
    assert planted["missing_days"] * 0.9 <= counts["missing_days_filled"] <= planted["missing_days"]
    assert counts["batteries_dropped"] == 0

    # Our "<id>#2" is the battery installed second under a reported id.
    batteries = fleet.batteries.sort_values(["Reported_ID", "Installed"])
    life = batteries.groupby("Reported_ID").cumcount() + 1
    our_id = batteries["Reported_ID"].where(life == 1, batteries["Reported_ID"] + "#" + life.astype(str))
    real_id = clean[BATTERY_ID].map(dict(zip(our_id, batteries[BATTERY_ID], strict=True)))
    assert real_id.notna().all()
    both = clean.assign(**{BATTERY_ID: real_id}).merge(
        fleet.truth, on=[BATTERY_ID, DATE], how="left", suffixes=("", "_truth"), validate="one_to_one"
    )
    assert both[f"{DAILY_CYCLES}_truth"].notna().all()
    error = {column: (both[column] - both[f"{column}_truth"]).abs() for column in MEASURE_COLUMNS}
    reported = ~both[IMPUTED]
    assert (error[DAILY_CYCLES][reported] < 1e-3).all()
    assert (error[LIFETIME_CYCLES][reported] < 1e-2).all()
    assert (error[DAILY_CYCLES] < 0.01).mean() > 0.95
    assert (error[AGE_DAYS] == 0).all() and (error[RATED_CYCLES] == 0).all()
    # Over a gap the counter's rise is spread evenly: off by day-to-day noise inside, never for long.
    assert error[LIFETIME_CYCLES].max() < 2.0
