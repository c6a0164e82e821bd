"""A small simulated fleet and a model trained on it, shared by the endpoint tests and built once per run.

Training takes seconds even for a small fleet, so the result is cached here (per process) rather than in
a fixture per test module. Dates start in 2015, after the simulator's 12-hour rows: the endpoint
contract has one `Date` per history row, and these tests compare it with the batch path row for row.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from shared.core.battery_window import histories_for_request
from shared.core.preparation import prepare_telemetry
from shared.core.telemetry import BATTERY_ID, DATE, RATED_CYCLES, implausible_values
from shared.devtools.fleet_simulator import Fleet, simulate_fleet
from shared.models._lightgbm import BatteryForecaster, train_model
from shared.models.loader import load_model

CARS = 40
START, END = "2015-01-01", "2016-06-30"
SEED = 3


@functools.cache
def fleet() -> Fleet:
    return simulate_fleet(CARS, START, END, SEED)


@functools.cache
def model_dir() -> Path:
    """A trained model directory (removed when the test process ends)."""
    clean, quality = prepare_telemetry(fleet().telemetry)
    model = train_model(clean, quality=quality.to_dict())
    directory = Path(tempfile.mkdtemp(prefix="battery-model-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    model.save(directory)
    return directory


@functools.cache
def trained_model() -> BatteryForecaster:
    """The model of `model_dir()`, loaded once per test process."""
    return load_model(model_dir())


def endpoint_items(count: int) -> list[dict]:
    """The first `count` request items of batteries both paths score alike, with history up to END."""
    return request_items(comparable_batteries(fleet().telemetry, END))[:count]


def request_items(telemetry: pd.DataFrame) -> list[dict]:
    """The scoring request items for every battery in a raw telemetry frame (as the Function App builds them)."""
    return histories_for_request(telemetry.sort_values([BATTERY_ID, DATE], kind="stable"))


def batch_rows(batch: pd.DataFrame, battery_ids: list[str]) -> pd.DataFrame:
    """The batch path's score rows for the batteries a request names, in request order, indexed by the
    requested id. Preparation calls a battery replaced under the same id "<id>#2", "<id>#3"...; the
    endpoint answers for the newest of these (the battery in the car now) under the id the car sends."""
    ids = batch[BATTERY_ID].astype(str)
    reported = ids.str.replace(r"#\d+$", "", regex=True)
    life = pd.to_numeric(ids.str.extract(r"#(\d+)$")[0]).fillna(1)
    newest = batch.assign(_reported=reported, _life=life).sort_values("_life", kind="stable")
    newest = newest.drop_duplicates("_reported", keep="last").set_index("_reported")
    return newest.drop(columns="_life").rename_axis(BATTERY_ID).loc[battery_ids]


def comparable_batteries(telemetry: pd.DataFrame, as_of: str) -> pd.DataFrame:
    """The rows up to `as_of` of batteries the endpoint and the batch path must score identically.

    That is batteries that reported on `as_of` itself (both paths then align them at that day), with no
    impossible value (the endpoint refuses those, the batch path repairs them) and one rated-cycles value
    (a request carries one per battery).
    """
    rows = telemetry[telemetry[DATE] < pd.Timestamp(as_of) + pd.Timedelta(days=1)]
    by_battery = rows.groupby(BATTERY_ID)
    reported_on_day = by_battery[DATE].transform("max").dt.normalize() == pd.Timestamp(as_of)
    clean_values = implausible_values(rows).isna().groupby(rows[BATTERY_ID]).transform("all")
    one_rating = by_battery[RATED_CYCLES].transform("nunique") == 1
    return rows[reported_on_day & clean_values & one_rating]
