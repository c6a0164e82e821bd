"""The one loader that knows every forecaster kind, so no kind's module has to know the others.

A model directory says its kind in metadata.json (`model_kind`). The kinds' modules are light to import:
only loading an LSTM directory imports torch, and only loading an MLflow one imports mlflow.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.models import _lstm, _mlflow
from shared.models._lightgbm import METADATA_FILE, load_lightgbm
from shared.models.base import Forecaster


def load_model(model_dir: str | Path) -> Forecaster:
    """Load a model directory written by `BatteryForecaster.save` (a few tens of milliseconds), by
    `LstmForecaster.save` (metadata model_kind "lstm"; only that kind imports torch), or by
    `MlflowForecaster.save` (model_kind "mlflow-pyfunc", e.g. a wrapped AutoML model; only it imports mlflow)."""
    model_dir = Path(model_dir)
    metadata_path = model_dir / METADATA_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no {METADATA_FILE}; not a model directory")
    metadata = json.loads(metadata_path.read_text())
    if metadata.get("model_kind") == _lstm.MODEL_KIND:
        return _lstm.load_lstm(model_dir, metadata)
    if metadata.get("model_kind") == _mlflow.MODEL_KIND:
        return _mlflow.load_mlflow_forecaster(model_dir, metadata)
    return load_lightgbm(model_dir, metadata)
