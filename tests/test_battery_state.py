"""Battery state in Table storage (real Azurite): windows keyed by day, trimmed, ETag-guarded."""

from __future__ import annotations

import json
import threading
import uuid

import numpy as np
import pandas as pd
import pytest
from azure.data.tables import TableClient, TableServiceClient

from shared.adapters import battery_state
from shared.adapters.battery_state import (
    StateCache,
    StateConflictError,
    read_windows,
    state_keys,
    update_states,
)
from shared.core.battery_window import histories_for_request, merge_windows
from shared.core.telemetry import AGE_DAYS, BATTERY_ID, CAR_ID, COLUMNS, DAILY_CYCLES, DATE, RATED_CYCLES

W = 30


def days(battery: str, first: str, count: int, *, installed: str = "2015-09-01", cycles: float = 0.16,
         car: str | None = None) -> pd.DataFrame:  # fmt: skip
    """`count` consecutive daily records of one battery, typed as parse_events returns them."""
    dates = pd.date_range(first, periods=count, freq="D")
    age = (dates - pd.Timestamp(installed)).days.to_numpy(float)
    daily = np.full(count, cycles)
    return pd.DataFrame({
        DATE: dates.astype("datetime64[ns]"),
        BATTERY_ID: battery,
        CAR_ID: car or f"CAR-{battery}",
        AGE_DAYS: age,
        "Number_Of_Trips": 5.0,
        "Daily_Trip_Duration": 65.0,
        DAILY_CYCLES: daily,
        "Lifetime_Cycles_Used": 100 + np.cumsum(daily),
        RATED_CYCLES: 200.0,
    })[COLUMNS].astype({BATTERY_ID: object, CAR_ID: object})  # fmt: skip


def window_of(windows: pd.DataFrame, battery: str) -> pd.DataFrame:
    """One battery's rows of a windows frame."""
    return windows[windows[BATTERY_ID] == battery].reset_index(drop=True)


def dates_of(window: pd.DataFrame) -> list[str]:
    return window[DATE].dt.strftime("%Y-%m-%d").tolist()


@pytest.fixture
def table(storage_connection) -> TableClient:
    """A fresh, not yet created table: update_states creates it on first use."""
    service = TableServiceClient.from_connection_string(storage_connection)
    return service.get_table_client(f"state{uuid.uuid4().hex[:12]}")


def etag(table: TableClient, battery: str) -> str:
    return table.get_entity(*state_keys(battery)).metadata["etag"]


def test_the_first_batch_creates_each_battery_window(table):
    batch = pd.concat([days("1", "2017-03-01", 3), days("2", "2017-03-02", 2)], ignore_index=True)

    windows = update_states(table, batch, W)

    assert list(windows.columns) == COLUMNS
    assert windows[BATTERY_ID].tolist() == ["1", "1", "1", "2", "2"], "sorted by battery, then day"
    assert dates_of(window_of(windows, "1")) == ["2017-03-01", "2017-03-02", "2017-03-03"]
    pd.testing.assert_frame_equal(read_windows(table, ["2", "1"]), windows)


def test_a_repeated_day_replaces_and_an_identical_repeat_writes_nothing(table):
    batch = days("7", "2017-03-01", 3)
    update_states(table, batch, W)
    before = etag(table, "7")

    update_states(table, batch.iloc[[2]], W)
    assert etag(table, "7") == before, "an identical redelivery must not even write"

    corrected = batch.iloc[[2]].assign(**{DAILY_CYCLES: 0.5})
    window = window_of(update_states(table, corrected, W), "7")
    assert dates_of(window) == ["2017-03-01", "2017-03-02", "2017-03-03"]
    assert window[DAILY_CYCLES].tolist() == [0.16, 0.16, 0.5], "the day is replaced, not counted twice"


def test_an_out_of_order_day_is_inserted_in_order(table):
    batch = days("9", "2017-03-01", 5)
    update_states(table, batch.drop(index=2), W)

    window = window_of(update_states(table, batch.iloc[[2]], W), "9")

    assert dates_of(window) == [f"2017-03-0{d}" for d in range(1, 6)]
    assert window_of(read_windows(table, ["9"]), "9")[AGE_DAYS].is_monotonic_increasing


def test_the_window_keeps_only_the_last_w_days_and_ignores_days_older_than_that(table):
    update_states(table, days("3", "2017-01-01", 20), W)
    window = window_of(update_states(table, days("3", "2017-01-21", 20), W), "3")
    assert len(window) == W
    assert dates_of(window)[0] == "2017-01-11" and dates_of(window)[-1] == "2017-02-09"

    stale = days("3", "2017-01-05", 1)  # 35 days before the newest day: outside the window
    assert dates_of(window_of(update_states(table, stale, W), "3")) == dates_of(window)


def test_a_battery_reset_under_the_same_id_starts_a_new_window(table):
    update_states(table, days("5", "2017-03-01", 10), W)

    window = window_of(update_states(table, days("5", "2017-03-11", 2, installed="2017-03-11"), W), "5")

    assert dates_of(window) == ["2017-03-11", "2017-03-12"]
    assert window[AGE_DAYS].tolist() == [0, 1]


def test_keys_survive_characters_tables_do_not_allow(table):
    battery = "PACK/7#A?\\x"
    update_states(table, days(battery, "2017-03-01", 2), W)

    assert dates_of(window_of(read_windows(table, [battery]), battery)) == ["2017-03-01", "2017-03-02"]


@pytest.mark.parametrize("battery", ["😀" * 256, "é" * 256, "!" * 256])
def test_an_id_whose_encoded_key_is_too_long_for_a_table_key_is_keyed_by_its_hash(table, battery):
    update_states(table, days(battery, "2017-03-01", 2), W)

    _, row = state_keys(battery)
    assert row.startswith("%sha256-") and len(row) <= 512
    assert dates_of(window_of(read_windows(table, [battery]), battery)) == ["2017-03-01", "2017-03-02"]
    assert state_keys("CAR 17/#?")[1] == "CAR%2017%2F%23%3F", "an id whose encoding fits keeps its key"


def test_many_batteries_go_through_chunked_queries_and_transactions(table, monkeypatch):
    # Small limits, so a small fleet needs several queries and transactions per shard.
    monkeypatch.setattr(battery_state, "_KEYS_PER_QUERY", 2)
    monkeypatch.setattr(battery_state, "_OPS_PER_TRANSACTION", 3)
    batch = pd.concat([days(f"B{i:03d}", "2017-03-01", 2) for i in range(60)], ignore_index=True)

    first = update_states(table, batch, W)
    second = update_states(table, days("B000", "2017-03-03", 1), W)

    stored = read_windows(table, [f"B{i:03d}" for i in range(60)])
    assert first[BATTERY_ID].nunique() == stored[BATTERY_ID].nunique() == 60
    days_stored = stored.groupby(BATTERY_ID).size()
    assert days_stored.drop("B000").eq(2).all() and days_stored["B000"] == 3
    assert len(second) == 3, "only the battery touched comes back"


class RivalAfterRead:
    """A real TableClient after each of whose reads another client updates the same battery.

    This makes the race deterministic: we have read the entity, then the rival writes, then we write
    with an ETag that no longer matches.
    """

    def __init__(self, table: TableClient, rival: TableClient, rival_batches: list[pd.DataFrame]):
        self.table, self.rival, self.rival_batches = table, rival, list(rival_batches)
        self.reads = 0

    def __getattr__(self, name):  # everything but query_entities is the real client's
        return getattr(self.table, name)

    def query_entities(self, *args, **kwargs):
        found = list(self.table.query_entities(*args, **kwargs))
        self.reads += 1
        if self.rival_batches:
            update_states(self.rival, self.rival_batches.pop(0), W)
        return found


def test_two_writers_racing_on_a_battery_both_land_through_the_etag_retry(table, storage_connection):
    update_states(table, days("42", "2017-03-01", 2), W)
    rival = TableClient.from_connection_string(storage_connection, table.table_name)
    racing = RivalAfterRead(table, rival, [days("42", "2017-03-03", 1)])

    window = window_of(update_states(racing, days("42", "2017-03-04", 1), W), "42")

    assert racing.reads == 2, "the first write conflicted, so the battery was read again"
    assert dates_of(window) == ["2017-03-01", "2017-03-02", "2017-03-03", "2017-03-04"]
    assert dates_of(window_of(read_windows(table, ["42"]), "42")) == dates_of(window)


def test_two_new_battery_writers_racing_on_create_both_land(table, storage_connection):
    rival = TableClient.from_connection_string(storage_connection, table.table_name)
    rival.create_table()
    racing = RivalAfterRead(table, rival, [days("43", "2017-03-01", 1)])

    window = window_of(update_states(racing, days("43", "2017-03-02", 1), W), "43")

    assert dates_of(window) == ["2017-03-01", "2017-03-02"]


def test_a_battery_that_keeps_changing_gives_up_after_the_bounded_retries(table, storage_connection):
    update_states(table, days("44", "2017-03-01", 1), W)
    rival = TableClient.from_connection_string(storage_connection, table.table_name)
    racing = RivalAfterRead(table, rival, [days("44", f"2017-03-0{d}", 1) for d in range(2, 9)])

    with pytest.raises(StateConflictError, match=r"1 battery state.* 3 attempts: 44"):
        update_states(racing, days("44", "2017-03-20", 1), W, max_attempts=3)

    assert "2017-03-20" not in dates_of(window_of(read_windows(table, ["44"]), "44")), "nothing half-written"


class CountingReads:
    """A real TableClient that counts the batteries it was asked to read."""

    def __init__(self, table: TableClient):
        self.table, self.queries = table, 0

    def __getattr__(self, name):
        return getattr(self.table, name)

    def query_entities(self, *args, **kwargs):
        self.queries += 1
        return self.table.query_entities(*args, **kwargs)


def test_with_a_cache_a_steady_batch_reads_nothing_and_writes_on_the_cached_etag(table):
    cache = StateCache()
    counting = CountingReads(table)
    update_states(counting, days("50", "2017-03-01", 2), W, cache=cache)
    first_reads = counting.queries

    window = window_of(update_states(counting, days("50", "2017-03-03", 1), W, cache=cache), "50")

    assert first_reads == 1 and counting.queries == 1, "the second batch was merged into the cached state"
    assert dates_of(window) == ["2017-03-01", "2017-03-02", "2017-03-03"]
    assert dates_of(window_of(read_windows(table, ["50"]), "50")) == dates_of(window)


def test_a_write_by_another_process_since_the_cache_is_detected_and_merged(table, storage_connection):
    cache = StateCache()
    counting = CountingReads(table)
    update_states(counting, days("51", "2017-03-01", 2), W, cache=cache)
    other_process = TableClient.from_connection_string(storage_connection, table.table_name)
    update_states(other_process, days("51", "2017-03-03", 1), W)  # the partition moved, for a day

    window = window_of(update_states(counting, days("51", "2017-03-04", 1), W, cache=cache), "51")

    assert counting.queries == 2, "the cached ETag failed, so the battery was read again"
    assert dates_of(window) == ["2017-03-01", "2017-03-02", "2017-03-03", "2017-03-04"], "no day lost"
    assert dates_of(window_of(read_windows(table, ["51"]), "51")) == dates_of(window)
    update_states(counting, days("51", "2017-03-05", 1), W, cache=cache)
    assert counting.queries == 2, "the cache holds the merged state again"


def test_a_cached_battery_whose_table_was_deleted_is_written_again(table):
    cache = StateCache()
    update_states(table, days("52", "2017-03-01", 2), W, cache=cache)
    table.delete_table()

    window = window_of(update_states(table, days("52", "2017-03-03", 1), W, cache=cache), "52")

    assert dates_of(window) == ["2017-03-03"], "the stored window went with the table: only the new day"
    assert dates_of(window_of(read_windows(table, ["52"]), "52")) == ["2017-03-03"]


def test_the_cache_keeps_the_most_recently_used_batteries_per_table():
    cache = StateCache(max_batteries=2)
    state = battery_state.StoredState({"Battery_ID": "x"}, np.zeros((1, 6)), "etag-1")
    cache.put("table-a", {"1": state, "2": state})
    cache.get("table-a", ["1"])  # 1 is now more recent than 2
    cache.put("table-a", {"3": state})

    assert set(cache.get("table-a", ["1", "2", "3"])) == {"1", "3"}
    assert cache.get("table-b", ["1"]) == {}, "another table's battery is another battery"
    cache.discard("table-a", ["1"])
    assert set(cache.get("table-a", ["1", "3"])) == {"3"}


def test_concurrent_writers_in_threads_lose_no_day(table, storage_connection):
    update_states(table, days("77", "2017-03-01", 1), W)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(first_day: int) -> None:
        client = TableClient.from_connection_string(storage_connection, table.table_name)
        start.wait()
        try:
            for day in range(first_day, 15, 2):
                update_states(client, days("77", f"2017-03-{day:02d}", 1), W, max_attempts=20)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(first,)) for first in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(window_of(read_windows(table, ["77"]), "77")) == 14


def test_a_240_day_window_fits_table_limits_with_room_to_spare(table):
    rng = np.random.default_rng(1)
    batch = days("240", "2016-07-01", 240)
    batch[DAILY_CYCLES] = rng.uniform(0.05, 0.3, 240)  # full-precision floats: the worst case for JSON
    batch["Daily_Trip_Duration"] = rng.uniform(20, 120, 240)
    batch["Lifetime_Cycles_Used"] = 100 + batch[DAILY_CYCLES].cumsum()

    update_states(table, batch, 240)

    entity = table.get_entity(*state_keys("240"))
    sizes = {key: len(str(value)) for key, value in entity.items()}
    # Characters; the service counts strings as UTF-16, two bytes each.
    assert max(sizes.values()) < 8 * 1024, "each property far under the 64 KiB string limit"
    assert sum(sizes.values()) < 20 * 1024, "the whole entity about 34 KiB, far under 1 MiB"
    assert len(entity) < 20, "a handful of properties, far under 255"
    pd.testing.assert_frame_equal(window_of(read_windows(table, ["240"]), "240"), batch)


def test_the_window_limit_is_checked():
    with pytest.raises(ValueError, match="window_days must be between 1 and 1000"):
        update_states(None, days("1", "2017-03-01", 1), 1001)


def test_merge_is_keyed_by_battery_and_day_for_the_whole_fleet_at_once():
    stored = pd.concat([days("a", "2017-03-01", 3), days("b", "2017-03-01", 3)], ignore_index=True)
    incoming = pd.concat([days("b", "2017-03-02", 1, cycles=0.9), days("a", "2017-03-04", 1),
                          days("c", "2017-03-01", 1)], ignore_index=True)  # fmt: skip

    merged = merge_windows(stored, incoming, window_days=3)

    assert merged.groupby(BATTERY_ID).size().to_dict() == {"a": 3, "b": 3, "c": 1}
    b = merged[merged[BATTERY_ID] == "b"]
    assert b[DAILY_CYCLES].tolist() == [0.16, 0.9, 0.16]
    assert dates_of(merged[merged[BATTERY_ID] == "a"]) == ["2017-03-02", "2017-03-03", "2017-03-04"]


def test_histories_for_request_follow_the_scoring_contract():
    old_car = days("17", "2017-03-18", 1, installed="2013-01-01", car="CAR-OLD")
    window = pd.concat([old_car, days("17", "2017-03-19", 1, installed="2013-01-01", car="CAR-00017")],
                       ignore_index=True)  # fmt: skip
    window.loc[0, "Daily_Trip_Duration"] = np.nan

    items = histories_for_request(pd.concat([window, days("18", "2017-03-19", 1)], ignore_index=True))

    assert [item["Battery_ID"] for item in items] == ["17", "18"]
    first = items[0]
    assert first["Car_ID"] == "CAR-00017" and first["Battery_Rated_Cycles"] == 200
    assert isinstance(first["Battery_Rated_Cycles"], int)
    assert first["history"][1] == {
        "Date": "2017-03-19", "Battery_Age_Days": 1538, "Number_Of_Trips": 5, "Daily_Trip_Duration": 65.0,
        "Daily_Cycles_Used": 0.16, "Lifetime_Cycles_Used": pytest.approx(100.16),
    }  # fmt: skip
    assert first["history"][0]["Daily_Trip_Duration"] is None
    json.dumps({"data": items}, allow_nan=False)  # strict JSON: no NaN anywhere
    assert len(items[1]["history"]) == 1


def test_an_empty_batch_touches_nothing(table):
    windows = update_states(table, days("1", "2017-03-01", 0), W)

    assert windows.empty and list(windows.columns) == COLUMNS
    assert histories_for_request(windows) == []
