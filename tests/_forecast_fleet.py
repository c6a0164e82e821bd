"""The simulated fleet and trained model the forecasting, risk, backtest and scoring tests share.

500 cars over two years give a backtest with ~4,500 labelled forecasts (~170 failures), enough for the
Brier score to be more than a handful of batteries, and train in seconds (the training rows are capped).
The backtest is judged against the true probabilities too (shared/devtools/true_risk.py). Built once per
test process (functools.cache) and shared by every module that imports it, which a module-scoped fixture
would not do.
"""

from __future__ import annotations

import functools

import pandas as pd

from shared.core.preparation import prepare_telemetry
from shared.devtools.fleet_simulator import Fleet, simulate_fleet
from shared.devtools.true_risk import fleet_truth
from shared.models._lightgbm import BatteryForecaster, train_model

CARS = 500
START, END = "2015-06-01", "2017-05-31"
SEED = 11
# Enough rows for the model to beat the baselines clearly; few enough to train in seconds.
TRAINING_ROWS = 60_000
# Monte Carlo draws of the true probability per undecided forecast (the bench uses 20,000): its standard
# error on the truth's Brier score is about 6e-6, against a Brier score of about 1.1e-3 (README).
TRUTH_DRAWS = 4_000


@functools.cache
def fleet() -> Fleet:
    return simulate_fleet(CARS, START, END, SEED)


@functools.cache
def clean() -> pd.DataFrame:
    prepared, _ = prepare_telemetry(fleet().telemetry)
    return prepared


@functools.cache
def model() -> BatteryForecaster:
    return train_model(clean(), fleet().cars, quality={"source": "test fleet"}, max_training_rows=TRAINING_ROWS,
                       truth=fleet_truth(fleet(), TRUTH_DRAWS))  # fmt: skip
