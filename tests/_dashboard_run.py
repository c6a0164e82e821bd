"""A main-job-like run for the dashboard tests, small enough for seconds: the test fleet of tests/_services.py
(B-PAST past its rated life, B-SOON close to it, B-SAFE half way) through the real functions on Azurite.

The night after LAST_DAY the champion scores the fleet and push_alert delivers its alerts; the next day the
cars report through score_telemetry (with two bad events, dead-lettered), the stream alerts again and the
cooldown suppresses those repeats; one message the host gave up on waits on the poison queue. Every store
the dashboard reads then holds something: alert rows in several states, dead letters, the poison queue,
the nightly scores, and the car table's segments. `write_monitor_history` adds what the model monitor stores:
two models' matured accuracy over MONITORED_DAYS and a day's drift (the fleet's and a region's).
"""

from __future__ import annotations

import contextlib
from datetime import date
from typing import NamedTuple

import pandas as pd
from _models import model_dir
from _services import LAST_DAY, NIGHT, POISON_QUEUE, TELEMETRY, AppHarness, battery_days, day_events
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import TextBase64EncodePolicy

from shared.adapters.archive import archive_telemetry
from shared.adapters.monitor_store import write_accuracy, write_car_segments, write_drift
from shared.adapters.registry import ModelRegistry
from shared.adapters.storage import queue_service
from shared.core import monitoring as m

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


class MonitoredDay(NamedTuple):
    scored_on: str
    batteries: int
    champion_brier: float
    shadow_brier: float


# The champion degrades while the shadow holds: what the monitor sees when usage changes mid-way.
MONITORED_DAYS = [MonitoredDay(f"2016-01-{day:02d}", 10 + day, 0.02 + 0.01 * (day - 10), 0.03) for day in range(10, 20)]
DRIFT_DAY = date(2016, 3, 10)


def write_monitor_history(blobs) -> None:
    """Store, as the monitor does (monitor_store), both models' matured accuracy over the whole fleet on each
    of MONITORED_DAYS, and DRIFT_DAY's drift: trip minutes past the threshold, trips within, the Desert region
    far past it."""
    no_bins = pd.DataFrame(columns=m.RELIABILITY_COLUMNS)
    for day in MONITORED_DAYS:
        scored_on = pd.Timestamp(day.scored_on)
        for version, role, brier in (("v1", m.CHAMPION, day.champion_brier), ("v2", m.SHADOW, day.shadow_brier)):
            rows = pd.DataFrame([{
                m.SCORED_ON: scored_on, m.MATURED_ON: scored_on + pd.Timedelta(days=30), m.MODEL_VERSION: version,
                m.ROLE: role, m.SEGMENT_KIND: m.ALL_SEGMENTS, m.SEGMENT: m.ALL_SEGMENTS, m.BATTERIES: day.batteries,
                m.POSITIVES: 2, m.BRIER: brier, m.RECALL: 1 - 4 * brier, m.PRECISION: 0.5, m.AVERAGE_PRECISION: 0.7,
                m.NRMSE: 0.1, m.ALERTS: 3, m.TOTAL_ERROR: 0.05,
            }])  # fmt: skip
            write_accuracy(blobs, scored_on.date(), version, rows, no_bins)
    drift = pd.DataFrame({
        m.DAY: pd.Timestamp(DRIFT_DAY), m.MODEL_VERSION: "v1",
        m.FEATURE: ["Daily_Trip_Duration", "Number_Of_Trips", "Daily_Trip_Duration"], m.PSI: [0.31, 0.02, 0.55],
        m.THRESHOLD: 0.2, m.DRIFTED: [True, False, True], m.SEGMENT_KIND: [m.ALL_SEGMENTS, m.ALL_SEGMENTS, "region"],
        m.SEGMENT: [m.ALL_SEGMENTS, m.ALL_SEGMENTS, "Desert"], m.RECORDS: [700, 700, 350],
    })  # fmt: skip
    write_drift(blobs, DRIFT_DAY, drift)
