"""A main-job-like run for the dashboard tests, small enough for seconds: the test fleet of tests/_services.py
(B-PAST past its rated life, B-SOON close to it, B-SAFE half way) through the real functions on Azurite.

The night after LAST_DAY the champion scores the fleet and push_alert delivers its alerts; the next day the
cars report through score_telemetry (with two bad events, dead-lettered), the stream alerts again and the
cooldown suppresses those repeats; one message the host gave up on waits on the poison queue. Every store
the dashboard reads then holds something: alert rows in several states, dead letters, the poison queue,
the nightly scores, and the car table's segments.
"""

from __future__ import annotations

import contextlib

import pandas as pd
from _models import model_dir
from _services import LAST_DAY, NIGHT, POISON_QUEUE, TELEMETRY, AppHarness, battery_days, day_events
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import TextBase64EncodePolicy

from shared.adapters.archive import archive_telemetry
from shared.adapters.monitor_store import write_car_segments
from shared.adapters.registry import ModelRegistry
from shared.adapters.storage import queue_service

CARS = pd.DataFrame(
    {
        "Car_ID": ["CAR-PAST", "CAR-SOON", "CAR-SAFE", "CAR-IDLE"],
        "Make": ["Contoso", "Contoso", "Fabrikam", "Fabrikam"],
        "Model_Year": [2012, 2013, 2014, 2014],
        "Engine_Type": ["BEV", "PHEV", "BEV", "HEV"],
        "Region": ["Nordic", "Desert", "Nordic", "Desert"],
        "Purchase_Date": ["2012-05-01"] * 4,
    }
)
NEXT_DAY = "2016-03-11"  # the day after LAST_DAY, reported through the stream
BAD_EVENTS = [b"{not json", b'{"Car_ID": "CAR-PAST"}']


def next_day_records() -> pd.DataFrame:
    """Each battery's record of NEXT_DAY: one more day of the same usage."""
    last = TELEMETRY[TELEMETRY["Date"] == pd.Timestamp(LAST_DAY)]
    frames = [
        battery_days(row.Battery_ID, row.Car_ID, NEXT_DAY, 1, row.Lifetime_Cycles_Used + 0.15)
        for row in last.itertuples()
    ]
    return pd.concat(frames, ignore_index=True)


def main_job_like_run(harness: AppHarness) -> str:
    """Run the story above on the harness's empty storage; returns the champion's version."""
    services = harness.services
    write_car_segments(services.blobs, CARS)
    champion = ModelRegistry(services.blobs).promote_if_better(model_dir()).version
    archive_telemetry(services.blobs, TELEMETRY, NIGHT, batch_id="fleet")
    harness.clock.now = NIGHT
    scored = harness.host.fire_timer("nightly_batch_score_timer")
    assert scored.succeeded, scored.error
    harness.host.drain_queue("push_alert")
    harness.clock.advance(hours=20)  # the evening of NEXT_DAY, when the cars report
    delivery = harness.host.deliver_events("score_telemetry", [*day_events(next_day_records()), *BAD_EVENTS])
    assert not delivery.failed_batches, delivery
    harness.host.drain_queue("push_alert")
    poison = queue_service(harness.connection).get_queue_client(
        POISON_QUEUE, message_encode_policy=TextBase64EncodePolicy()
    )
    with contextlib.suppress(ResourceExistsError):
        poison.create_queue()
    poison.send_message('{"alert_id": "given-up"}')  # as the host moves a message after maxDequeueCount
    return champion
