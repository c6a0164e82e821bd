"""Forecasting: one global LightGBM model that forecasts each battery's Daily_Cycles_Used for 30 days.

Why this shape (measured against the alternatives in the backtest; see the report):
- The model predicts the battery's MEAN daily cycles over the next 30 days, one row per battery. The
  30-day total is what decides whether a battery reaches rated life (risk.py), so that is what the
  trees are trained on, and scoring costs one prediction per battery instead of one per battery-day.
  A direct per-horizon model (one row per battery, origin and h = 1..30) was tried first: on the
  2,000-car backtest it was worse on the 30-day total (mean relative error 7.1 % against 6.1 %), no
  better on daily NRMSE (0.0279 against 0.0274) and ~30x slower to score.
- The days are then shaped by the battery's own weekday rhythm (mean cycles by weekday over its
  window), shrunk towards flat by as much as its noise warrants; the shrinkage is fitted on the
  training data. The forecast's 30 days always add up to 30 x the predicted mean.
- Scale-free target: the mean is predicted as a RATIO to the battery's recent level (its last 28 known
  days, topped up with the fleet prior below a week of them: recent_level), so heavy and light users with
  the same seasonal and weekly pattern teach the trees the same thing; the level itself stays a feature
  for whatever does depend on it. With a car table the level is first moved by the region's seasonal
  change in wear per minute, learnt from the training history (region_season_profile): the cold region's
  thaw halves its wear from one day to the next, which one year of training shows the trees too rarely.
- Features only from the (n, W) window arrays (windows.py), so the batch path, the endpoint and training
  compute them with the same numpy code. Short or empty windows give NaN features, which LightGBM routes
  down its learned "missing" branch, and a fleet prior stands in for an unknown level.
- Car attributes (Region, Make, Engine_Type, Model_Year), when a car table is given, as categorical
  features through a Car_ID lookup kept in the model directory; unknown cars get missing values.

`train_model` runs the time-based backtest (backtest.py) first, which also calibrates the failure risk
(risk.py) on origins the model did not train on, then fits the final model on all data.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from shared.core.monitoring import feature_reference
from shared.core.risk import ALERT_THRESHOLD, BEYOND_DAYS, HORIZON_DAYS, RiskCalibration
from shared.core.telemetry import CAR_ID, DATE, InputError
from shared.core.windows import DEFAULT_WINDOW_DAYS, BatteryWindows, FleetHistory, build_history
from shared.models.backtest import BacktestResult, TruthSource, run_backtest
from shared.models.champion import METADATA_FILE

MODEL_KIND = "lightgbm-30-day-mean-ratio+weekday-shape"
MODEL_FILE = "model.txt"
CARS_FILE = "cars.csv"
CAR_CATEGORIES = ["Region", "Make", "Engine_Type"]
CAR_NUMBERS = ["Model_Year"]
LEVEL_DAYS = 28
MIN_LEVEL_DAYS = 7  # known days a level is trusted on alone (recent_level)
# Training rows are (battery, origin day) pairs sampled from all days with 30 known days after them.
# Neighbouring origins of one battery are near duplicates, so a sample buys the time budget cheaply.
MAX_TRAINING_ROWS = 150_000
# Share of training windows cut to a random short history (a new battery, a one-day request), and share
# whose last days are hidden (a car silent for up to two weeks before the batch's as-of day).
SHORT_HISTORY_SHARE = 0.15
STALE_SHARE = 0.10
MAX_STALE_DAYS = 13
# Share of training rows whose car attributes are hidden, as for a car missing from the car table.
UNKNOWN_CAR_SHARE = 0.05
LIGHTGBM_PARAMS = {
    "objective": "regression",
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.5,  # each tree sees half the features: steadier near rated life (README, issue 17)
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 127,
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}
BOOSTING_ROUNDS = 300
# Candidate weekday-shrinkage strengths (in days of evidence) tried when fitting the weekday shape.
SHRINKAGE_GRID = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
SHRINKAGE_SAMPLE = 20_000


@dataclass
class BatteryForecaster:
    """The trained global model, its failure-risk calibration and the metadata that describes it."""

    booster: lgb.Booster
    level_prior: float
    weekday_shrinkage: float
    cars: pd.DataFrame | None = None  # Car_ID + CAR_CATEGORIES (category codes) + CAR_NUMBERS
    # (regions, 366) each region's cycles per driving minute by day of year, relative to each battery's own
    # (region_season_profile); None without a car table
    region_season: np.ndarray | None = None
    calibration: RiskCalibration | None = None
    metadata: dict = field(default_factory=dict)
    # The training's backtest with its per-battery outcomes (figures, fairness); in memory only, not saved.
    backtest: BacktestResult | None = field(default=None, repr=False)

    @property
    def version(self) -> str:
        return self.metadata.get("version", "unversioned")

    @property
    def window_days(self) -> int:
        return int(self.metadata.get("window_days", DEFAULT_WINDOW_DAYS))

    def forecast(self, windows: BatteryWindows) -> np.ndarray:
        """(n, 30) forecast daily cycles for the 30 days after each battery's as-of day."""
        if windows.window_days != self.window_days:
            raise ValueError(f"windows are {windows.window_days} days wide; this model needs {self.window_days}")
        features, level, shape = self._features(windows)
        ratio = self.booster.predict(features, num_threads=LIGHTGBM_PARAMS["num_threads"]) if len(windows) else []
        return np.maximum(np.asarray(ratio), 0.0)[:, None] * level[:, None] * shape

    def wear_beyond(self, windows: BatteryWindows) -> np.ndarray | None:
        """(n, BEYOND_DAYS) the region's wear on each day after the horizon relative to the horizon's mean
        (region_season_beyond); None without a car table or a season profile (a model saved before it)."""
        if self.cars is None or self.region_season is None:
            return None
        return region_season_beyond(self.region_season, encoded_region(self.cars, windows.car_id), windows.as_of)

    def feature_matrix(self, windows: BatteryWindows) -> np.ndarray:
        """(n, len(features)) float32 inputs of the booster, columns named by metadata["features"]; the
        explanation code walks them through the trees (path contributions)."""
        return self._features(windows)[0]

    def save(self, model_dir: str | Path) -> None:
        """Write metadata.json, the LightGBM model text and the car lookup into model_dir."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(model_dir / MODEL_FILE)
        if self.cars is not None:
            self.cars.to_csv(model_dir / CARS_FILE, index=False)
        metadata = {**self.metadata, "level_prior": self.level_prior, "weekday_shrinkage": self.weekday_shrinkage}
        if self.region_season is not None:  # JSON has no NaN: a day a region has no data is null
            metadata["region_season"] = np.where(np.isnan(self.region_season), None, self.region_season).tolist()
        if self.calibration is not None:
            metadata["calibration"] = self.calibration.to_dict()
        (model_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=json_default))

    def _features(self, windows: BatteryWindows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One feature row per battery, its level (what the ratio multiplies) and its (n, 30) day shape."""
        origin, level = _origin_features(windows, self.level_prior)
        shape = weekday_shape(windows.daily_cycles, self.weekday_shrinkage)
        calendar = _calendar_features(windows.as_of, shape)
        cars = self._car_features(windows)
        # The ratio is taken against the level moved by the region's season (region_season_profile); a model
        # saved before the profile existed has none and a booster without its feature, and scores as it did.
        if cars and self.region_season is not None:
            season = region_season_ratio(self.region_season, cars["Region"], windows.as_of)
            calendar["region_season_ratio"] = season
            level = level * np.where(np.isnan(season), 1.0, season)
        columns = [*origin.values(), *calendar.values(), *cars.values()]
        return np.column_stack(columns).astype(np.float32), level, shape

    def _car_features(self, windows: BatteryWindows) -> dict[str, np.ndarray]:
        if self.cars is None:
            return {}
        position = pd.Index(self.cars[CAR_ID]).get_indexer(windows.car_id.astype(str))
        known = position >= 0
        return {
            name: np.where(known, self.cars[name].to_numpy(np.float64)[position], np.nan)
            for name in [*CAR_CATEGORIES, *CAR_NUMBERS]
        }


def load_lightgbm(model_dir: Path, metadata: dict) -> BatteryForecaster:
    """The model in a directory written by `BatteryForecaster.save` (`loader.load_model` calls this)."""
    calibration = metadata.get("calibration")
    cars_path = model_dir / CARS_FILE
    cars = pd.read_csv(cars_path, dtype={CAR_ID: str}) if cars_path.is_file() else None
    season = metadata.get("region_season")
    return BatteryForecaster(
        booster=lgb.Booster(model_file=str(model_dir / MODEL_FILE)),
        level_prior=float(metadata["level_prior"]),
        weekday_shrinkage=float(metadata["weekday_shrinkage"]),
        cars=cars,
        region_season=None if season is None else np.array(season, dtype=np.float64),  # null -> NaN
        calibration=RiskCalibration.from_dict(calibration) if calibration else None,
        metadata=metadata,
    )


def train_model(
    clean: pd.DataFrame,
    cars: pd.DataFrame | None = None,
    *,
    quality: dict | None = None,
    progress: Callable[[str], None] | None = None,
    threshold: float = ALERT_THRESHOLD,
    max_training_rows: int = MAX_TRAINING_ROWS,
    seed: int = 0,
    truth: TruthSource | None = None,
) -> BatteryForecaster:
    """Backtest, then fit the final model on all of `clean`; everything is recorded in `metadata`.

    `truth` (a simulated fleet's true probabilities, backtest.py) adds the comparison with the best possible.

    The failure-risk calibration shipped with the model is the backtest model's standardised 30-day-sum
    errors on every held-out origin (calibration period and evaluation period): it comes from a model
    trained on slightly less data, so if anything it is a little wide, never optimistic.
    """
    say = progress or (lambda message: None)
    say(f"building the fleet history from {len(clean):,} rows")
    history = build_history(clean)
    car_table = encode_cars(cars) if cars is not None else None

    def fit(history: FleetHistory, last_target_day: int) -> BatteryForecaster:
        return fit_forecaster(history, last_target_day, car_table, max_training_rows=max_training_rows, seed=seed)

    backtest = run_backtest(history, fit, threshold=threshold, progress=say, truth=truth)
    say("training the final model on all data")
    model = fit(history, history.n_days - 1)
    model.calibration = backtest.final_calibration
    model.backtest = backtest
    digest = hashlib.sha256(model.booster.model_to_string().encode()).hexdigest()[:8]
    model.metadata.update(
        training_record(clean, history, backtest.summary, quality, digest, {"lightgbm": lgb.__version__}),
        car_categories=car_category_names(cars) if cars is not None else None,
        input_reference=feature_reference(clean, cars),  # per segment too, where the car table is known
    )
    say(f"model {model.version} trained")
    return model


def training_record(
    clean: pd.DataFrame,
    history: FleetHistory,
    backtest: dict,
    quality: dict | None,
    digest: str,
    libraries: dict[str, str],
) -> dict:
    """What every model kind records about its training: version, time, data, backtest, libraries.

    The version is the UTC time plus a short digest of the fitted parameters, so two trainings on the
    same data at the same second still get different names if they learned different things.
    """
    trained_at = datetime.now(UTC)
    return {
        "version": f"{trained_at:%Y%m%dT%H%M%SZ}-{digest}",
        "trained_at": trained_at.isoformat(timespec="seconds"),
        "data_range": {"start": f"{clean[DATE].min():%Y-%m-%d}", "end": f"{clean[DATE].max():%Y-%m-%d}"},
        "n_batteries": len(history.battery_id),
        "n_cars": int(pd.unique(history.car_id).size),
        "backtest": backtest,
        "input_reference": feature_reference(clean),  # what the monitor measures input drift against
        "data_quality": quality or {},
        "library_versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
            **libraries,
        },
    }


def fit_forecaster(
    history: FleetHistory,
    last_target_day: int,
    cars: pd.DataFrame | None = None,
    *,
    max_training_rows: int = MAX_TRAINING_ROWS,
    seed: int = 0,
) -> BatteryForecaster:
    """Fit on origins whose 30 target days all lie on or before `last_target_day` (no risk calibration).

    `cars` is a table from `encode_cars`, or None to train without car attributes.
    """
    rng = np.random.default_rng(seed)
    battery, origin = sample_origins(history, last_target_day, max_training_rows, rng)
    if len(battery) == 0:
        raise InputError(f"not enough history to train: no battery has {HORIZON_DAYS + 1} reported days in a row")
    windows = hide_some_days(history.windows_at(origin, battery), rng)
    actual = history.daily_cycles[battery[:, None], origin[:, None] + np.arange(1, HORIZON_DAYS + 1)]
    model = BatteryForecaster(
        booster=None,
        level_prior=_level_prior(history, last_target_day),
        weekday_shrinkage=fit_weekday_shrinkage(windows.daily_cycles, actual),
        cars=cars,
        region_season=None if cars is None else region_season_profile(history, last_target_day, cars),
    )
    features, level, _ = model._features(windows)
    names = feature_names(cars is not None)
    if cars is not None:  # teach the trees what an unknown car looks like: its attributes (and region's season) missing
        unknown = rng.random(len(features)) < UNKNOWN_CAR_SHARE
        of_car = [i for i, name in enumerate(names) if name in {"region_season_ratio", *CAR_CATEGORIES, *CAR_NUMBERS}]
        season = features[:, names.index("region_season_ratio")].astype(np.float64)
        level = np.where(unknown & np.isfinite(season), level / season, level)  # as an unknown car's is: no season
        features[np.ix_(unknown, of_car)] = np.nan
    data = lgb.Dataset(
        features,
        label=actual.mean(axis=1) / level,
        feature_name=names,
        categorical_feature=[n for n in names if n in CAR_CATEGORIES],
        free_raw_data=True,
    )
    model.booster = lgb.train({**LIGHTGBM_PARAMS, "seed": seed}, data, num_boost_round=BOOSTING_ROUNDS)
    model.metadata.update(
        model_kind=MODEL_KIND,
        features=names,
        window_days=DEFAULT_WINDOW_DAYS,
        horizon_days=HORIZON_DAYS,
        training_rows=int(data.num_data()),
        training_targets_until=str(history.first_day + last_target_day),
        lightgbm_params={**LIGHTGBM_PARAMS, "boosting_rounds": BOOSTING_ROUNDS},
    )
    return model


def feature_names(with_cars: bool) -> list[str]:
    """The model's feature columns in order: battery window, calendar (with the region's season when the
    car table is known), car attributes."""
    names = [*ORIGIN_FEATURES, *CALENDAR_FEATURES]
    return [*names, "region_season_ratio", *CAR_CATEGORIES, *CAR_NUMBERS] if with_cars else names


# Days of the centred window that smooths a region's day-of-year profile (a week: a step such as the cold
# region's thaw stays a step within a few days).
SEASON_SMOOTHING_DAYS = 7


def region_season_profile(history: FleetHistory, last_day: int, cars: pd.DataFrame) -> np.ndarray:
    """(regions, 366) each region's cycles per driving minute on each day of the year, relative to each
    battery's own median, from the history up to `last_day` (years averaged, a week's centred smoothing).

    Why: a climate's wear changes on the calendar, the same every year and for every car of the region
    (the cold region's thaw halves the wear from one day to the next). One year of training has only a few
    hundred windows across such a step, too few for the trees to learn it from Region and day of year alone;
    the region's own profile from past years states it directly. NaN where a region has no data that day.
    """
    region = encoded_region(cars, history.car_id)
    day_of_year = _day_of_year((history.first_day + np.arange(last_day + 1)).astype("datetime64[D]"))
    half = SEASON_SMOOTHING_DAYS // 2
    codes = cars["Region"].dropna()  # a car table without regions gives no profile (every ratio unknown)
    profile = np.full((int(codes.max()) + 1 if len(codes) else 0, 366), np.nan)
    for code in range(len(profile)):  # a region at a time: its share of the history in memory, not 3 copies of all
        rows = np.flatnonzero(region == code)
        if not len(rows):
            continue
        cycles, minutes = history.daily_cycles[rows, : last_day + 1], history.trip_minutes[rows, : last_day + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            per_minute = np.where(minutes > 1.0, cycles / minutes, np.nan)
        own = np.nanmedian(np.where(np.isnan(per_minute).all(axis=1, keepdims=True), 1.0, per_minute), axis=1)
        mine = per_minute / own[:, None]
        by_day = _nan_median_columns(mine)
        sums = [np.bincount(day_of_year, weights=w, minlength=366) for w in (np.nan_to_num(by_day), ~np.isnan(by_day))]
        total, count = (np.convolve(np.concatenate([x[-half:], x, x[:half]]), np.ones(2 * half + 1), "valid")
                        for x in sums)  # fmt: skip
        profile[code] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return profile


def region_season_ratio(profile: np.ndarray | None, region: np.ndarray, as_of: np.ndarray) -> np.ndarray:
    """The region's wear per minute over the 30 days after each as-of day relative to its last 28 days
    (region_season_profile); NaN for an unknown region or a day of the year the profile has not seen."""
    ahead = _region_days(profile, region, as_of, np.arange(1, HORIZON_DAYS + 1))
    behind = _region_days(profile, region, as_of, -np.arange(LEVEL_DAYS))
    return ahead.mean(axis=1) / behind.mean(axis=1)


def region_season_beyond(profile: np.ndarray | None, region: np.ndarray, as_of: np.ndarray) -> np.ndarray:
    """(n, BEYOND_DAYS) the region's wear per minute on each of the days 31..90 after each as-of day relative
    to its mean over the 30 days after it (region_season_profile); NaN for an unknown region or day.

    Why: the forecast is a 30-day total; past it days to rated life extrapolate its rate, and where the
    season changes the wear (the cold region's thaw halves it) that rate is off by the season's step."""
    ahead = _region_days(profile, region, as_of, np.arange(1, HORIZON_DAYS + BEYOND_DAYS + 1))
    return ahead[:, HORIZON_DAYS:] / ahead[:, :HORIZON_DAYS].mean(axis=1, keepdims=True)


def _region_days(profile: np.ndarray | None, region: np.ndarray, as_of: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n, len(offsets)) the region's profile on the days `offsets` after each as-of day; NaN where unknown."""
    n = len(as_of)
    if profile is None or not len(profile):
        return np.full((n, len(offsets)), np.nan)
    known = ~np.isnan(region) & (np.nan_to_num(region, nan=-1) < len(profile))
    code = np.where(known, np.nan_to_num(region, nan=0), 0).astype(np.int64)
    day = _day_of_year(np.asarray(as_of).astype("datetime64[D]"))
    return np.where(known[:, None], profile[code[:, None], (day[:, None] + offsets) % 366], np.nan)


def encoded_region(cars: pd.DataFrame, car_id: np.ndarray) -> np.ndarray:
    """Each car's Region code in an `encode_cars` table (NaN for a car not in it)."""
    position = pd.Index(cars[CAR_ID]).get_indexer(np.asarray(car_id).astype(str))
    return np.where(position >= 0, cars["Region"].to_numpy(np.float64)[position], np.nan)


def _day_of_year(days: np.ndarray) -> np.ndarray:
    return (days - days.astype("datetime64[Y]")).astype(np.int64)


def _nan_median_columns(values: np.ndarray) -> np.ndarray:
    """Column medians of the known values, NaN for a column with none (np.nanmedian warns there)."""
    known = ~np.isnan(values).all(axis=0)
    out = np.full(values.shape[1], np.nan)
    out[known] = np.nanmedian(values[:, known], axis=0)
    return out


def weekday_shape(daily_cycles: np.ndarray, shrinkage: float) -> np.ndarray:
    """(n, 30) multipliers, mean 1 over the 30 days, from each battery's weekday rhythm.

    A weekday's factor is its mean over the window relative to the mean of all seven, shrunk towards 1
    by k / (k + shrinkage) with k its known days: a rhythm seen over 13 weeks counts, one seen once
    barely does. Batteries with no known day get a flat shape.
    """
    return _shape(*_weekday_factors(daily_cycles), shrinkage)


def fit_weekday_shrinkage(daily_cycles: np.ndarray, actual: np.ndarray) -> float:
    """The SHRINKAGE_GRID value whose weekday shape best fits actual days relative to their 30-day mean.

    One number for the fleet: a sample of SHRINKAGE_SAMPLE windows pins it down as well as all of them.
    """
    daily_cycles, actual = daily_cycles[:SHRINKAGE_SAMPLE], actual[:SHRINKAGE_SAMPLE]
    relative = actual / np.maximum(actual.mean(axis=1, keepdims=True), 1e-9)
    factor, count = _weekday_factors(daily_cycles)
    errors = [np.mean((_shape(factor, count, k) - relative) ** 2) for k in SHRINKAGE_GRID]
    return float(SHRINKAGE_GRID[int(np.argmin(errors))])


def _weekday_factors(daily_cycles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 7) mean by weekday relative to the mean of the seven, and known days behind each; column
    `back` is the weekday `back` days before the as-of day."""
    width = daily_cycles.shape[1]
    by_weekday = [daily_cycles[:, width - 1 - back :: -7] for back in range(7)]
    means = np.column_stack([known_mean(days) for days in by_weekday])
    count = np.column_stack([np.sum(~np.isnan(days), axis=1) for days in by_weekday])
    overall = known_mean(means)
    factor = means / np.where(overall > 0, overall, np.nan)[:, None]
    return np.where(np.isnan(factor), 1.0, factor), count


def _shape(factor: np.ndarray, count: np.ndarray, shrinkage: float) -> np.ndarray:
    shrunk = 1.0 + count / (count + shrinkage) * (factor - 1.0)
    shape = shrunk[:, (-np.arange(1, HORIZON_DAYS + 1)) % 7]
    return shape / shape.mean(axis=1, keepdims=True)


ORIGIN_FEATURES = [
    "level",
    "level_7_ratio",
    "level_91_ratio",
    "minutes_28",
    "minutes_7_ratio",
    "trips_28",
    "cycles_per_minute",
    "std_28_ratio",
    "zero_share_28",
    "last_day_ratio",
    "known_days",
    "days_since_report",
    "age_days",
    "lifetime_share",
    "rated_cycles",
]
CALENDAR_FEATURES = ["day_of_year_sin", "day_of_year_cos", "month", "weekday_mix"]


def _origin_features(windows: BatteryWindows, level_prior: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-battery features from the window arrays, and the level every ratio is taken against."""
    cycles, minutes = windows.daily_cycles, windows.trip_minutes
    level_28 = _tail_mean(cycles, LEVEL_DAYS)
    level_91 = known_mean(cycles)
    level = recent_level(cycles, level_prior)
    known = ~np.isnan(cycles)
    recent = cycles[:, -LEVEL_DAYS:]
    newest_known = np.where(known.any(axis=1), np.argmax(known[:, ::-1], axis=1), np.nan)
    cycles_total, minutes_total = np.nansum(cycles, axis=1), np.nansum(minutes, axis=1)
    minutes_28 = _tail_mean(minutes, LEVEL_DAYS)
    features = {
        "level": level_28,
        "level_7_ratio": _tail_mean(cycles, 7) / level,
        "level_91_ratio": level_91 / level,
        "minutes_28": minutes_28,
        "minutes_7_ratio": _tail_mean(minutes, 7) / np.where(minutes_28 > 0, minutes_28, np.nan),
        "trips_28": _tail_mean(windows.trips, LEVEL_DAYS),
        "cycles_per_minute": cycles_total / np.where(minutes_total > 0, minutes_total, np.nan),
        "std_28_ratio": _known_std(recent) / level,
        "zero_share_28": known_mean(np.where(np.isnan(recent), np.nan, recent == 0)),
        "last_day_ratio": cycles[:, -1] / level,
        "known_days": known.sum(axis=1).astype(np.float64),
        "days_since_report": newest_known,
        "age_days": windows.age_days,
        "lifetime_share": windows.lifetime_cycles / windows.rated_cycles,
        "rated_cycles": windows.rated_cycles,
    }
    return {name: features[name] for name in ORIGIN_FEATURES}, level


def recent_level(daily_cycles: np.ndarray, level_prior: float) -> np.ndarray:
    """Each window's daily-cycles level, what the model's ratio target is taken against: the mean of its last
    28 known days (of its whole window if none of those is known).

    A level needs a week of evidence: one seen on fewer than MIN_LEVEL_DAYS days is topped up with the fleet
    prior to that many (an unknown level is the prior). Without that, a window whose one known day was idle has
    a level of ~0 and a ratio target of ~20, and the squared loss spends most of its fit on such rows. The
    floor keeps ratios finite for a car parked for weeks.
    """
    known = ~np.isnan(daily_cycles)
    level_28 = _tail_mean(daily_cycles, LEVEL_DAYS)
    days = np.where(np.isnan(level_28), known.sum(axis=1), known[:, -LEVEL_DAYS:].sum(axis=1))
    mean = np.nan_to_num(np.where(np.isnan(level_28), known_mean(daily_cycles), level_28))
    topped_up = (mean * days + np.maximum(MIN_LEVEL_DAYS - days, 0) * level_prior) / np.maximum(days, MIN_LEVEL_DAYS)
    return np.maximum(topped_up, 0.05 * level_prior)


def _calendar_features(as_of: np.ndarray, shape: np.ndarray) -> dict[str, np.ndarray]:
    """Season of the 30 target days (at their midpoint) and how much of the rhythm's high days they hold."""
    midpoint = as_of + np.timedelta64(HORIZON_DAYS // 2, "D")
    day_of_year = _day_of_year(midpoint).astype(np.float64)
    angle = 2 * np.pi * day_of_year / 365.25
    return {
        "day_of_year_sin": np.sin(angle),
        "day_of_year_cos": np.cos(angle),
        "month": (midpoint.astype("datetime64[M]").astype(np.int64) % 12 + 1).astype(np.float64),
        # 30 days are 4 weeks and 2 days: which 2 weekdays come twice more matters a little.
        "weekday_mix": shape[:, -2:].mean(axis=1),
    }


def known_mean(values: np.ndarray) -> np.ndarray:
    """Row means of the known (non-NaN) values, NaN for a row with none; unlike np.nanmean, warning-free."""
    known = ~np.isnan(values)
    count = known.sum(axis=1)
    return np.where(count > 0, np.sum(values, axis=1, where=known) / np.maximum(count, 1), np.nan)


def _tail_mean(values: np.ndarray, days: int) -> np.ndarray:
    """Mean of the known values among the last `days` columns."""
    return known_mean(values[:, -days:])


def _known_std(values: np.ndarray) -> np.ndarray:
    mean = known_mean(values)
    count = np.sum(~np.isnan(values), axis=1)
    squares = np.nansum((values - mean[:, None]) ** 2, axis=1)
    return np.where(count >= 2, np.sqrt(squares / np.maximum(count - 1, 1)), np.nan)


def sample_origins(
    history: FleetHistory, last_target_day: int, max_rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(battery, origin day) pairs with the origin and its 30 following days all reported, sampled."""
    reported = history.reported()[:, : last_target_day + 1]
    # A day starts 31 reported days in a row when the running count of reported days rises by 31.
    running = np.cumsum(reported, axis=1, dtype=np.int32)
    span = HORIZON_DAYS + 1
    ahead = running[:, span - 1 :] - np.pad(running[:, :-span], ((0, 0), (1, 0)))[:, : running.shape[1] - span + 1]
    battery, origin = np.nonzero(ahead == span)
    if len(battery) > max_rows:
        keep = np.sort(rng.choice(len(battery), size=max_rows, replace=False))
        battery, origin = battery[keep], origin[keep]
    return battery, origin


def hide_some_days(windows: BatteryWindows, rng: np.random.Generator) -> BatteryWindows:
    """Make some training windows look like short histories or like cars that went silent for a while.

    Works in place: the windows were just sliced out of the history as copies.
    """
    n, width = windows.daily_cycles.shape
    column = np.arange(width)[None, :]
    length = np.exp(rng.uniform(0, np.log(width), n)).astype(np.int64)
    short = (rng.random(n) < SHORT_HISTORY_SHARE)[:, None] & (column < (width - length)[:, None])
    silent_days = rng.integers(1, MAX_STALE_DAYS + 1, n)
    stale = (rng.random(n) < STALE_SHARE)[:, None] & (column >= (width - silent_days)[:, None])
    hidden = short | stale
    for values in (windows.daily_cycles, windows.trip_minutes, windows.trips):
        values[hidden] = np.nan
    return windows


def _level_prior(history: FleetHistory, last_target_day: int) -> float:
    """The fleet's median 28-day level: what a battery with no known days is assumed to use."""
    recent = history.daily_cycles[:, max(0, last_target_day - LEVEL_DAYS + 1) : last_target_day + 1]
    levels = known_mean(recent)
    levels = levels[~np.isnan(levels)]
    return float(np.median(levels)) if len(levels) else float(np.nanmean(history.daily_cycles))


def encode_cars(cars: pd.DataFrame) -> pd.DataFrame:
    """Car attributes as numbers LightGBM can split on: categories by code (sorted, so stable), year as is."""
    missing = [c for c in [CAR_ID, *CAR_CATEGORIES, *CAR_NUMBERS] if c not in cars.columns]
    if missing:
        raise InputError(f"car table is missing column(s): {', '.join(missing)}")
    table = pd.DataFrame({CAR_ID: cars[CAR_ID].astype(str).to_numpy(dtype=object)})
    for name, categories in car_category_names(cars).items():
        codes = pd.Categorical(cars[name].astype("string"), categories=categories).codes
        table[name] = np.where(codes >= 0, codes, np.nan)
    for name in CAR_NUMBERS:
        table[name] = pd.to_numeric(cars[name], errors="coerce").astype(np.float64)
    return table


def car_category_names(cars: pd.DataFrame) -> dict[str, list[str]]:
    """Each car category's values in code order (code i is names[i]): kept in the metadata so an
    explanation can say "Nordic" where the trees only saw a code."""
    return {name: sorted(str(v) for v in cars[name].astype("string").dropna().unique()) for name in CAR_CATEGORIES}


def json_default(value: object) -> object:
    """`json.dumps(default=...)` for numpy scalars and arrays in a model's metadata (every model kind)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
