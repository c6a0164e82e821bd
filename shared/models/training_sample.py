"""The nightly retraining's sample of batteries: bounded, reproducible, and keeping those near end of life.

Past `max_batteries`, retraining on every battery buys little (the trees see the same usage patterns
thousands of times; bench/bench_training_sample.py measures the cost) and costs memory that grows with
the fleet. The sample is drawn per battery, never per row, so every kept battery keeps its whole history
and its windows stay whole:

- near end of life: batteries within `NEAR_EOL_DAYS` of their own usage of rated life, before or after
  it, are all kept. They are the positive labels that calibrate the failure risk and score the
  backtest's Brier and AP; a uniform sample would thin them the most. A battery long past rated life is
  not among them (the backtest counts it apart, it is never a label) but in a stratum of its own.
- the rest: split into strata by the share of rated life remaining (past it, then quarters), and the
  same proportion of every stratum kept, so the sample covers worn, half-worn and new batteries as the
  fleet does.

Within a stratum the batteries kept are those with the smallest keyed hash of their Battery_ID: the same
fleet gives the same sample on every run and machine, whatever the row order, and a battery's place in
the sample does not change when others join or leave the fleet. If more batteries are near end of life
than the cap, the cap wins and they too are chosen by hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from shared.core.risk import HORIZON_DAYS
from shared.core.telemetry import BATTERY_ID, DATE
from shared.models.backtest import CALIBRATION_SPAN_DAYS, EVALUATION_DAYS

# A battery that reaches rated life within the backtest's held-out days (calibration span, evaluation
# period and one horizon after them) can be a positive label there; one that reached it as long before
# the end of its records could be one at the first held-out origins.
NEAR_EOL_DAYS = CALIBRATION_SPAN_DAYS + EVALUATION_DAYS + HORIZON_DAYS
# Strata of the other batteries: share of rated cycles remaining, in (-∞, 0) (past rated life), [0, .25),
# [.25, .5), [.5, .75), [.75, ∞).
REMAINING_SHARE_BANDS = (0.0, 0.25, 0.5, 0.75)
SAMPLE_SEED = 0
NEAR_EOL_STRATUM = -1

LIFETIME, RATED, DAILY = "Lifetime_Cycles_Used", "Battery_Rated_Cycles", "Daily_Cycles_Used"


@dataclass(frozen=True)
class TrainingSample:
    """The batteries to train on (sorted ids) and what the training record says about the draw."""

    battery_ids: np.ndarray
    batteries_in_period: int
    near_eol: int
    near_eol_kept: int
    max_batteries: int
    seed: int

    @property
    def sampled(self) -> bool:
        return len(self.battery_ids) < self.batteries_in_period

    def record(self) -> dict:
        """The sample's entry in the model's metadata (and the nightly job's outcome)."""
        return {"batteries_in_period": self.batteries_in_period, "batteries_trained": len(self.battery_ids),
                "sampled": self.sampled, "near_eol": self.near_eol, "near_eol_kept": self.near_eol_kept,
                "max_batteries": self.max_batteries, "seed": self.seed}  # fmt: skip


class BatteryUsage:
    """What the sample is drawn from, gathered a few days of the period at a time.

    The nightly retraining reads its trailing period twice: first only these columns, a chunk of days at
    a time, so the whole period of the whole fleet is never held at once; then only the sampled
    batteries' rows. A battery's lifetime and rated counters are kept as running maxima; its daily
    cycles (the median needs them all) as one float per record.
    """

    columns = (DATE, BATTERY_ID, LIFETIME, RATED, DAILY)

    def __init__(self) -> None:
        self._maxima: list[pd.DataFrame] = []
        self._daily: list[pd.Series] = []
        self.first_record: pd.Timestamp | None = None
        self.last_record: pd.Timestamp | None = None

    @classmethod
    def of(cls, raw: pd.DataFrame) -> BatteryUsage:
        usage = cls()
        usage.add(raw)
        return usage

    @property
    def empty(self) -> bool:
        return not self._daily

    def add(self, raw: pd.DataFrame) -> None:
        """Fold in some rows (raw telemetry: duplicates, 12-hour rows and glitches are fine)."""
        if raw.empty:
            return
        ids = pd.Categorical(raw[BATTERY_ID].astype(str))
        by_battery = raw[[LIFETIME, RATED]].groupby(ids, observed=True)
        self._maxima.append(by_battery.max())
        self._daily.append(pd.Series(raw[DAILY].to_numpy(float), index=ids))
        first, last = raw[DATE].min(), raw[DATE].max()
        self.first_record = first if self.first_record is None else min(first, self.first_record)
        self.last_record = last if self.last_record is None else max(last, self.last_record)

    def profile(self) -> pd.DataFrame:
        """One row per battery (index Battery_ID as text, sorted): its stratum (`battery_profile`)."""
        maxima = pd.concat(self._maxima).groupby(level=0, observed=True).max()
        ids = union_categoricals([series.index.array for series in self._daily])
        daily = pd.Series(np.concatenate([series.to_numpy() for series in self._daily]), index=ids)
        profile = pd.DataFrame({"lifetime": maxima[LIFETIME], "rated": maxima[RATED],
                                "daily": daily.groupby(level=0, observed=True).median()})  # fmt: skip
        profile.index = profile.index.astype(str)
        return _stratified(profile.sort_index())


def battery_profile(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per battery (index Battery_ID as text): its stratum, and the hash key chosen by.

    Works on raw telemetry (duplicates, 12-hour rows, glitches): the highest lifetime counter and the
    median daily cycles are robust enough to place a battery in a stratum, and a glitch that puts a
    battery near end of life only keeps it.
    """
    return BatteryUsage.of(raw).profile()


def _stratified(profile: pd.DataFrame) -> pd.DataFrame:
    remaining = (profile["rated"] - profile["lifetime"]).to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        days_from_rated_life = np.abs(remaining / profile["daily"].to_numpy(float))  # NaN or inf: not in use
        share = remaining / profile["rated"].to_numpy(float)
    stratum = np.searchsorted(REMAINING_SHARE_BANDS, np.nan_to_num(share, nan=1.0), side="right")
    near = (days_from_rated_life <= NEAR_EOL_DAYS) | (remaining == 0)
    profile["stratum"] = np.where(near, NEAR_EOL_STRATUM, stratum)
    return profile[["stratum"]]


def battery_hash(battery_ids: pd.Index | np.ndarray, seed: int) -> np.ndarray:
    """A keyed 64-bit hash per Battery_ID: the same on every machine and run (unlike Python's hash)."""
    key = seed.to_bytes(8, "little")
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(b).encode(), digest_size=8, key=key).digest(), "little")
         for b in battery_ids),
        dtype=np.uint64, count=len(battery_ids),
    )  # fmt: skip


def sample_batteries(raw: pd.DataFrame | BatteryUsage, max_batteries: int, seed: int = SAMPLE_SEED) -> TrainingSample:
    """Choose at most `max_batteries` batteries of `raw` (module docstring); all of them if they fit."""
    if max_batteries < 1:
        raise ValueError(f"max_batteries must be 1 or more, got {max_batteries}")
    profile = (raw if isinstance(raw, BatteryUsage) else BatteryUsage.of(raw)).profile()
    stratum = profile["stratum"].to_numpy()
    ids = profile.index.to_numpy(dtype=object)
    near = stratum == NEAR_EOL_STRATUM
    if len(ids) <= max_batteries:
        keep = np.ones(len(ids), dtype=bool)
    else:
        key = battery_hash(ids, seed)
        keep = np.zeros(len(ids), dtype=bool)
        for value, count in _allocate(stratum, max_batteries).items():
            members = np.flatnonzero(stratum == value)
            keep[members[np.argsort(key[members], kind="stable")[:count]]] = True
    return TrainingSample(battery_ids=np.sort(ids[keep].astype(str)), batteries_in_period=len(ids),
                          near_eol=int(near.sum()), near_eol_kept=int((near & keep).sum()),
                          max_batteries=max_batteries, seed=seed)  # fmt: skip


def trailing_period_start(last_day: pd.Timestamp, history_days: int) -> pd.Timestamp:
    """First day of a trailing period of `history_days` days ending on `last_day`."""
    return pd.Timestamp(last_day).normalize() - pd.Timedelta(days=history_days - 1)


def period_record(usage: BatteryUsage, since: pd.Timestamp, history_days: int) -> dict:
    """The trailing period's entry in the training record: as configured, and the days the archive held."""
    first, last = usage.first_record, usage.last_record
    return {"history_days": history_days, "since": f"{since:%Y-%m-%d}",
            "first_record": f"{first:%Y-%m-%d}", "last_record": f"{last:%Y-%m-%d}"}  # fmt: skip


def _allocate(stratum: np.ndarray, max_batteries: int) -> dict[int, int]:
    """How many batteries each stratum keeps: near end of life all (up to the cap), the rest in proportion
    to stratum size, rounded by largest remainder so the counts add up to the cap exactly."""
    values, sizes = np.unique(stratum, return_counts=True)
    quota = dict.fromkeys(values.tolist(), 0)
    near = int(sizes[values == NEAR_EOL_STRATUM].sum())
    quota[NEAR_EOL_STRATUM] = min(near, max_batteries)
    rest_values, rest_sizes = values[values != NEAR_EOL_STRATUM], sizes[values != NEAR_EOL_STRATUM]
    room = max_batteries - quota[NEAR_EOL_STRATUM]
    if room and len(rest_values):
        exact = rest_sizes * room / rest_sizes.sum()
        counts = np.floor(exact).astype(int)
        short = room - counts.sum()
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
        quota.update(zip(rest_values.tolist(), counts.tolist(), strict=True))
    if not near:
        quota.pop(NEAR_EOL_STRATUM)
    return quota
