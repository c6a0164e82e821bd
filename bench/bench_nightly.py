"""Benchmark: the nightly half at fleet scale (issue 13) — archive, compaction, batch scoring, retraining.

For each size (cars × years of daily telemetry, one battery per car, ending 2016-12-31) a streaming-style
archive is built on a fresh in-memory Azurite: one file per batch of 500 cars per record day, written by
the project's `archive_telemetry` as score_telemetry writes them. With `--history compacted` only the
last day is written that way and the days before it as the compaction timer leaves them (one
compacted.parquet a day, written directly): the state of an archive the nightly timers have kept up
with, built in minutes instead of hours at 50,000 cars. Each step then runs in a fresh subprocess,
which reports its wall and CPU time for the step and its own peak RSS (interpreter and imports included):
  archive   the writes that built the archive, noting each car's battery as the streaming path does,
            plus registering the champion model
  compact   `compact_archive`, the compact_telemetry_archive timer's work (all days but "today")
  score     `nightly_batch_score` as of the last day, on the compacted archive
  retrain   `nightly_retrain` the same night (trailing period, sample, training, backtest, promotion)
With `--lifecycle skipped` no car's battery is noted, neither by the archive step nor by the score step
(whose `note_batteries` is replaced by a no-op in its process): Azurite's in-memory Table looks entities up
without an index, so its cost per write grows with the table and the 50,000 first notes take hours there,
where Azure Table storage answers a point write in constant time. The score step then measures the
archive read, preparation, scoring, the scores blob and the alerts.
With --before DIR (the code before issue 13, e.g. `git worktree add /tmp/before 9478811`) the archive is
written by that code (CSV) and the steps are its `load_telemetry_history` (load) and `nightly_batch_score`.
The machine's load average is printed with each size: the machine is shared, so CPU is the steadier figure.

    .venv/bin/python bench/bench_nightly.py --sizes 2000x2,10000x1,10000x2,10000x3 [--chunk 5000] [--before DIR]
    .venv/bin/python bench/bench_nightly.py --sizes 10000x1,10000x3,50000x2 --history compacted
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
LAST_DAY = pd.Timestamp("2016-12-31")
BATCH_CARS = 500  # cars per streaming batch: one archive file per batch per record day
WRITERS = 8  # concurrent streaming writes (the Function App scales out over Event Hub partitions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000x2,10000x1,10000x2,10000x3", help="comma-separated CARSxYEARS")
    parser.add_argument("--chunk", default="5000", help="BATCH_SCORE_CHUNK_BATTERIES for the score step")
    parser.add_argument("--before", type=Path, help="a checkout of the code before issue 13, measured instead")
    parser.add_argument(
        "--history",
        choices=["streaming", "compacted"],
        default="streaming",
        help="how the days before the last are archived (module docstring)",
    )
    parser.add_argument("--steps", help="comma-separated steps after archive (default: all)")
    parser.add_argument(
        "--lifecycle",
        choices=["noted", "skipped"],
        default="noted",
        help="skipped: no battery notes, before or in the score step (module docstring)",
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this (fresh) process
    parser.add_argument("--connection", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        _run_step(args)
        return
    sizes = [tuple(int(part) for part in size.lower().split("x")) for size in args.sizes.split(",") if size.strip()]
    steps = ["archive", "load", "score"] if args.before else ["archive", "compact", "score", "retrain"]
    if args.steps:
        steps = ["archive", *args.steps.split(",")]
    sys.path.insert(0, str(ROOT))
    from shared.devtools.azurite import running_azurite

    with tempfile.TemporaryDirectory(prefix="bench-nightly-") as work:
        model_dir = _train_model(Path(work) / "model")
        print(f"code: {args.before or ROOT}; chunk {args.chunk} batteries; {os.cpu_count()} CPUs")
        print(f"{'size':<14}{'step':<9}{'wall s':>9}{'cpu s':>9}{'peak RSS MB':>13}  detail")
        for cars, years in sizes:
            with running_azurite() as azurite:
                for step in steps:
                    result = _child(step, cars, years, azurite.connection_string, model_dir, args)
                    print(f"{f'{cars:,} × {years} y':<14}{step:<9}{result['wall']:>9.1f}{result['cpu']:>9.1f}"
                          f"{result['peak_mb']:>13,.0f}  {result['detail']}", flush=True)  # fmt: skip
            print(f"{'':<14}load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}", flush=True)


def _child(step: str, cars: int, years: int, connection: str, model_dir: Path, args) -> dict:
    command = [sys.executable, __file__, "--step", step, "--sizes", f"{cars}x{years}", "--connection", connection,
               "--model-dir", str(model_dir), "--chunk", args.chunk, "--history", args.history,
               "--lifecycle", args.lifecycle]  # fmt: skip
    if args.before:
        command += ["--before", str(args.before)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"step {step} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_step(args) -> None:
    """One step in this process; prints its figures as the last line of JSON."""
    sys.path.insert(0, str(args.before or ROOT))
    cars, years = (int(part) for part in args.sizes.split("x"))
    steps = {"archive": _archive, "compact": _compact, "load": _load, "score": _score, "retrain": _retrain}
    start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    detail = steps[args.step](args, cars, years)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    print(json.dumps({"wall": time.perf_counter() - start, "cpu": cpu, "peak_mb": after.ru_maxrss / 1024,
                      "detail": detail}))  # fmt: skip


def _train_model(directory: Path) -> Path:
    """A small champion (the simulator's fleet): the score step's cost is the fleet's, not the model's."""
    sys.path.insert(0, str(ROOT))
    from shared.core.preparation import prepare_telemetry
    from shared.devtools.fleet_simulator import simulate_fleet
    from shared.models._lightgbm import train_model

    clean, quality = prepare_telemetry(simulate_fleet(40, "2015-01-01", "2016-06-30", seed=3).telemetry)
    train_model(clean, quality=quality.to_dict()).save(directory)
    return directory


def _fleet_day(cars: int, day: pd.Timestamp, first_day: pd.Timestamp) -> pd.DataFrame:
    """Every car's record of one day, typed as the streaming function archives it: straight-line wear with
    daily noise, lifetime counters spread so that some batteries near their rated life on the last day."""
    car = np.arange(cars)
    fixed = np.random.default_rng(11)  # per-car constants, the same every day
    rate = fixed.uniform(0.08, 0.2, cars)
    rated = fixed.choice([200.0, 300.0], cars)
    elapsed = (day - first_day).days
    total_days = (LAST_DAY - first_day).days
    start = np.clip(rated - rate * total_days - fixed.uniform(-30, rated * 0.6, cars), 0, None)
    noise = np.random.default_rng([11, elapsed]).normal(1.0, 0.15, cars).clip(0.2)
    cycles = rate * noise
    ids = pd.Series([f"{n:06d}" for n in car], dtype=object)
    return pd.DataFrame({
        "Date": pd.Series(np.full(cars, day.to_datetime64()), dtype="datetime64[ns]"),
        "Battery_ID": "B" + ids, "Car_ID": "CAR-" + ids,
        "Battery_Age_Days": 400.0 + elapsed, "Number_Of_Trips": 5.0, "Daily_Trip_Duration": cycles / 0.00246,
        "Daily_Cycles_Used": cycles, "Lifetime_Cycles_Used": start + rate * elapsed + (cycles - rate),
        "Battery_Rated_Cycles": rated,
    })  # fmt: skip


def _services(args, cars: int):
    from shared.bootstrap import build_services

    night = datetime(2017, 1, 1, 3, tzinfo=UTC)
    environ = {"AzureWebJobsStorage": args.connection, "BATCH_SCORE_CHUNK_BATTERIES": args.chunk,
               "BATTERY_WORK_DIR": tempfile.mkdtemp(prefix="bench-nightly-work-")}  # fmt: skip
    return build_services(environ, clock=lambda: night)


def _archive(args, cars: int, years: int) -> str:
    from shared.adapters.archive import TELEMETRY_CONTAINER, archive_telemetry, to_parquet
    from shared.adapters.compaction import COMPACTED_NAME
    from shared.adapters.registry import ModelRegistry
    from shared.adapters.storage import upload_creating_container
    from shared.core.deduplication import ARCHIVED_AT
    from shared.handlers.lifecycle import note_batteries

    services = _services(args, cars)
    ModelRegistry(services.blobs).promote_if_better(Path(args.model_dir))
    first_day = LAST_DAY - pd.Timedelta(days=365 * years - 1)
    days = pd.date_range(first_day, LAST_DAY, freq="D")

    def write_day(day: pd.Timestamp) -> int:
        frame = _fleet_day(cars, day, first_day)
        now = (day + timedelta(days=1, hours=3)).to_pydatetime().replace(tzinfo=UTC)
        if args.history == "compacted" and day < LAST_DAY:
            stamped = frame.assign(**{ARCHIVED_AT: pd.Timestamp(now).tz_localize(None)})
            upload_creating_container(services.blobs, TELEMETRY_CONTAINER, f"date={day:%Y-%m-%d}/{COMPACTED_NAME}",
                                      to_parquet(stamped))  # fmt: skip
            return len(frame)
        for batch, start in enumerate(range(0, cars, BATCH_CARS)):
            archive_telemetry(services.blobs, frame.iloc[start : start + BATCH_CARS], now, f"p{batch}-{day:%Y%m%d}")
        return len(frame)

    with ThreadPoolExecutor(WRITERS) as pool:
        rows = sum(pool.map(write_day, days))
        if args.lifecycle == "skipped":
            return f"{_files(args, cars, len(days)):,} files ({args.history} history), {rows:,} rows"
        # The streaming path notes each car's battery as its records arrive (shared/handlers/lifecycle.py):
        # by the night, the store knows yesterday's, as here.
        last = _fleet_day(cars, LAST_DAY, first_day)
        noted = (LAST_DAY + timedelta(days=1)).to_pydatetime().replace(tzinfo=UTC)
        list(pool.map(lambda start: note_batteries(services, last.iloc[start : start + BATCH_CARS], noted),
                      range(0, cars, BATCH_CARS)))  # fmt: skip
    return f"{_files(args, cars, len(days)):,} files ({args.history} history), {rows:,} rows"


def _files(args, cars: int, days: int) -> int:
    streamed = 1 if args.history == "compacted" else days
    return streamed * -(-cars // BATCH_CARS) + days - streamed


def _compact(args, cars: int, years: int) -> str:
    from shared.handlers.nightly import compact_telemetry

    summary = compact_telemetry(_services(args, cars))
    return f"{summary['days_compacted']:,} days, {summary['files_removed']:,} files into one each"


def _load(args, cars: int, years: int) -> str:
    from shared.adapters.archive import load_telemetry_history

    return f"{len(load_telemetry_history(_services(args, cars).blobs)):,} rows"


def _score(args, cars: int, years: int) -> str:
    from shared.handlers import nightly
    from shared.handlers.nightly import nightly_batch_score

    if args.lifecycle == "skipped":
        nightly.note_batteries = lambda *_: 0  # module docstring: Azurite's table cannot hold the writes

    summary = nightly_batch_score(_services(args, cars)).summary
    return f"{summary['scored']:,} scored, {summary['alerts']:,} alerts"


def _retrain(args, cars: int, years: int) -> str:
    from shared.handlers.nightly import nightly_retrain

    outcome = nightly_retrain(_services(args, cars))
    sample = outcome["training_data"]["sample"]
    return (
        f"trained on {sample['batteries_trained']:,} of {sample['batteries_in_period']:,} batteries "
        f"({outcome['training_data']['period']['history_days']} days); promoted {outcome['promoted']}"
    )


if __name__ == "__main__":
    main()
