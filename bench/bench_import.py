"""Benchmark: cold start, `import function_app`, as every new Function App instance (each Event Hub
scale-out) pays it before its first event.

Each run is a fresh interpreter (no module cached in memory; the .pyc files are, as on a warm instance
after the first start). Printed per run and as the median of `--runs`: the import's own wall time (timed
inside the child, without interpreter start-up), the child's CPU seconds and peak RSS (from wait4), and
the 1-minute load average when the run ended, since the machine's other work shows in wall time.
`--root` imports another checkout's function_app (e.g. a `git worktree` of an older commit) with this
interpreter. `--importtime` prints the 25 slowest modules of one run (`python -X importtime`, cumulative).

Target (issue 12): ≤ 0.8 s on the development machine.

    .venv/bin/python bench/bench_import.py [--runs 7] [--root DIR] [--importtime]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = (
    "import json, sys, time\n"
    "sys.path.insert(0, '.')\n"
    "start = time.perf_counter()\n"
    "import function_app\n"
    "print(json.dumps({'import_s': time.perf_counter() - start, 'modules': len(sys.modules)}))\n"
)


def one_run(root: Path) -> dict:
    """Import function_app in a fresh interpreter; its import wall time, CPU seconds and peak RSS."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=root, stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"import function_app failed in {root} (exit {child.returncode})")
    return {**json.loads(output.strip().splitlines()[-1]), "process_s": time.perf_counter() - started,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "load_1m": os.getloadavg()[0]}  # fmt: skip


def slowest_imports(root: Path, count: int = 25) -> list[tuple[float, str]]:
    """The modules with the largest cumulative import time (seconds) in one `-X importtime` run."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import function_app"], cwd=root,
                            capture_output=True, text=True, check=True)  # fmt: skip
    rows = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            rows.append((int(cumulative) / 1e6, name.rstrip()))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose function_app to import")
    parser.add_argument("--importtime", action="store_true", help="also print the slowest imports of one run")
    args = parser.parse_args()
    root = args.root.resolve()
    one_run(root)  # writes the .pyc files a deployed instance would already have
    runs = [one_run(root) for _ in range(args.runs)]
    for number, run in enumerate(runs, 1):
        print(f"run {number}: import {run['import_s']:.3f} s, process {run['process_s']:.3f} s, "
              f"CPU {run['cpu_s']:.3f} s, peak RSS {run['peak_rss_mb']:.0f} MB, load {run['load_1m']:.2f}")  # fmt: skip
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(f"{root}: median of {args.runs}: import function_app {median['import_s']:.3f} s "
          f"(process {median['process_s']:.3f} s), CPU {median['cpu_s']:.3f} s, "
          f"peak RSS {median['peak_rss_mb']:.0f} MB, {median['modules']:.0f} modules, "
          f"load average {median['load_1m']:.2f} on {os.cpu_count()} cores")  # fmt: skip
    if args.importtime:
        for seconds, name in slowest_imports(root):
            print(f"{seconds:8.3f} s  {name}")


if __name__ == "__main__":
    main()
