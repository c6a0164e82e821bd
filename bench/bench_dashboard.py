"""Benchmark: the operations dashboard (GET /api/dashboard) with a 100,000-car fleet's data in the stores.

On a fresh in-memory Azurite a `setup` step fills every store the page reads, as the app writes them, the
data generated vectorised (bench/bench_nightly.py's fleet day):
  segments  the car table's Make, Region, Engine_Type of every car (monitor_store.write_car_segments)
  scores    one night's champion scores of every battery with their 30-day forecast (score_store.write_scores)
  alerts    ALERTS_PER_DAY alerts a day for 30 days in the alert store (alert_store.record_queued)
  letters   one dead-letter document a day for 30 days (archive.dead_letter)
  archive   the last 14 days of every car's telemetry, one compacted-size file per day (archive_telemetry)
  monitor   90 scored days of matured accuracy (champion and shadow, every segment) and 30 days of drift
Then each measured step runs in a fresh subprocess, which reports its wall and CPU time for the step (the
app's modules imported before the clock starts) and its peak RSS (interpreter and imports included):
  fleet     the fleet page: dashboard_page(services) as the function calls it
  car       a car lookup: dashboard_page(services, car="CAR-000042")
The machine's load average is printed at the end: the machine is shared, so CPU is the steadier figure.

    nice -n 19 .venv/bin/python bench/bench_dashboard.py [--cars 100000] [--alerts-per-day 300]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_nightly import LAST_DAY, _fleet_day  # noqa: E402  the same generated fleet as the nightly bench

NOW = datetime(2017, 1, 1, 23, tzinfo=UTC)  # the evening after LAST_DAY, when the page is opened
ALERT_DAYS, ARCHIVE_DAYS, MONITOR_DAYS, DRIFT_DAYS = 30, 14, 90, 30
WRITERS = 8
MAKES, REGIONS, ENGINES = (
    ["Contoso", "Fabrikam", "Tailspin", "Woodgrove"],
    ["Atlantic", "Continental", "Mediterranean", "Desert", "Nordic"],
    ["BEV", "PHEV", "HEV"],
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cars", type=int, default=100_000)
    parser.add_argument("--alerts-per-day", type=int, default=300)
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this (fresh) process
    parser.add_argument("--connection", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        _run_step(args)
        return
    from shared.devtools.azurite import running_azurite

    print(f"{args.cars:,} cars, {args.alerts_per_day:,} alerts a day; {os.cpu_count()} CPUs")
    print(f"{'step':<8}{'wall s':>9}{'cpu s':>9}{'peak RSS MB':>13}  detail")
    with running_azurite() as azurite:
        for step in ("setup", "fleet", "car", "fleet"):  # the fleet page twice: the second on warm Azurite
            result = _child(step, azurite.connection_string, args)
            print(
                f"{step:<8}{result['wall']:>9.2f}{result['cpu']:>9.2f}{result['peak_mb']:>13,.0f}  {result['detail']}",
                flush=True,
            )
    print(f"load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}")


def _child(step: str, connection: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--step",
        step,
        "--connection",
        connection,
        "--cars",
        str(args.cars),
        "--alerts-per-day",
        str(args.alerts_per_day),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"step {step} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_step(args) -> None:
    """One step in this process; prints its figures as the last line of JSON."""
    steps = {"setup": _setup, "fleet": _fleet_page, "car": _car_page}
    if args.step != "setup":
        import shared.handlers.dashboard  # noqa: F401  imported before the clock starts: the page's work is timed
    start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    detail = steps[args.step](args)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    print(
        json.dumps(
            {"wall": time.perf_counter() - start, "cpu": cpu, "peak_mb": after.ru_maxrss / 1024, "detail": detail}
        )
    )


def _services(args):
    from shared.bootstrap import build_services

    return build_services({"AzureWebJobsStorage": args.connection}, clock=lambda: NOW)


def _fleet_page(args) -> str:
    from shared.handlers.dashboard import dashboard_page

    page = dashboard_page(_services(args))
    return f"status {page.status}, {len(page.html) / 1e6:.2f} MB of HTML"


def _car_page(args) -> str:
    from shared.handlers.dashboard import dashboard_page

    page = dashboard_page(_services(args), car="CAR-000042")
    return f"status {page.status}, {len(page.html) / 1e3:.0f} kB of HTML"


def _setup(args) -> str:
    from shared.adapters.alert_store import alerts_table, record_queued
    from shared.adapters.archive import archive_telemetry, dead_letter
    from shared.adapters.monitor_store import write_accuracy, write_car_segments, write_drift
    from shared.adapters.score_store import write_scores
    from shared.core import monitoring as m
    from shared.core.alerts import alerts_from_scores
    from shared.core.events import DeadLetter

    services, cars = _services(args), args.cars
    rng = np.random.default_rng(5)
    ids = pd.Series([f"{n:06d}" for n in range(cars)], dtype=object)
    segments = pd.DataFrame(
        {
            "Car_ID": "CAR-" + ids,
            "Make": rng.choice(MAKES, cars),
            "Region": rng.choice(REGIONS, cars),
            "Engine_Type": rng.choice(ENGINES, cars),
        }
    )
    write_car_segments(services.blobs, segments)

    last = _fleet_day(cars, LAST_DAY, LAST_DAY - pd.Timedelta(days=729))
    probability = rng.beta(0.3, 3.0, cars)
    scores = pd.DataFrame(
        {
            "Battery_ID": last["Battery_ID"],
            "Car_ID": last["Car_ID"],
            "failure_probability_30d": probability,
            "days_to_rated_life": rng.uniform(0, 400, cars),
            "Lifetime_Cycles_Used": last["Lifetime_Cycles_Used"],
            "Battery_Rated_Cycles": last["Battery_Rated_Cycles"],
            "alert": probability >= 0.8,
            "reasons": [["battery has used most of its rated cycles"]] * cars,
        }
    )
    write_scores(services.blobs, LAST_DAY.date(), "bench-1", scores, rng.uniform(0.1, 0.2, (cars, 30)))

    table = alerts_table(services.tables)
    queued = []
    for offset in range(ALERT_DAYS):
        day = NOW - timedelta(days=offset)
        alerted = scores.sample(args.alerts_per_day, random_state=offset).assign(
            failure_probability_30d=0.9, As_Of=pd.Timestamp(day.date())
        )
        queued += [
            (alert, day)
            for alert in alerts_from_scores(alerted, 0.8, day, "https://service.example.com", model_version="bench-1")
        ]
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(lambda item: record_queued(table, *item), queued))

    for offset in range(ALERT_DAYS):
        letters = [DeadLetter("not JSON", "{", "utf-8", index) for index in range(10)]
        dead_letter(services.blobs, letters, NOW - timedelta(days=offset), batch_id=f"bench-{offset}")

    first_day = LAST_DAY - pd.Timedelta(days=729)
    days = pd.date_range(LAST_DAY - pd.Timedelta(days=ARCHIVE_DAYS - 1), LAST_DAY, freq="D")
    with ThreadPoolExecutor(WRITERS) as pool:
        list(
            pool.map(
                lambda day: archive_telemetry(
                    services.blobs, _fleet_day(cars, day, first_day), NOW, batch_id="compacted"
                ),
                days,
            )
        )

    no_bins = pd.DataFrame(columns=m.RELIABILITY_COLUMNS)
    segment_rows = [(m.ALL_SEGMENTS, m.ALL_SEGMENTS)] + [
        (kind, value)
        for kind, values in (("make", MAKES), ("region", REGIONS), ("engine_type", ENGINES))
        for value in values
    ]

    def write_day(offset: int) -> None:
        scored_on = date(2016, 11, 30) - timedelta(days=offset)
        for version, role in (("bench-1", m.CHAMPION), ("bench-0", m.SHADOW)):
            rows = pd.DataFrame(
                [
                    {
                        m.SCORED_ON: pd.Timestamp(scored_on),
                        m.MATURED_ON: pd.Timestamp(scored_on) + pd.Timedelta(days=30),
                        m.MODEL_VERSION: version,
                        m.ROLE: role,
                        m.SEGMENT_KIND: kind,
                        m.SEGMENT: value,
                        m.BATTERIES: 5000,
                        m.POSITIVES: 200,
                        m.BRIER: rng.uniform(0.02, 0.05),
                        m.RECALL: rng.uniform(0.7, 0.9),
                        m.PRECISION: 0.6,
                        m.AVERAGE_PRECISION: 0.7,
                        m.NRMSE: 0.12,
                        m.ALERTS: 250,
                        m.TOTAL_ERROR: 0.05,
                    }
                    for kind, value in segment_rows
                ]
            )
            write_accuracy(services.blobs, scored_on, version, rows, no_bins)
        if offset < DRIFT_DAYS:
            day = NOW.date() - timedelta(days=offset)
            write_drift(
                services.blobs,
                day,
                pd.DataFrame(
                    {
                        m.DAY: pd.Timestamp(day),
                        m.MODEL_VERSION: "bench-1",
                        m.FEATURE: list(m.DRIFT_FEATURES),
                        m.PSI: rng.uniform(0, 0.3, 3),
                        m.THRESHOLD: 0.2,
                        m.DRIFTED: False,
                        m.SEGMENT_KIND: m.ALL_SEGMENTS,
                        m.SEGMENT: m.ALL_SEGMENTS,
                        m.RECORDS: cars * 7,
                    }
                ).assign(**{m.DRIFTED: lambda f: f[m.PSI] > 0.2}),
            )

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(write_day, range(MONITOR_DAYS)))
    return (
        f"{cars:,} segments and scores, {len(queued):,} alerts, {ALERT_DAYS} dead-letter documents, "
        f"{len(days) * cars:,} archived rows, {MONITOR_DAYS} days of monitoring"
    )


if __name__ == "__main__":
    main()
