"""Battery windows: what the batch path, the endpoint and training all score from."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from shared.core.telemetry import COLUMNS, InputError
from shared.core.windows import build_history, build_windows


def daily_rows(
    battery: str,
    car: str,
    start: str,
    cycles: list[float],
    lifetime_start: float = 100.0,
    rated: int = 200,
    age_start: int = 500,
) -> pd.DataFrame:
    """A clean daily frame for one battery: day i uses cycles[i], minutes = cycles / 0.0025, 5 trips."""
    cycles = np.asarray(cycles, dtype=np.float64)
    return pd.DataFrame({
        "Date": pd.date_range(start, periods=len(cycles), freq="D"),
        "Battery_ID": battery, "Car_ID": car,
        "Battery_Age_Days": age_start + np.arange(len(cycles)),
        "Number_Of_Trips": 5, "Daily_Trip_Duration": cycles / 0.0025, "Daily_Cycles_Used": cycles,
        "Lifetime_Cycles_Used": lifetime_start + np.cumsum(cycles), "Battery_Rated_Cycles": rated,
    })[COLUMNS]  # fmt: skip


@pytest.fixture
def two_batteries() -> pd.DataFrame:
    a = daily_rows("A", "CAR-1", "2017-01-01", [0.1] * 10 + [0.2] * 10)  # last report 2017-01-20
    b = daily_rows("B", "CAR-2", "2017-01-11", [0.3] * 5, lifetime_start=10.0)  # 2017-01-11 .. 01-15
    return pd.concat([a, b], ignore_index=True)


def test_without_as_of_each_battery_ends_on_its_own_last_report(two_batteries):
    windows = build_windows(two_batteries, window_days=14)

    assert list(windows.battery_id) == ["A", "B"]
    assert list(windows.as_of) == [np.datetime64("2017-01-20"), np.datetime64("2017-01-15")]
    np.testing.assert_allclose(windows.daily_cycles[0], [0.1] * 4 + [0.2] * 10)
    np.testing.assert_allclose(windows.daily_cycles[1, -5:], 0.3)
    assert np.isnan(windows.daily_cycles[1, :-5]).all()  # before B's first report: unknown
    np.testing.assert_allclose(windows.lifetime_cycles, [100 + 3.0, 10 + 1.5])
    np.testing.assert_allclose(windows.age_days, [519, 504])
    np.testing.assert_allclose(windows.trip_minutes[0, -1], 80.0)


def test_with_as_of_every_battery_is_aligned_there_and_later_rows_are_ignored(two_batteries):
    windows = build_windows(two_batteries, as_of=date(2017, 1, 18), window_days=14)

    assert (windows.as_of == np.datetime64("2017-01-18")).all()
    # A: rows after the 18th are not seen.
    np.testing.assert_allclose(windows.daily_cycles[0], [0.1] * 6 + [0.2] * 8)
    np.testing.assert_allclose(windows.lifetime_cycles[0], 100 + 1.0 + 0.2 * 8)
    # B stopped on the 15th: 3 unknown days, and its counter and age carried forward at its recent rate.
    assert np.isnan(windows.daily_cycles[1, -3:]).all()
    np.testing.assert_allclose(windows.daily_cycles[1, -8:-3], 0.3)
    np.testing.assert_allclose(windows.lifetime_cycles[1], 11.5 + 3 * 0.3)
    np.testing.assert_allclose(windows.age_days[1], 504 + 3)


def test_as_of_before_a_battery_existed_leaves_it_out(two_batteries):
    windows = build_windows(two_batteries, as_of=date(2017, 1, 5), window_days=7)

    assert list(windows.battery_id) == ["A"]
    np.testing.assert_allclose(windows.daily_cycles[0, -5:], 0.1)
    assert np.isnan(windows.daily_cycles[0, :2]).all()


def test_row_order_does_not_matter(two_batteries):
    shuffled = two_batteries.sample(frac=1.0, random_state=0)
    expected, got = build_windows(two_batteries, window_days=10), build_windows(shuffled, window_days=10)
    order = np.argsort(got.battery_id)
    np.testing.assert_array_equal(got.battery_id[order], expected.battery_id)
    np.testing.assert_allclose(got.daily_cycles[order], expected.daily_cycles)


def test_repeated_battery_day_is_an_error_naming_it(two_batteries):
    repeated = pd.concat([two_batteries, two_batteries.iloc[[3]]], ignore_index=True)
    with pytest.raises(InputError, match=r"repeated \(Battery_ID, Date\).*'A' on 2017-01-04"):
        build_windows(repeated)


def test_missing_column_is_an_error_naming_it(two_batteries):
    with pytest.raises(InputError, match="Daily_Trip_Duration"):
        build_windows(two_batteries.drop(columns="Daily_Trip_Duration"))


def test_history_windows_equal_the_batch_windows_at_the_same_day(two_batteries):
    """Training slices windows out of the history; they must be exactly what scoring would build."""
    history = build_history(two_batteries)
    day = int((np.datetime64("2017-01-14") - history.first_day).astype(int))
    rows = np.flatnonzero(history.reported()[:, day])
    sliced = history.windows_at(day, rows, window_days=14)
    built = build_windows(two_batteries, as_of=date(2017, 1, 14), window_days=14)

    np.testing.assert_array_equal(sliced.battery_id, built.battery_id)
    for name in ("daily_cycles", "trip_minutes", "trips", "lifetime_cycles", "age_days", "rated_cycles"):
        np.testing.assert_allclose(getattr(sliced, name), getattr(built, name), err_msg=name)
    np.testing.assert_array_equal(sliced.as_of, built.as_of)
