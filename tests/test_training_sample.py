"""The nightly retraining's bounded input: the trailing period and the stratified sample of batteries.

The sample is tested on made-up batteries whose stratum is plain (a battery at 199 of 200 cycles is near
end of life, one at 20 of 200 is new); the trailing period and the job through the real function_app on
Azurite, with a small simulated fleet archived the way the streaming path archives it.
"""

from __future__ import annotations

from datetime import date
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from _services import LAST_DAY, app_harness
from azure.storage.blob import BlobServiceClient

from shared.adapters.archive import TELEMETRY_CONTAINER, archive_telemetry
from shared.adapters.registry import ModelRegistry
from shared.config.settings import MIN_RETRAIN_HISTORY_DAYS, SettingsError, load_settings
from shared.core.telemetry import BATTERY_ID, COLUMNS, DATE
from shared.devtools.azurite import free_port
from shared.devtools.fleet_simulator import simulate_fleet
from shared.devtools.main_job import acceptable_records
from shared.models import backtest
from shared.models.training_sample import (
    NEAR_EOL_STRATUM,
    BatteryUsage,
    battery_profile,
    sample_batteries,
)

RATED = 200


def fleet_rows(lifetimes: dict[str, float], daily: float = 0.1, days: int = 3) -> pd.DataFrame:
    """`days` daily rows per battery ending at the given lifetime counter, `daily` cycles a day."""
    rows = []
    for battery, lifetime in lifetimes.items():
        for k in range(days):
            rows.append({DATE: pd.Timestamp("2016-03-01") + pd.Timedelta(days=k), BATTERY_ID: battery,
                         "Car_ID": f"CAR-{battery}", "Battery_Age_Days": 100 + k, "Number_Of_Trips": 5,
                         "Daily_Trip_Duration": 60.0, "Daily_Cycles_Used": daily,
                         "Lifetime_Cycles_Used": lifetime - daily * (days - 1 - k),
                         "Battery_Rated_Cycles": RATED})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def mixed_fleet() -> tuple[pd.DataFrame, set[str], dict[int, set[str]]]:
    """30 near end of life (within days of rated life), and 400 / 200 / 100 / 300 batteries in the four
    remaining-share strata 1-4 (S1: 30 cycles left, 300 days); returns the rows, the near-EOL ids and the
    others by stratum."""
    near = {f"N{k:03d}": RATED - 0.5 * k for k in range(30)}  # 0 to 14.5 cycles left: ≤ 145 days at 0.1 a day
    strata = {1: (400, 0.15), 2: (200, 0.4), 3: (100, 0.6), 4: (300, 0.9)}  # (count, remaining share)
    others = {s: {f"S{s}-{k:03d}": RATED * (1 - share) for k in range(count)} for s, (count, share) in strata.items()}
    lifetimes = {**near, **{b: v for group in others.values() for b, v in group.items()}}
    return fleet_rows(lifetimes), set(near), {s: set(group) for s, group in others.items()}


def test_the_profile_puts_each_battery_in_its_stratum():
    raw, near, others = mixed_fleet()
    stratum = battery_profile(raw)["stratum"]
    assert set(stratum.index[stratum == NEAR_EOL_STRATUM]) == near
    for value, batteries in others.items():
        assert set(stratum.index[stratum == value]) == batteries


def test_near_end_of_life_counts_in_days_of_the_batterys_own_use_on_either_side_of_rated_life():
    raw = pd.concat([fleet_rows({"just-past": RATED + 3, "long-past": RATED + 50}),  # 30 and 500 days past
                     fleet_rows({"heavy": 100}, daily=1.0)])  # 100 cycles left at 1 a day: 100 days  # fmt: skip
    assert battery_profile(raw)["stratum"].to_dict() == {"heavy": NEAR_EOL_STRATUM, "just-past": NEAR_EOL_STRATUM,
                                                         "long-past": 0}  # fmt: skip


@pytest.mark.parametrize("cap", [100, 250, 531, 999])
def test_every_near_eol_battery_is_kept_and_the_rest_in_proportion_never_over_the_cap(cap):
    raw, near, others = mixed_fleet()
    sample = sample_batteries(raw, cap)
    kept = set(sample.battery_ids)
    assert len(kept) == len(sample.battery_ids) == cap
    assert near <= kept
    share = (cap - len(near)) / sum(len(group) for group in others.values())
    for batteries in others.values():
        assert abs(len(kept & batteries) - share * len(batteries)) < 1  # largest-remainder rounding
    assert sample.record() == {"batteries_in_period": 1030, "batteries_trained": cap, "sampled": True,
                               "near_eol": 30, "near_eol_kept": 30, "max_batteries": cap, "seed": 0}  # fmt: skip


def test_when_more_batteries_are_near_eol_than_the_cap_the_cap_wins():
    raw, near, _ = mixed_fleet()
    sample = sample_batteries(raw, 10)
    assert len(sample.battery_ids) == 10 and set(sample.battery_ids) <= near
    assert (sample.near_eol, sample.near_eol_kept) == (30, 10)


def test_a_fleet_within_the_cap_is_trained_whole():
    raw, _, _ = mixed_fleet()
    sample = sample_batteries(raw, 5000)
    assert not sample.sampled and len(sample.battery_ids) == 1030


def test_the_same_fleet_gives_the_same_sample_whatever_the_row_order_and_another_seed_another_sample():
    raw, _, _ = mixed_fleet()
    first = sample_batteries(raw, 300)
    shuffled = raw.sample(frac=1.0, random_state=7).reset_index(drop=True)
    assert np.array_equal(sample_batteries(shuffled, 300).battery_ids, first.battery_ids)
    assert np.array_equal(sample_batteries(raw.assign(**{BATTERY_ID: raw[BATTERY_ID].astype("category")}), 300)
                          .battery_ids, first.battery_ids)  # fmt: skip
    assert not np.array_equal(sample_batteries(raw, 300, seed=1).battery_ids, first.battery_ids)


def test_a_battery_stays_in_the_sample_when_a_battery_of_another_stratum_joins_the_fleet():
    """The hash decides within a stratum: a newcomer elsewhere moves no one (up to the rounding of quotas)."""
    raw, _, _ = mixed_fleet()
    before = set(sample_batteries(raw, 531).battery_ids)
    grown = pd.concat([raw, fleet_rows({"NEW": RATED * 0.9})], ignore_index=True)
    after = set(sample_batteries(grown, 532).battery_ids)
    assert len(before - after) <= 1


def test_usage_gathered_a_few_days_at_a_time_places_every_battery_as_the_whole_period_does():
    raw, _, _ = mixed_fleet()
    raw = pd.concat([raw, raw.iloc[::7].assign(Daily_Cycles_Used=9.0)], ignore_index=True)  # duplicates, glitches
    usage = BatteryUsage()
    for _, day in raw.groupby(DATE):  # every battery spread over three chunks
        usage.add(day)
    pd.testing.assert_frame_equal(usage.profile(), battery_profile(raw))
    assert np.array_equal(sample_batteries(usage, 300).battery_ids, sample_batteries(raw, 300).battery_ids)
    assert (usage.first_record, usage.last_record) == (raw[DATE].min(), raw[DATE].max())


def test_the_settings_bound_the_retraining_and_refuse_what_cannot_train():
    settings = load_settings({})
    assert (settings.retrain_history_days, settings.retrain_max_batteries) == (486, 1000)
    assert load_settings({"RETRAIN_HISTORY_DAYS": "300", "RETRAIN_MAX_BATTERIES": "50"}).retrain_max_batteries == 50
    with pytest.raises(SettingsError, match="RETRAIN_HISTORY_DAYS must be 237 or more"):
        load_settings({"RETRAIN_HISTORY_DAYS": "200"})
    with pytest.raises(SettingsError, match="RETRAIN_MAX_BATTERIES must be 1 or more"):
        load_settings({"RETRAIN_MAX_BATTERIES": "0"})
    assert MIN_RETRAIN_HISTORY_DAYS == backtest.MIN_HISTORY_DAYS  # spelled out in settings, kept equal here


# --- through the real function_app on Azurite --------------------------------------------------------

HISTORY_DAYS, MAX_BATTERIES = 300, 40
FIRST_DAY = "2015-01-01"  # 435 days before LAST_DAY: the oldest 135 are outside the period


@pytest.fixture(scope="module")
def small_fleet():
    fleet = simulate_fleet(60, FIRST_DAY, LAST_DAY, seed=5)
    return fleet.telemetry[acceptable_records(fleet.telemetry)]


def test_nightly_retrain_reads_only_the_trailing_period_and_trains_on_the_sample(
        storage_connection, monkeypatch, tmp_path, small_fleet):  # fmt: skip
    with app_harness(storage_connection, f"http://127.0.0.1:{free_port()}/score", monkeypatch, tmp_path) as harness:
        services = harness.configure(RETRAIN_HISTORY_DAYS=str(HISTORY_DAYS), RETRAIN_MAX_BATTERIES=str(MAX_BATTERIES))
        archive_telemetry(services.blobs, small_fleet, harness.clock(), batch_id="history")
        downloaded = []

        def count_downloads(response) -> None:
            request, marker = response.http_request, f"/{TELEMETRY_CONTAINER}/"
            if request.method == "GET" and marker in request.url and "comp=list" not in request.url:
                downloaded.append(unquote(request.url.split(marker, 1)[1].split("?", 1)[0]))

        services.blobs = BlobServiceClient.from_connection_string(storage_connection,
                                                                  raw_response_hook=count_downloads)  # fmt: skip
        run = harness.host.fire_timer("nightly_retrain_timer")
        assert run.succeeded, run.error

    since = date(2015, 5, 16)  # the 300 days up to LAST_DAY 2016-03-10
    days_read = sorted({name.split("/", 1)[0].removeprefix("date=") for name in downloaded})
    assert days_read[0] == since.isoformat() and days_read[-1] == LAST_DAY
    archived_days = small_fleet[DATE].dt.normalize()
    assert len(days_read) == archived_days[archived_days >= pd.Timestamp(since)].nunique()

    metadata = ModelRegistry(services.blobs).champion_metadata()
    in_period = small_fleet.loc[small_fleet[DATE] >= pd.Timestamp(since), BATTERY_ID].nunique()
    expected = sample_batteries(small_fleet[small_fleet[DATE] >= pd.Timestamp(since)], MAX_BATTERIES)
    assert 0 < expected.near_eol < MAX_BATTERIES < in_period  # some near end of life, all kept; the rest sampled
    assert metadata["training_data"] == {
        "period": {"history_days": HISTORY_DAYS, "since": since.isoformat(), "first_record": since.isoformat(),
                   "last_record": LAST_DAY},
        "sample": {"batteries_in_period": in_period, "batteries_trained": MAX_BATTERIES, "sampled": True,
                   "near_eol": expected.near_eol, "near_eol_kept": expected.near_eol, "max_batteries": MAX_BATTERIES,
                   "seed": 0},
    }  # fmt: skip
    assert metadata["data_range"]["start"] >= since.isoformat()
