"""Benchmark: the Spark engine's nightly score (shared/spark/job.py) on local[2], 100,000 and 1,000,000 batteries.

Synthetic archive: every battery reports every day of the 105 days the score reads (the model's 91-day
window and the 14 in-service days), one Parquet file per day under date=YYYY-MM-DD/ as the archive holds
them, written by a vectorised generator a day at a time. The score reads it, groups cars, scores, and
writes the scores and forecast Parquet folders, as the job does on a cluster. Prints wall and CPU seconds
and peak RSS of the whole process tree (this driver, the JVM and the Python workers, sampled every
0.2 s), and the machine's load average, since other work on the machine shows in the wall time first.

    .venv/bin/python bench/bench_spark.py --batteries 100000 [--batteries 1000000] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.core.preparation import prepare_telemetry
from shared.core.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_ID,
    DAILY_CYCLES,
    DATE,
    LIFETIME_CYCLES,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
)
from shared.devtools.fleet_simulator import simulate_fleet
from shared.models._lightgbm import train_model
from shared.spark import job

AS_OF = date(2016, 6, 30)
DAYS = 105
BATTERIES_PER_GROUP = 5_000


def write_archive(root: Path, batteries: int, seed: int = 0) -> int:
    """DAYS days of `batteries` clean daily records up to AS_OF, one Parquet file per day; returns rows."""
    rng = np.random.default_rng(seed)
    ids = np.char.add("B", np.arange(batteries).astype(str)).astype(object)
    cars = np.char.add("CAR-", np.arange(batteries).astype(str)).astype(object)
    rated = rng.choice([150.0, 200.0, 250.0, 300.0], batteries)
    rate = rng.uniform(0.08, 0.3, batteries)
    lifetime = rated * rng.uniform(0.05, 0.97, batteries) - rate * DAYS
    age = rng.integers(300, 1500, batteries).astype(np.float64)
    for offset in range(DAYS):
        day = AS_OF - timedelta(days=DAYS - 1 - offset)
        cycles = np.round(rate * rng.uniform(0.6, 1.4, batteries), 4)
        lifetime = lifetime + cycles
        minutes = np.round(cycles / 0.00246, 1)
        frame = pd.DataFrame({
            DATE: np.full(batteries, np.datetime64(day, "ns")), BATTERY_ID: ids, CAR_ID: cars,
            AGE_DAYS: age + offset, TRIPS: np.maximum(np.round(minutes / 12), 1.0), TRIP_MINUTES: minutes,
            DAILY_CYCLES: cycles, LIFETIME_CYCLES: np.round(lifetime, 3), RATED_CYCLES: rated,
        })  # fmt: skip
        folder = root / f"date={day.isoformat()}"
        folder.mkdir(parents=True)
        frame.to_parquet(folder / "part-0.parquet", index=False)
    return batteries * DAYS


def small_model(folder: Path) -> Path:
    """A model trained on 40 simulated cars: the benchmark measures scoring, not what was learned."""
    clean, quality = prepare_telemetry(simulate_fleet(40, "2015-01-01", "2016-06-30", 3).telemetry)
    train_model(clean, quality=quality.to_dict()).save(folder)
    return folder


class TreeSampler:
    """Peak RSS of this process and all its descendants (the JVM, the Python workers), sampled."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[psutil.Process]:
        me = psutil.Process()
        return [me, *me.children(recursive=True)]

    def rss(self) -> int:
        total = 0
        for process in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total

    def cpu(self) -> float:
        total = 0.0
        for process in self._tree():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batteries", type=int, action="append", help="fleet sizes (default 100,000)")
    parser.add_argument("--model-dir", type=Path, help="a trained model directory (default: train a small one)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    args = parser.parse_args()
    sizes = args.batteries or [100_000]
    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    model_dir = args.model_dir or small_model(work / "model")
    spark = job.spark_session(args.master, "bench-spark", {"spark.driver.memory": args.driver_memory})
    print(f"{'batteries':>10}{'rows':>13}{'groups':>8}{'wall s':>9}{'cpu s':>9}{'peak RSS MB':>13}"
          f"{'s / 100k':>10}  load average before → after")  # fmt: skip
    for batteries in sizes:
        root = work / f"archive-{batteries}" / "telemetry"
        rows = write_archive(root, batteries)
        groups = max(batteries // BATTERIES_PER_GROUP, 2)
        load_before = os.getloadavg()
        with TreeSampler() as sampler:
            cpu_before, started = sampler.cpu(), time.perf_counter()
            telemetry = job.read_telemetry(spark, str(root), "parquet", until=AS_OF)
            scored = job.score_telemetry(spark, telemetry, str(model_dir), AS_OF, 0.8, groups).persist()
            scored.drop(job.FORECAST).write.mode("overwrite").parquet(str(work / f"scores-{batteries}"))
            job.forecast_rows(scored, AS_OF).write.mode("overwrite").parquet(str(work / f"forecast-{batteries}"))
            count = scored.count()
            wall, cpu = time.perf_counter() - started, sampler.cpu() - cpu_before
            scored.unpersist()
        assert count == batteries, f"scored {count} of {batteries}"
        load_after = os.getloadavg()
        print(f"{batteries:>10,}{rows:>13,}{groups:>8}{wall:>9.1f}{cpu:>9.1f}{sampler.peak / 2**20:>13,.0f}"
              f"{wall / batteries * 1e5:>10.1f}  {load_before[0]:.1f} → {load_after[0]:.1f}", flush=True)  # fmt: skip
    spark.stop()


if __name__ == "__main__":
    main()
