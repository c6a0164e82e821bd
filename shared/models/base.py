"""`Forecaster`: what every model kind (LightGBM, LSTM, a wrapped MLflow model) offers its callers.

Exactly what scoring, the endpoint, the backtest, explanation, tracking and the registry use of a model,
and no more: a kind may have more (the LightGBM kind's booster and feature matrix, which its tree
explanations read), but a caller that needs only this must not reach past it.
tests/test_forecaster_conformance.py checks every kind against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from shared.core.risk import RiskCalibration
from shared.core.windows import BatteryWindows


@runtime_checkable
class Forecaster(Protocol):
    # metadata.json's content: version, window_days, model_kind, backtest metrics, ... (what save writes)
    metadata: dict
    # The forecast-error distribution that turns a forecast into a failure probability; None until trained.
    calibration: RiskCalibration | None

    @property
    def version(self) -> str:
        """The model's version (metadata["version"]): what the registry, alerts and responses name."""
        ...

    @property
    def window_days(self) -> int:
        """How many days of history before the as-of day the model reads (the windows it is given)."""
        ...

    def forecast(self, windows: BatteryWindows) -> np.ndarray:
        """(len(windows), HORIZON_DAYS) daily cycles for the days after each battery's as-of day, >= 0."""
        ...

    def wear_beyond(self, windows: BatteryWindows) -> np.ndarray | None:
        """(len(windows), risk.BEYOND_DAYS) the use on each day after the horizon relative to the forecast's
        mean daily rate, where the kind knows a season (days to rated life extrapolate along it); None = no
        season known, the mean rate throughout."""
        ...

    def save(self, model_dir: str | Path) -> None:
        """Write the model directory `shared.models.loader.load_model` reads back (metadata.json first)."""
        ...
