"""The car simulator, tested up to the wire with the SDK's real EventDataBatch objects.

No Event Hubs service (or emulator) runs here, so `send_telemetry`'s producer calls are not exercised;
everything up to them is: bodies, grouping, partition keys, batch packing and sizes, the client setup.
"""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest
from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient

from shared.adapters.eventhubs import (
    event_bodies_by_car,
    pack_batches,
    producer_client,
    records_of_day,
)
from shared.cli import main
from shared.config.settings import SettingsError
from shared.core.events import parse_events
from shared.core.telemetry import CAR_ID, COLUMNS, DATE

FAKE_CONNECTION = "Endpoint=sb://fleet.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=not-a-key"


def fleet(cars: int, days: int, first: str = "2017-03-01") -> pd.DataFrame:
    """A typed telemetry frame: `cars` cars with one battery each, `days` days each."""
    dates = pd.date_range(first, periods=days, freq="D")
    car = np.repeat([f"CAR-{i:05d}" for i in range(cars)], days)
    frame = pd.DataFrame({
        DATE: np.tile(dates, cars).astype("datetime64[ns]"),
        "Battery_ID": np.repeat([str(i) for i in range(cars)], days),
        CAR_ID: car,
        "Battery_Age_Days": 1000.0 + np.tile(np.arange(days), cars),
        "Number_Of_Trips": 5.0,
        "Daily_Trip_Duration": 61.2,
        "Daily_Cycles_Used": 0.150588,
        "Lifetime_Cycles_Used": 150.0 + np.tile(np.arange(days), cars) * 0.150588,
        "Battery_Rated_Cycles": 200.0,
    })  # fmt: skip
    return frame[COLUMNS].astype({"Battery_ID": object, CAR_ID: object})


def batch_factory(max_size: int, made: list[EventDataBatch] | None = None):
    """A factory of real EventDataBatch objects, as `producer.create_batch(partition_key=car)` returns them."""

    def new_batch(car: str) -> EventDataBatch:
        batch = EventDataBatch(max_size_in_bytes=max_size, partition_key=car)
        if made is not None:
            made.append(batch)
        return batch

    return new_batch


def test_each_record_becomes_one_contract_event_body_grouped_by_car_in_date_order():
    telemetry = fleet(cars=2, days=3).iloc[::-1]  # rows out of order
    telemetry.loc[telemetry.index[0], "Daily_Trip_Duration"] = np.nan

    bodies = event_bodies_by_car(telemetry)

    assert list(bodies) == ["CAR-00000", "CAR-00001"]
    first = json.loads(bodies["CAR-00000"][0])
    assert first == {
        "Date": "2017-03-01", "Battery_ID": "0", "Car_ID": "CAR-00000", "Battery_Age_Days": 1000,
        "Number_Of_Trips": 5, "Daily_Trip_Duration": 61.2, "Daily_Cycles_Used": 0.150588,
        "Lifetime_Cycles_Used": 150.0, "Battery_Rated_Cycles": 200,
    }  # fmt: skip
    assert [json.loads(b)["Date"] for b in bodies["CAR-00001"]] == ["2017-03-01", "2017-03-02", "2017-03-03"]
    assert json.loads(bodies["CAR-00001"][-1])["Daily_Trip_Duration"] is None, "unknown is null, not NaN"


def test_the_bodies_the_simulator_sends_are_the_events_the_function_accepts():
    telemetry = fleet(cars=3, days=2)
    bodies = [body for car_bodies in event_bodies_by_car(telemetry).values() for body in car_bodies]

    good, dead = parse_events(bodies, received=telemetry[DATE].max() + pd.Timedelta(hours=1))

    assert dead == []
    pd.testing.assert_frame_equal(good, telemetry.reset_index(drop=True))


def test_batches_are_per_car_keyed_by_car_and_within_the_size_limit():
    bodies = event_bodies_by_car(fleet(cars=3, days=10))
    made: list[EventDataBatch] = []

    packing = pack_batches(bodies, batch_factory(max_size=1200, made=made))

    assert packing.oversize == []
    assert packing.events == 30
    assert all(cb.batch.size_in_bytes <= 1200 for cb in packing.batches)
    per_car = {car: [len(cb.batch) for cb in packing.batches if cb.car_id == car] for car in bodies}
    assert all(sum(sizes) == 10 and len(sizes) > 1 for sizes in per_car.values()), "full batches split"
    # The key is what the producer puts on the wire; EventDataBatch exposes it only privately.
    assert all(cb.batch._partition_key == cb.car_id for cb in packing.batches)
    assert {id(b) for b in made} == {id(cb.batch) for cb in packing.batches}, "no empty batch left behind"


def test_a_record_that_does_not_fit_starts_a_new_batch_that_is_filled_first():
    one = event_bodies_by_car(fleet(cars=1, days=1))["CAR-00000"][0]
    probe = EventDataBatch(partition_key="CAR-00000")
    empty = probe.size_in_bytes
    probe.add(EventData(one))
    limit = empty + 2 * (probe.size_in_bytes - empty) + 10  # room for two events, not three
    bodies = {"CAR-00000": [one] * 5}

    packing = pack_batches(bodies, batch_factory(max_size=limit))

    assert [len(cb.batch) for cb in packing.batches] == [2, 2, 1]


def test_a_record_larger_than_any_batch_is_reported_and_the_rest_still_go():
    bodies = {"CAR-1": [b'{"small": 1}', b"x" * 5000, b'{"small": 2}'], "CAR-2": [b'{"small": 3}']}

    packing = pack_batches(bodies, batch_factory(max_size=1024))

    assert [(r.car_id, r.position, r.size, r.limit) for r in packing.oversize] == [("CAR-1", 1, 5000, 1024)]
    assert packing.events == 3
    assert [(cb.car_id, len(cb.batch)) for cb in packing.batches] == [("CAR-1", 2), ("CAR-2", 1)]


def test_records_of_a_day_are_that_day_only():
    telemetry = fleet(cars=2, days=5)

    day = records_of_day(telemetry, date(2017, 3, 3))

    assert len(day) == 2 and (day[DATE] == "2017-03-03").all()


def test_the_producer_comes_from_the_argument_then_the_setting_then_the_identity_namespace():
    env = {"EventHubConnection": FAKE_CONNECTION}
    with producer_client(None, "car-telemetry", env) as producer:
        assert isinstance(producer, EventHubProducerClient) and producer.eventhub_name == "car-telemetry"
    identity = {"EventHubConnection__fullyQualifiedNamespace": "fleet.servicebus.windows.net"}
    with producer_client(None, "other-hub", identity) as producer:
        assert producer.eventhub_name == "other-hub"
        assert type(producer._credential).__name__ == "DefaultAzureCredential"


def test_a_missing_or_malformed_connection_names_the_setting_and_never_echoes_it():
    with pytest.raises(SettingsError, match="EventHubConnection__fullyQualifiedNamespace"):
        producer_client(None, "car-telemetry", {})
    with pytest.raises(SettingsError, match="not an Event Hubs connection string") as error:
        producer_client("SharedAccessKey=hunter2-secret", "car-telemetry", {})
    assert "hunter2" not in str(error.value)


def test_the_cli_rejects_a_day_with_no_records_before_connecting(tmp_path, capsys):
    path = tmp_path / "telemetry.csv"
    fleet(cars=1, days=2).to_csv(path, index=False)

    code = main(["send-telemetry", "--connection", FAKE_CONNECTION, "--data", str(path), "--day", "2018-01-01"])

    assert code == 2
    assert "no records dated 2018-01-01 (the file covers 2017-03-01 to 2017-03-02)" in capsys.readouterr().err
