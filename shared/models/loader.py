"""The one loader that knows every forecaster kind, so no kind's module has to know the others.

A model directory says its kind in metadata.json (`model_kind`). The kinds' modules are light to import:
only loading an LSTM directory imports torch, and only loading an MLflow one imports mlflow. `KINDS` is
also where each kind declares the packages loading it needs, so the registry can refuse to promote a
model the serving environment could not load (`missing_packages`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from packaging.utils import canonicalize_name

from shared.models import _lightgbm, _lstm, _mlflow
from shared.models._lightgbm import METADATA_FILE
from shared.models.base import Forecaster


class Kind(NamedTuple):
    """How a model kind loads, and the distributions (pip names) it needs beyond numpy and pandas; each
    entry is the alternatives that provide one import (mlflow or the client-only mlflow-skinny)."""

    load: Callable[[Path, dict], Forecaster]
    packages: tuple[tuple[str, ...], ...]


KINDS: dict[str, Kind] = {
    _lightgbm.MODEL_KIND: Kind(_lightgbm.load_lightgbm, (("lightgbm",),)),
    _lstm.MODEL_KIND: Kind(_lstm.load_lstm, (("torch",),)),
    _mlflow.MODEL_KIND: Kind(_mlflow.load_mlflow_forecaster, (("mlflow", "mlflow-skinny"),)),
}


def kind_of(metadata: dict) -> str:
    """The model's kind; a directory without a known `model_kind` is the original LightGBM kind."""
    kind = metadata.get("model_kind")
    return kind if kind in KINDS else _lightgbm.MODEL_KIND


def missing_packages(metadata: dict, installed: Iterable[str]) -> list[str]:
    """The packages loading this model needs that `installed` (distribution names) lacks, as 'a or b'."""
    have = {canonicalize_name(name) for name in installed}
    return [" or ".join(choices) for choices in KINDS[kind_of(metadata)].packages
            if not have & {canonicalize_name(name) for name in choices}]  # fmt: skip


def load_model(model_dir: str | Path) -> Forecaster:
    """Load a model directory written by `BatteryForecaster.save` (a few tens of milliseconds), by
    `LstmForecaster.save` (metadata model_kind "lstm"; only that kind imports torch), or by
    `MlflowForecaster.save` (model_kind "mlflow-pyfunc", e.g. a wrapped AutoML model; only it imports mlflow)."""
    model_dir = Path(model_dir)
    metadata_path = model_dir / METADATA_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no {METADATA_FILE}; not a model directory")
    metadata = json.loads(metadata_path.read_text())
    return KINDS[kind_of(metadata)].load(model_dir, metadata)
