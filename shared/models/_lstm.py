"""LSTM forecaster: the lab's PyTorch contender to the default LightGBM model, behind the same interface.

What the lab did, and what is kept: the network reads the last 75 daily values of one battery through
two LSTM layers of 50 units. What changes, and why:
- It predicts the 30 days AT ONCE (a linear head on the last hidden state), not day by day. Feeding a
  prediction back in for day 2..30 compounds its errors and costs 30 sequential passes; the direct head
  is trained on exactly the 30 days risk.py sums, in one pass per battery.
- It is global (one network for the fleet), trained on (battery, origin) windows sampled like the
  LightGBM model's, with the same hidden short histories and silent spells, so it serves the endpoint's
  one-day requests and the batch's stale cars too.
- Scale-free, like the default model: every input and the target are ratios to the battery's recent
  level (its last 28 known days), and the forecast is the predicted ratios times that level.
- Unknown days enter as 0 with a "known" flag channel; the calendar (weekday, season) of each input day
  is an input too, so the network can place its weekly rhythm on the horizon's weekdays.

It is a model kind, not a separate product: `LstmForecaster` has the `BatteryForecaster` surface
(`forecast(windows)`, `save(dir)`, `metadata`, `version`, `calibration`, `window_days`), its directory
is metadata.json (model_kind "lstm") + lstm_weights.pt, `loader.load_model` loads either kind, and
`train_lstm` runs the same backtest (backtest.py) and ships the same kind of risk calibration (risk.py).

torch is an optional extra (requirements-lstm.txt): it is imported only inside the functions that need
it, so importing this module, or loading a LightGBM model, never needs it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shared.core.risk import ALERT_THRESHOLD, HORIZON_DAYS, RiskCalibration
from shared.core.telemetry import InputError
from shared.core.windows import BatteryWindows, FleetHistory, build_history
from shared.models._lightgbm import (
    LEVEL_DAYS,
    METADATA_FILE,
    hide_some_days,
    json_default,
    sample_origins,
    training_record,
)
from shared.models.backtest import BacktestResult, run_backtest

if TYPE_CHECKING:
    import torch

MODEL_KIND = "lstm"
MODEL_TITLE = "LSTM model"  # how reports name it (backtest tables, verdict)
WEIGHTS_FILE = "lstm_weights.pt"
TRAINING_CURVES_PNG = "training_results.png"
INPUT_DAYS = 75  # the lab's window
HIDDEN_UNITS = 50
LAYERS = 2
CHANNELS = ["cycles_ratio", "minutes_ratio", "known", "weekday_sin", "weekday_cos", "season_sin", "season_cos"]
# Training budget, measured in CPU seconds on the 40-car test fleet (bench: README "LSTM contender").
# Origins of one battery a few days apart are near duplicates, so more rows buy little. A larger step and
# smaller batches reach in 6 epochs the validation loss 10 epochs of 512-row batches at 3e-3 reached.
MAX_TRAINING_ROWS = 4_000
EPOCHS = 6
BATCH_SIZE = 256
LEARNING_RATE = 6e-3
# Training stops when the validation loss has not improved for this many epochs.
PATIENCE = 2
# The latest share of training origins is held out for the validation curve and for picking the epoch.
VALIDATION_SHARE = 0.15
# One thread: a second one cost 2.7x the CPU time for no gain in wall time on a 2-core machine shared with
# other work (63 s against 23 s of CPU for the same training), and the batches are too small to split well.
TORCH_THREADS = 1
# Ratios are clipped so one glitchy day cannot blow up a window's inputs.
MAX_RATIO = 10.0


@dataclass
class LstmForecaster:
    """A trained LSTM, its input scaling, its failure-risk calibration and its metadata."""

    network: Any  # torch.nn.Module (typed loosely so this module imports without torch)
    level_prior: float
    minutes_prior: float
    calibration: RiskCalibration | None = None
    metadata: dict = field(default_factory=dict)
    # The training's backtest with its per-battery outcomes (figures, fairness); in memory only, not saved.
    backtest: BacktestResult | None = field(default=None, repr=False)

    @property
    def version(self) -> str:
        return self.metadata.get("version", "unversioned")

    @property
    def window_days(self) -> int:
        return INPUT_DAYS

    def forecast(self, windows: BatteryWindows) -> np.ndarray:
        """(n, 30) forecast daily cycles for the 30 days after each battery's as-of day."""
        if windows.window_days != self.window_days:
            raise ValueError(f"windows are {windows.window_days} days wide; this model needs {self.window_days}")
        torch = _torch()
        inputs, level = network_inputs(windows, self.level_prior, self.minutes_prior)
        self.network.eval()
        with torch.inference_mode():
            ratio = self.network(torch.from_numpy(inputs)).numpy() if len(windows) else np.zeros((0, HORIZON_DAYS))
        return np.maximum(ratio.astype(np.float64), 0.0) * level[:, None]

    def wear_beyond(self, windows: BatteryWindows) -> None:
        """No season known past the horizon: days to rated life extrapolate the forecast's mean rate."""
        return None

    def save(self, model_dir: str | Path) -> None:
        """Write metadata.json and the network's weights into model_dir."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        _torch().save(self.network.state_dict(), model_dir / WEIGHTS_FILE)
        metadata = {
            **self.metadata,
            "model_kind": MODEL_KIND,
            "window_days": self.window_days,
            "level_prior": self.level_prior,
            "minutes_prior": self.minutes_prior,
        }
        if self.calibration is not None:
            metadata["calibration"] = self.calibration.to_dict()
        (model_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=json_default))


def load_lstm(model_dir: str | Path, metadata: dict) -> LstmForecaster:
    """The model in a directory written by `LstmForecaster.save` (`loader.load_model` calls this)."""
    torch = _torch()
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{model_dir}: no {WEIGHTS_FILE}; not an LSTM model directory")
    network = _network(**metadata["network"])
    network.load_state_dict(torch.load(weights, weights_only=True))
    calibration = metadata.get("calibration")
    return LstmForecaster(
        network=network,
        level_prior=float(metadata["level_prior"]),
        minutes_prior=float(metadata["minutes_prior"]),
        calibration=RiskCalibration.from_dict(calibration) if calibration else None,
        metadata=metadata,
    )


def network_inputs(windows: BatteryWindows, level_prior: float, minutes_prior: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, 75, len(CHANNELS)) float32 inputs and the (n,) level the predicted ratios multiply.

    The level is the mean of the last 28 known days (the whole window's if none; the fleet prior if the
    window is empty), floored at 5% of the prior so a barely used battery keeps finite ratios.
    """
    cycles = windows.daily_cycles[:, -INPUT_DAYS:]
    minutes = windows.trip_minutes[:, -INPUT_DAYS:]
    level = _level(cycles, level_prior)
    minutes_level = _level(minutes, minutes_prior)
    known = ~np.isnan(cycles)
    day = windows.as_of[:, None] - np.arange(INPUT_DAYS - 1, -1, -1).astype("timedelta64[D]")
    weekday = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday: Monday = 0
    day_of_year = (day - day.astype("datetime64[Y]")).astype(np.float64)
    weekday_angle = 2 * np.pi * weekday / 7
    season_angle = 2 * np.pi * day_of_year / 365.25
    channels = [
        np.clip(np.nan_to_num(cycles / level[:, None]), 0, MAX_RATIO),
        np.clip(np.nan_to_num(minutes / minutes_level[:, None]), 0, MAX_RATIO),
        known.astype(np.float64),
        np.sin(weekday_angle),
        np.cos(weekday_angle),
        np.sin(season_angle),
        np.cos(season_angle),
    ]
    return np.stack(channels, axis=2).astype(np.float32), level


def train_lstm(
    clean: pd.DataFrame,
    *,
    quality: dict | None = None,
    progress: Callable[[str], None] | None = None,
    threshold: float = ALERT_THRESHOLD,
    max_training_rows: int = MAX_TRAINING_ROWS,
    epochs: int = EPOCHS,
    seed: int = 0,
) -> LstmForecaster:
    """Backtest (same origins, baselines and risk code as the default model), then fit on all data.

    Mirrors `forecasting.train_model`, so the two kinds' metadata.json compare field by field.
    The loss curves of the final fit are in `metadata["training_curves"]` (`training_curves(model)`).
    """
    say = progress or (lambda message: None)
    history = build_history(clean)

    def fit(history: FleetHistory, last_target_day: int) -> LstmForecaster:
        return fit_lstm(history, last_target_day, max_training_rows=max_training_rows, epochs=epochs, seed=seed,
                        progress=say)  # fmt: skip

    backtest = run_backtest(
        history, fit, threshold=threshold, progress=say, window_days=INPUT_DAYS, model_title=MODEL_TITLE
    )
    say("training the final LSTM on all data")
    model = fit(history, history.n_days - 1)
    model.calibration = backtest.final_calibration
    model.backtest = backtest
    torch = _torch()
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.network.state_dict().values())).hexdigest()
    model.metadata.update(
        training_record(clean, history, backtest.summary, quality, f"lstm-{digest[:8]}", {"torch": torch.__version__})
    )
    say(f"model {model.version} trained")
    return model


def fit_lstm(
    history: FleetHistory,
    last_target_day: int,
    *,
    max_training_rows: int = MAX_TRAINING_ROWS,
    epochs: int = EPOCHS,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> LstmForecaster:
    """Fit on origins whose 30 target days all lie on or before `last_target_day` (no risk calibration).

    The latest VALIDATION_SHARE of origins is the validation set (time-based, like the backtest); the
    weights of the epoch with the lowest validation loss are kept.
    """
    torch = _torch()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    battery, origin = sample_origins(history, last_target_day, max_training_rows, rng)
    if len(battery) < 10:
        raise InputError(f"not enough history to train the LSTM: {len(battery)} windows with "
                         f"{HORIZON_DAYS + 1} reported days in a row (need 10)")  # fmt: skip
    windows = hide_some_days(history.windows_at(origin, battery, INPUT_DAYS), rng)
    actual = history.daily_cycles[battery[:, None], origin[:, None] + np.arange(1, HORIZON_DAYS + 1)]
    level_prior = _fleet_level(history.daily_cycles[:, : last_target_day + 1])
    minutes_prior = _fleet_level(history.trip_minutes[:, : last_target_day + 1])
    inputs, level = network_inputs(windows, level_prior, minutes_prior)
    target = (actual / level[:, None]).astype(np.float32)

    validation = origin >= np.quantile(origin, 1 - VALIDATION_SHARE)
    if validation.all() or not validation.any():  # all origins on one day: hold out a random share
        validation = rng.random(len(origin)) < VALIDATION_SHARE
    network = _network(channels=len(CHANNELS), hidden=HIDDEN_UNITS, layers=LAYERS, horizon=HORIZON_DAYS)
    curves = _train_network(network, inputs, target, validation, epochs, rng, progress or (lambda message: None))
    best_epoch = int(curves["validation_loss"].idxmin())
    network.load_state_dict(curves.attrs.pop("best_state"))
    model = LstmForecaster(network=network, level_prior=level_prior, minutes_prior=minutes_prior)
    model.metadata.update(
        model_kind=MODEL_KIND,
        features=CHANNELS,
        window_days=INPUT_DAYS,
        horizon_days=HORIZON_DAYS,
        training_rows=int((~validation).sum()),
        validation_rows=int(validation.sum()),
        training_targets_until=str(history.first_day + last_target_day),
        network={"channels": len(CHANNELS), "hidden": HIDDEN_UNITS, "layers": LAYERS, "horizon": HORIZON_DAYS},
        lstm_params={
            "epochs": epochs,
            "epochs_run": len(curves),
            "best_epoch": best_epoch,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "patience": PATIENCE,
            "torch_threads": TORCH_THREADS,
            "seed": seed,
        },
        training_curves={column: curves[column].tolist() for column in curves.columns},
    )
    return model


def training_curves(metadata: dict) -> pd.DataFrame:
    """The final fit's per-epoch train/validation loss, as `report.training_curves_figure` plots it."""
    curves = pd.DataFrame(metadata["training_curves"], dtype=np.float64)
    curves.index = pd.RangeIndex(1, len(curves) + 1, name="epoch")
    return curves


def save_training_curves(model: LstmForecaster, model_dir: str | Path) -> Path:
    """training_results.png (train vs validation loss by epoch) in the model directory."""
    from shared.models.report import training_curves_figure

    path = Path(model_dir) / TRAINING_CURVES_PNG
    figure = training_curves_figure(training_curves(model.metadata), title=f"LSTM {model.version}")
    figure.savefig(path, dpi=80)
    return path


def _train_network(
    network: torch.nn.Module,
    inputs: np.ndarray,
    target: np.ndarray,
    validation: np.ndarray,
    epochs: int,
    rng: np.random.Generator,
    say: Callable[[str], None],
) -> pd.DataFrame:
    """Adam on mean squared ratio error, stopped early after PATIENCE epochs without a better validation loss;
    per-epoch losses, with the best epoch's weights in `.attrs`."""
    torch = _torch()
    train_x, train_y = torch.from_numpy(inputs[~validation]), torch.from_numpy(target[~validation])
    valid_x, valid_y = torch.from_numpy(inputs[validation]), torch.from_numpy(target[validation])
    optimiser = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    loss_of = torch.nn.MSELoss()
    losses: dict[str, list[float]] = {"train_loss": [], "validation_loss": []}
    best_state, best, best_epoch = None, np.inf, 0
    for epoch in range(1, epochs + 1):
        network.train()
        order = torch.from_numpy(rng.permutation(len(train_x)))
        total = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimiser.zero_grad()
            loss = loss_of(network(train_x[batch]), train_y[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        network.eval()
        with torch.inference_mode():
            validation_loss = float(loss_of(network(valid_x), valid_y))
        losses["train_loss"].append(total / len(train_x))
        losses["validation_loss"].append(validation_loss)
        if validation_loss < best:
            best, best_epoch = validation_loss, epoch
            best_state = {name: value.clone() for name, value in network.state_dict().items()}
        say(f"LSTM epoch {epoch}/{epochs}: train loss {total / len(train_x):.4f}, validation {validation_loss:.4f}")
        if epoch - best_epoch >= PATIENCE:
            say(f"LSTM: no better validation loss for {PATIENCE} epochs; stopping at epoch {epoch}")
            break
    curves = pd.DataFrame(losses, index=pd.RangeIndex(1, len(losses["train_loss"]) + 1, name="epoch"))
    curves.attrs["best_state"] = best_state
    return curves


def _network(channels: int, hidden: int, layers: int, horizon: int) -> torch.nn.Module:
    """Stacked LSTM over the input days; a linear head maps the last hidden state to the 30 day ratios."""
    torch = _torch()

    class Network(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(channels, hidden, num_layers=layers, batch_first=True)
            self.head = torch.nn.Linear(hidden, horizon)

        def forward(self, days: torch.Tensor) -> torch.Tensor:
            sequence, _ = self.lstm(days)
            return self.head(sequence[:, -1, :]) + 1.0  # start at "same as recent level"

    return Network()


def _level(values: np.ndarray, prior: float) -> np.ndarray:
    """Mean of the last LEVEL_DAYS known values (else of the whole window, else the prior), floored."""
    recent, everything = values[:, -LEVEL_DAYS:], values
    level = np.full(len(values), np.nan)
    for part in (everything, recent):  # later parts win where they are known
        count = np.sum(~np.isnan(part), axis=1)
        mean = np.nansum(part, axis=1) / np.maximum(count, 1)
        level = np.where(count > 0, mean, level)
    return np.maximum(np.where(np.isnan(level), prior, level), 0.05 * prior)


def _fleet_level(values: np.ndarray) -> float:
    """The fleet's median recent level: what a battery with an empty window is assumed to use."""
    levels = _level(values, np.nan)
    return float(np.median(levels[~np.isnan(levels)])) if not np.isnan(levels).all() else 1.0


def _torch():
    """torch, imported on first use with its CPU threads capped (the machine is shared; so is the host)."""
    import torch

    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
    return torch
