"""Explanation: why the model forecasts what it does, for the fleet and for one battery, in plain words.

Two views, both from the booster itself (no extra library, no sampling):
- Global: each feature's share of the total split gain, i.e. how much of the fitted model's error
  reduction it is responsible for. Saved in the model's metadata and logged to MLflow by training.
- Per prediction: path contributions (Saabas' method, as in the `treeinterpreter` package). Walking a
  tree from its root to the battery's leaf, every split moves the node value from the parent's to the
  child's; that step is credited to the split's feature. Summed over the trees, each row's contributions
  plus the bias (the roots' values, i.e. the fleet average) add up exactly to the raw prediction (the
  30-day mean usage as a ratio to the battery's last-28-day level), so "+0.12 from driving time" means the
  forecast is 12 % of the recent level higher because of it. Why not TreeSHAP (`pred_contrib`): it gives
  the same kind of additive split with better theoretical guarantees, but costs ~14 ms of CPU per battery
  with this model (300 trees of 63 leaves), which made reasons most of the endpoint's and the nightly
  batch's time; path contributions are one `pred_leaf` prediction plus a table lookup per tree, because
  every leaf's contributions are worked out once per model. Both name the same strongest feature for most
  batteries (tests/test_explanation.py checks the agreement; bench/bench_explanation.py prints it).

An alert's reasons are for an owner or a service adviser, not a data scientist: first the fact that
drives the failure probability most (how much of its rated life the battery has used), then the
forecast (cycles expected over the next 30 days against the recent pace), then the one or two features
that pushed the forecast up the most, each as a short sentence with the battery's own value.
Everything is vectorised over the fleet: per feature, never per battery.
"""

from __future__ import annotations

import weakref

import lightgbm as lgb
import numpy as np
import pandas as pd

from shared.core.windows import BatteryWindows
from shared.models._lightgbm import BatteryForecaster, known_mean
from shared.models.backtest import recent_mean_forecast
from shared.models.base import Forecaster

# Feature reasons per battery (after the rated-life and forecast facts), and the smallest contribution
# (as a share of the recent level) worth telling anyone about.
TOP_FEATURES = 2
MIN_CONTRIBUTION = 0.02
# The last 7 days' pace against the last 28 days' from which a surge in use is stated as a fact.
SURGE_RATIO = 1.5
MONTHS = np.array(["January", "February", "March", "April", "May", "June", "July", "August", "September",
                   "October", "November", "December"])  # fmt: skip
SEASONS = np.array(["winter", "winter", "spring", "spring", "spring", "summer", "summer", "summer", "autumn",
                    "autumn", "autumn", "winter"])  # fmt: skip
# leaf_contributions' tables, per booster object, dropped with it.
_LEAF_CONTRIBUTIONS: weakref.WeakKeyDictionary[lgb.Booster, np.ndarray] = weakref.WeakKeyDictionary()


def feature_importance(model: BatteryForecaster) -> pd.DataFrame:
    """Features by total split gain, largest first: columns feature, gain, share (of all gain, sums to 1)."""
    gain = model.booster.feature_importance(importance_type="gain").astype(np.float64)
    names = model.booster.feature_name()
    table = pd.DataFrame({"feature": pd.Series(names, dtype=object), "gain": gain,
                          "share": gain / gain.sum() if gain.sum() > 0 else 0.0})  # fmt: skip
    return table.sort_values("gain", ascending=False, kind="stable").reset_index(drop=True)


def contributions(model: BatteryForecaster, windows: BatteryWindows) -> pd.DataFrame:
    """Path contributions, one row per battery (window order), one column per feature plus `bias`;
    each row sums to the booster's raw prediction for that battery."""
    names = model.booster.feature_name()
    if len(windows) == 0:
        return pd.DataFrame(columns=[*names, "bias"], dtype=np.float64)
    leaves = model.booster.predict(model.feature_matrix(windows), pred_leaf=True, num_threads=1)
    table = leaf_contributions(model.booster)
    total = np.zeros((len(windows), table.shape[2]))
    for tree, leaf in enumerate(np.asarray(leaves, dtype=np.int64).T):
        total += table[tree, leaf]
    return pd.DataFrame(total, columns=[*names, "bias"])


def leaf_contributions(booster: lgb.Booster) -> np.ndarray:
    """(trees, leaves, features + 1): what each leaf's root-to-leaf path credits to each feature, the root
    value (this tree's share of the bias) in the last column. Worked out once per booster (~0.3 s for 300
    trees, from its JSON dump) and kept while the booster lives."""
    if booster not in _LEAF_CONTRIBUTIONS:
        dump = booster.dump_model()
        trees = [tree["tree_structure"] for tree in dump["tree_info"]]
        width = len(dump["feature_names"]) + 1
        table = np.zeros((len(trees), max(info["num_leaves"] for info in dump["tree_info"]), width))
        for index, root in enumerate(trees):
            path = np.zeros(width)
            path[-1] = _node_value(root)
            stack = [(root, path)]
            while stack:
                node, path = stack.pop()
                if "split_feature" not in node:
                    table[index, node.get("leaf_index", 0)] = path
                    continue
                for child in (node["left_child"], node["right_child"]):
                    step = path.copy()
                    step[node["split_feature"]] += _node_value(child) - _node_value(node)
                    stack.append((child, step))
        _LEAF_CONTRIBUTIONS[booster] = table
    return _LEAF_CONTRIBUTIONS[booster]


def prepare_reasons(model: Forecaster) -> None:
    """Build what a model's reasons need ahead of time (the endpoint's init(), so no request pays for it)."""
    if getattr(model, "booster", None) is not None:  # a model kind without trees has nothing to prepare
        leaf_contributions(model.booster)


def _node_value(node: dict) -> float:
    """A node's output as if the tree stopped there (LightGBM's internal_value; a leaf's own value)."""
    return node["internal_value"] if "split_feature" in node else node["leaf_value"]


def battery_reasons(model: Forecaster, windows: BatteryWindows, forecast: np.ndarray) -> list[list[str]]:
    """Short plain reasons per battery (window order) for its forecast and failure probability.

    `forecast` is the model's (n, 30) forecast for these windows (score_windows has it already).
    """
    n = len(windows)
    if n == 0:
        return []
    surge = _surge_reason(windows)
    lines = [_rated_life_reason(windows), _forecast_reason(windows, forecast), surge]
    if getattr(model, "booster", None) is None:  # a model kind without trees: the facts only
        return [[line for line in row if isinstance(line, str)] for row in zip(*lines, strict=True)]
    features = pd.DataFrame(model.feature_matrix(windows).astype(np.float64), columns=model.booster.feature_name())
    contribution = contributions(model, windows).drop(columns="bias")
    strongest = np.argsort(-contribution.to_numpy(), axis=1, kind="stable")[:, :TOP_FEATURES]
    for rank in range(strongest.shape[1]):
        column = strongest[:, rank]
        size = contribution.to_numpy()[np.arange(n), column]
        text = pd.Series(None, index=range(n), dtype=object)
        for index in np.unique(column):
            name = contribution.columns[index]
            chosen = (column == index) & (size >= MIN_CONTRIBUTION)
            if chosen.any() and name in FEATURE_REASONS:
                text[chosen] = FEATURE_REASONS[name](features[chosen].reset_index(drop=True), model.metadata).to_numpy()
            if name == "level_7_ratio":  # the feature says it already, in the model's own numbers
                surge[chosen] = None
        lines.append(text)
    return [[line for line in row if isinstance(line, str)] for row in zip(*lines, strict=True)]


def explain_battery(model: BatteryForecaster, windows: BatteryWindows, forecast: np.ndarray) -> pd.DataFrame:
    """One battery's explanation as a table: feature, its value, its contribution, largest |contribution|
    first (the bias row last), for `python -m shared explain --battery`."""
    if len(windows) != 1:
        raise ValueError(f"explain_battery takes the windows of one battery, got {len(windows)}")
    values = model.feature_matrix(windows)[0].astype(np.float64)
    contribution = contributions(model, windows).iloc[0]
    table = pd.DataFrame({"feature": contribution.index[:-1].astype(object), "value": values,
                          "contribution": contribution.to_numpy()[:-1]})  # fmt: skip
    table = table.reindex(table["contribution"].abs().sort_values(ascending=False, kind="stable").index)
    bias = pd.DataFrame({"feature": ["bias (fleet average)"], "value": [np.nan],
                         "contribution": [contribution["bias"]]})  # fmt: skip
    return pd.concat([table, bias], ignore_index=True)


def _rated_life_reason(windows: BatteryWindows) -> pd.Series:
    used = windows.lifetime_cycles / windows.rated_cycles
    text = (
        "battery has used "
        + _whole(used * 100)
        + "% of its rated cycles ("
        + _whole(windows.lifetime_cycles)
        + " of "
        + _whole(windows.rated_cycles)
        + ")"
    )
    return text.where(np.isfinite(used), None)


def _forecast_reason(windows: BatteryWindows, forecast: np.ndarray) -> pd.Series:
    total = forecast.sum(axis=1)
    recent = recent_mean_forecast(windows).sum(axis=1)  # 30 days at the last-28-day pace (0 if unknown)
    change = total / np.where(recent > 0, recent, np.nan) - 1
    text = "expected to use " + _decimal(total, 1) + " cycles in the next 30 days"
    compared = text + " (" + _change_words(change) + " its pace over the last 28 days)"
    return compared.where(np.isfinite(change), text)


def _surge_reason(windows: BatteryWindows) -> pd.Series:
    """'battery use up 180% over the last 7 days' when the last week's pace is at least SURGE_RATIO times
    the last 28 days'. Why a fact and not only a feature's reason: a surge raises the 28-day level the
    forecast is scaled from, which no feature's contribution shows (the 7-day features may even pull the
    ratio down, as a week's spike partly passes), so the owner would otherwise not be told."""
    week, month = (known_mean(windows.daily_cycles[:, -days:]) for days in (7, 28))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = week / month
    text = _up_down(pd.Series(ratio), "battery use", "over the last 7 days")
    return text.where(np.isfinite(ratio) & (ratio >= SURGE_RATIO), None)


def _whole(values: np.ndarray | pd.Series) -> pd.Series:
    numbers = pd.Series(np.asarray(values, dtype=np.float64))
    return numbers.round().astype("Int64").astype("string").fillna("?").astype(object)


def _decimal(values: np.ndarray | pd.Series, places: int) -> pd.Series:
    return pd.Series(np.asarray(values, dtype=np.float64)).map(lambda v: f"{v:.{places}f}").astype(object)


def _change_words(ratio_minus_one: np.ndarray | pd.Series) -> pd.Series:
    """'35% above' / '12% below' / 'about the same as' for relative changes."""
    change = pd.Series(np.asarray(ratio_minus_one, dtype=np.float64))
    words = _whole(change.abs() * 100) + "% " + pd.Series(np.where(change >= 0, "above", "below"), dtype=object)
    return words.where(change.abs() >= 0.005, "about the same as")


def _up_down(ratio: pd.Series, what: str, period: str) -> pd.Series:
    """'driving time up 35% over the last 7 days' from a recent/longer-term ratio."""
    change = ratio.to_numpy(np.float64) - 1
    direction = pd.Series(np.where(change >= 0, " up ", " down "), dtype=object)
    return what + direction + _whole(np.abs(change) * 100) + "% " + period


def _region_reason(features: pd.DataFrame, metadata: dict) -> pd.Series:
    region = _category_names(features["Region"], metadata, "Region")
    season = pd.Series(SEASONS[features["month"].to_numpy(np.int64) - 1], dtype=object)
    return region + " region climate (" + season + " usage)"


def _category_names(codes: pd.Series, metadata: dict, name: str) -> pd.Series:
    """Category codes back to names with the training's code order, 'unknown' for a missing code."""
    names = np.asarray((metadata.get("car_categories") or {}).get(name, []), dtype=object)
    code = codes.to_numpy(np.float64)
    known = np.isfinite(code) & (code >= 0) & (code < len(names))
    labels = np.full(len(code), "unknown", dtype=object)
    labels[known] = names[code[known].astype(np.int64)]
    return pd.Series(labels, dtype=object)


# Feature -> function(features of the chosen rows, model metadata) -> reason text per row. Features the
# owner cannot act on or understand (calendar sines, the weekday mix) are left out on purpose.
FEATURE_REASONS = {
    "level": lambda f, m: "heavy recent use: " + _decimal(f["level"], 2) + " cycles a day over the last 28 days",
    "level_7_ratio": lambda f, m: _up_down(f["level_7_ratio"], "battery use", "over the last 7 days"),
    "level_91_ratio": lambda f, m: (
        "use over the last 91 days " + _change_words(f["level_91_ratio"] - 1) + " the last 28 days"
    ),
    "minutes_28": lambda f, m: "long drives: " + _whole(f["minutes_28"]) + " minutes a day over the last 28 days",
    "minutes_7_ratio": lambda f, m: _up_down(f["minutes_7_ratio"], "driving time", "over the last 7 days"),
    "trips_28": lambda f, m: _decimal(f["trips_28"], 1) + " trips a day over the last 28 days",
    "cycles_per_minute": lambda f, m: (
        "high charge use per minute of driving (" + _decimal(f["cycles_per_minute"] * 60, 2) + " cycles per hour)"
    ),
    "std_28_ratio": lambda f, m: pd.Series("irregular daily use over the last 28 days", index=f.index, dtype=object),
    "last_day_ratio": lambda f, m: "last day's use " + _change_words(f["last_day_ratio"] - 1) + " the recent average",
    "known_days": lambda f, m: "short history: " + _whole(f["known_days"]) + " days reported",
    "days_since_report": lambda f, m: "no report for " + _whole(f["days_since_report"]) + " days",
    "age_days": lambda f, m: "battery age " + _whole(f["age_days"]) + " days",
    "region_season_ratio": lambda f, m: _up_down(
        f["region_season_ratio"], "the region's seasonal wear per minute", "over the next 30 days"
    ),
    "month": lambda f, m: "seasonal usage for " + pd.Series(MONTHS[f["month"].to_numpy(np.int64) - 1], dtype=object),
    "Region": _region_reason,
    "Make": lambda f, m: _category_names(f["Make"], m, "Make") + " cars' usage pattern",
    "Engine_Type": lambda f, m: _category_names(f["Engine_Type"], m, "Engine_Type") + " drivetrain",
    "Model_Year": lambda f, m: "model year " + _whole(f["Model_Year"]),
}
