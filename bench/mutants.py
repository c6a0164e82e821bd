"""Mutation check: does the suite fail when the forecast, the risk, the alert policy or delivery gets worse?

Each mutant replaces one attribute of one module (a function, or a method as `Class.method`) by a worse
version of it, in every Python process of a pytest run — the test process and everything it starts with
this environment (azmlinfsrv workers, the main job's endpoint) — and the chosen test files run against it.
The product code carries no hook: the script puts `bench/mutant_site/` on PYTHONPATH, whose
`sitecustomize.py` reads MUTANT (a name in MUTANTS) and patches the attribute right after its module is
first imported, so `from module import name` elsewhere gets the mutant too.

    .venv/bin/python bench/mutants.py                       # every mutant, the default test files
    .venv/bin/python bench/mutants.py --mutant cooldown-disabled --tests tests/test_alerts.py

It prints, per mutant, how many tests failed (of how many run) and whether an end-to-end test
(tests/test_main_job.py) was among them; a first row without a mutant shows the suite passes as it is.
When a module moves, update its name in MUTANTS: nothing else names it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclass(frozen=True)
class Mutant:
    module: str
    attribute: str  # a module attribute, or "Class.method"
    wrap: Wrap  # original -> the mutant
    what: str


def _probability_times(factor: float) -> Wrap:
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def failure_risk(*args: Any, **kwargs: Any) -> Any:
            risk = original(*args, **kwargs)
            return risk.assign(failure_probability_30d=risk["failure_probability_30d"] * factor)

        return failure_risk

    return wrap


def _risk_on_forecast_times(factor: float) -> Wrap:
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def failure_risk(lifetime: Any, rated: Any, forecast: Any, *args: Any, **kwargs: Any) -> Any:
            return original(lifetime, rated, forecast * factor, *args, **kwargs)

        return failure_risk

    return wrap


def _forecast_times(factor: float) -> Wrap:
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def forecast(self: Any, windows: Any) -> Any:
            return original(self, windows) * factor

        return forecast

    return wrap


def _cooldown_disabled(original: Callable[..., Any]) -> Callable[..., Any]:
    def should_deliver(alert: Any, previous: Any, cooldown_days: int, now: Any) -> tuple[bool, str]:
        deliver, reason = original(alert, previous, cooldown_days, now)
        return (True, "cooldown_elapsed") if reason == "cooldown" else (deliver, reason)

    return should_deliver


def _threshold_ignored(original: Callable[..., Any]) -> Callable[..., Any]:
    def alerts_from_scores(scores: Any, threshold: float, *args: Any, **kwargs: Any) -> Any:
        # The smallest threshold it accepts, and no probability below it: every scored battery alerts.
        tiny = 5e-324
        with contextlib.suppress(KeyError, TypeError):  # a frame the original refuses: let it say why
            scores = scores.assign(failure_probability_30d=scores["failure_probability_30d"].clip(lower=tiny))
        return original(scores, tiny, *args, **kwargs)

    return alerts_from_scores


def _never_marked_delivered(original: Callable[..., Any]) -> Callable[..., Any]:
    def record_delivered(*args: Any, **kwargs: Any) -> None:
        return None

    return record_delivered


MUTANTS: dict[str, Mutant] = {
    "probability-x0.6": Mutant("shared.core.risk", "failure_risk", _probability_times(0.6),
                               "failure probabilities multiplied by 0.6 (the risk computation)"),
    "risk-forecast+15%": Mutant("shared.core.risk", "failure_risk", _risk_on_forecast_times(1.15),
                                "risk computed on a forecast biased 15 % high"),
    "cooldown-disabled": Mutant("shared.core.alerts", "should_deliver", _cooldown_disabled,
                                "the alert policy's cooldown never holds an alert back"),
    "threshold-ignored": Mutant("shared.core.alerts", "alerts_from_scores", _threshold_ignored,
                                "the probability threshold ignored: every scored battery alerted"),
    "never-marked-delivered": Mutant("shared.adapters.alert_store", "record_delivered", _never_marked_delivered,
                                     "delivery never records an alert as delivered"),
    "forecast-15%": Mutant("shared.models._lightgbm", "BatteryForecaster.forecast", _forecast_times(0.85),
                           "the forecaster's daily cycles biased 15 % low"),
}  # fmt: skip

DEFAULT_TESTS = (
    "tests/test_risk.py", "tests/test_alerts.py", "tests/test_push_alert.py", "tests/test_scoring.py",
    "tests/test_forecasting.py", "tests/test_backtest.py", "tests/test_headunit.py", "tests/test_alert_store.py",
    "tests/test_forecast_bias.py", "tests/test_ingest.py", "tests/test_main_job.py",
)  # fmt: skip
END_TO_END = "tests/test_main_job.py"
ENVIRONMENT_VARIABLE = "MUTANT"


def patch(module: Any, attribute: str, wrap: Wrap) -> None:
    """Replace `attribute` of `module` (dotted: an attribute of an attribute) by `wrap(original)`."""
    *path, name = attribute.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, name, wrap(getattr(owner, name)))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os
    import subprocess
    import sys
    import tempfile
    import time
    import xml.etree.ElementTree as ElementTree
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutant", action="append", choices=sorted(MUTANTS), help="only these (repeatable)")
    parser.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS), help="test files to run per mutant")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without a mutant")
    args = parser.parse_args(argv)
    names = [None] * (not args.no_baseline) + (args.mutant or list(MUTANTS))

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            report = Path(scratch) / f"{name or 'none'}.xml"
            environment = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(root / "bench" / "mutant_site"), str(root), os.environ.get("PYTHONPATH")])
                ),
            }
            environment.pop(ENVIRONMENT_VARIABLE, None)
            if name:
                environment[ENVIRONMENT_VARIABLE] = name
            began = time.monotonic()
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                            *args.tests], cwd=root, env=environment, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
            cases = ElementTree.parse(report).getroot().iter("testcase")
            run, failed = 0, []
            for case in cases:
                if case.find("skipped") is not None:
                    continue
                run += 1
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.append(f"{case.get('classname')}.{case.get('name')}")
            module = END_TO_END.removesuffix(".py").replace("/", ".")
            end_to_end = any(test.startswith(module + ".") for test in failed)
            rows.append((name or "(none)", len(failed), run, end_to_end, round(time.monotonic() - began)))
            print(f"{rows[-1][0]}: {len(failed)} of {run} failed ({rows[-1][4]} s)", file=sys.stderr, flush=True)
            for test in failed:
                print(f"    {test}", file=sys.stderr)

    print("| mutant | what | tests failed | end-to-end test failed | seconds |")
    print("|---|---|---|---|---|")
    for name, failed_count, run, end_to_end, seconds in rows:
        what = MUTANTS[name].what if name in MUTANTS else "the product as it is"
        print(f"| {name} | {what} | {failed_count} of {run} | {'yes' if end_to_end else 'no'} | {seconds} |")
    weak = [row[0] for row in rows[1 - args.no_baseline :] if row[1] < 5 or not row[3]]
    baseline_failed = not args.no_baseline and rows[0][1] > 0
    return 1 if weak or baseline_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
