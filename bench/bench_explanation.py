"""Benchmark: what per-battery reasons add to scoring (path contributions and the reason texts).

Trains the 500-car test fleet's model, builds the windows of the batteries in service on one day,
tiles them to --batteries rows, and prints CPU seconds for the plain prediction, the path contributions
the reasons use, TreeSHAP (`pred_contrib`, the reference they replaced) and how often the two agree, the
reasons, and score_windows without reasons and with them for the batteries that may alert.

    .venv/bin/python bench/bench_explanation.py [--batteries 5000]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _forecast_fleet import clean, model

from shared.core.windows import build_windows
from shared.models.explanation import battery_reasons, contributions, leaf_contributions
from shared.models.scoring import batteries_in_service, score_windows


def timed(label: str, action):
    started = time.process_time()
    result = action()
    print(f"{label:<32} {time.process_time() - started:7.2f} CPU s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batteries", type=int, default=5_000)
    args = parser.parse_args()
    forecaster = timed("train (test fleet)", model)
    day = date(2017, 3, 15)
    windows = build_windows(batteries_in_service(clean(), day), as_of=day, window_days=forecaster.window_days)
    windows = windows.take(np.resize(np.arange(len(windows)), args.batteries))
    print(f"{len(windows):,} batteries")
    features = forecaster.feature_matrix(windows)
    timed("booster.predict", lambda: forecaster.booster.predict(features, num_threads=1))
    timed("leaf table (once per model)", lambda: leaf_contributions(forecaster.booster))
    path = timed("path contributions", lambda: contributions(forecaster, windows)).drop(columns="bias").to_numpy()
    shap = timed(
        "TreeSHAP (pred_contrib)", lambda: forecaster.booster.predict(features, pred_contrib=True, num_threads=1)
    )[:, :-1]
    agree = (np.argsort(-path, axis=1)[:, :2] == shap.argmax(axis=1)[:, None]).any(axis=1).mean()
    correlation = np.mean([np.corrcoef(p, s)[0, 1] for p, s in zip(path, shap, strict=True)])
    print(
        f"TreeSHAP's strongest feature among the path's two strongest: {agree:.0%} of batteries; "
        f"mean per-battery correlation {correlation:.2f}"
    )
    forecast = forecaster.forecast(windows)
    timed("battery_reasons", lambda: battery_reasons(forecaster, windows, forecast))
    timed("score_windows, no reasons", lambda: score_windows(forecaster, windows))
    scores, _ = score_windows(forecaster, windows)
    for threshold in (0.8, 0.5):
        share = (scores["failure_probability_30d"] >= threshold).mean()
        timed(
            f"score_windows, p>={threshold} ({share:.1%})",
            lambda t=threshold: score_windows(forecaster, windows, explain_from=t),
        )


if __name__ == "__main__":
    main()
