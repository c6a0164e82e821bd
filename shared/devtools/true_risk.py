"""The true failure probability of simulated batteries: what the best possible model would say (issue 17).

The simulator knows how every battery's wear was generated (`FleetProcess`): its car's expected driving
minutes per day, idle rate, usage regime and climate, the battery's wear factor, counter and the wear that
drives its ageing. Given all that at an origin day, the only unknowns about the next 30 days are the
simulator's own future draws: each day's lognormal minutes noise, whether the car drives at all, the cycle
cost noise, and (in a regime-change fleet) jumps of the usage level. P(the counter reaches the rated cycles
within 30 days) is the share of drawn futures in which it does, drawn exactly as the simulator draws them
(same caps, rounding and ageing), vectorised over (battery, draw, day).

Most batteries are nowhere near their rated life: a pilot of SCREEN_DRAWS futures gives each its 30-day
sum's mean and spread, and a battery whose remaining cycles lie more than SCREEN_SIGMAS spreads from that
mean gets 0 or 1 without the full draw (a tail that far out is below 1e-6 even for the lognormal usage
jumps). The rest get `draws` futures; the Monte Carlo error of any metric is measured from BATCHES disjoint
batches of them (`TrueProbability.batch_probability`), and the backtest reports it beside the metric.

`usage_known=False` gives a second reference, "the best a model could do from the data": the same Monte
Carlo, but the car's usage scale is not known; it is drawn from its posterior given the driving minutes
the car reported in the model's window (the last 91 days up to the origin), under the simulator's own prior
(the lognormal spread of cars' base minutes) and day-to-day noise. Everything else stays known (the car's
weekday, holiday, season and drift shape, its usage regime path, climate, the battery's wear factor and
ageing): a model can estimate those from the fleet's data far more precisely than one car's level, so the
gap between this reference and the truth is mostly the truth's oracle knowledge of that level.

Local only: the app never imports devtools; the backtest takes the result as an optional input
(`shared.models.backtest.TruthSource`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.core.risk import HORIZON_DAYS
from shared.core.telemetry import BATTERY_ID, CAR_ID, DATE, LIFETIME_CYCLES, RATED_CYCLES, TRIP_MINUTES, InputError
from shared.devtools.fleet_simulator import (
    CLIMATES,
    COLD_REGION,
    COST_NOISE,
    CYCLES_PER_MINUTE,
    DAILY_NOISE,
    DEFAULT_OPTIONS,
    HOT_REGION,
    MAX_MINUTES,
    MINUTES_SPREAD,
    Fleet,
    SimulatorOptions,
    ageing_factor,
    climate_factor,
    simulate_fleet,
)
from shared.models.backtest import TrueProbability, TruthSource

DRAWS = 20_000
BATCHES = 8
SCREEN_DRAWS = 256
SCREEN_SIGMAS = 12.0
# Rows × draws × days simulated per step: bounds the memory of one step to a few hundred MB.
CELLS_PER_STEP = 2_000_000
# Days up to the origin whose reported minutes the data-only reference estimates the usage scale from (the
# model's window).
USAGE_WINDOW_DAYS = 91


def fleet_truth(fleet: Fleet, draws: int = DRAWS, seed: int = 0) -> TruthSource:
    """The backtest's truth input for a simulated fleet: the evaluation's (Car_ID, origin) to true probabilities."""
    return lambda evaluation: true_failure_probability(
        fleet, evaluation[CAR_ID].to_numpy(), evaluation["origin"].to_numpy(), draws=draws, seed=seed
    )


def true_failure_probability(
    fleet: Fleet,
    car_id: np.ndarray,
    origin: np.ndarray,
    *,
    draws: int = DRAWS,
    seed: int = 0,
    usage_known: bool = True,
) -> TrueProbability:
    """P(the battery in car `car_id` on day `origin` reaches its rated cycles within the next 30 days), per row.

    usage_known=False: the data-only reference (module docstring), the car's usage scale drawn from its
    posterior given the minutes it reported."""
    if draws % BATCHES:
        raise InputError(f"draws: expected a multiple of {BATCHES}, got {draws}")
    car_id, origin = np.asarray(car_id, dtype=object), np.asarray(origin).astype("datetime64[D]")
    state = _OriginState(fleet, car_id, origin, usage_known)
    rng = np.random.default_rng(seed)
    certain = state.remaining <= 0
    pilot = _counter_after(rng, state, np.flatnonzero(~certain), SCREEN_DRAWS)
    z = np.zeros(len(certain))
    spread = np.maximum(pilot.std(axis=1), 1e-9)
    z[~certain] = (state.rated[~certain] - pilot.mean(axis=1)) / spread
    probability = np.where(certain | (z < -SCREEN_SIGMAS), 1.0, 0.0)
    batch_probability = np.repeat(probability[None, :], BATCHES, axis=0)
    drawn = np.flatnonzero(~certain & (np.abs(z) <= SCREEN_SIGMAS))
    rows_per_step = max(1, CELLS_PER_STEP // (draws * HORIZON_DAYS))
    for start in range(0, len(drawn), rows_per_step):
        rows = drawn[start : start + rows_per_step]
        reached = _counter_after(rng, state, rows, draws) >= state.rated[rows, None]
        batch_probability[:, rows] = reached.reshape(len(rows), BATCHES, -1).mean(axis=2).T
        probability[rows] = reached.mean(axis=1)
    return TrueProbability(probability=probability, batch_probability=batch_probability, draws=draws,
                           drawn=len(drawn))  # fmt: skip


class _OriginState:
    """Everything the simulator knows at each (car, origin day) that the next 30 days depend on."""

    def __init__(self, fleet: Fleet, car_id: np.ndarray, origin: np.ndarray, usage_known: bool = True) -> None:
        process = fleet.process
        if process is None:
            raise InputError("the fleet carries no generative process (simulate it with simulate_fleet)")
        n_period = process.worn.shape[1]
        car = pd.Index(fleet.cars[CAR_ID].to_numpy(object)).get_indexer(car_id)
        day = (origin - process.first_day).astype(np.int64)
        outside = (car < 0) | (day < 0) | (day >= n_period)
        if outside.any():
            raise InputError(f"{int(outside.sum())} (car, origin) pairs are not in the simulated fleet's period")
        cell = car * n_period + day  # `truth` is car-major over the period
        battery = fleet.truth[BATTERY_ID].to_numpy(object)[cell]
        wear = fleet.batteries.set_index(BATTERY_ID)["Wear_Factor"]
        self.rated = fleet.truth[RATED_CYCLES].to_numpy()[cell]
        self.lifetime = fleet.truth[LIFETIME_CYCLES].to_numpy()[cell]
        self.remaining = self.rated - self.lifetime
        self.wear = wear.reindex(battery).to_numpy()
        self.worn = process.worn[car, day]
        future = day[:, None] + np.arange(1, HORIZON_DAYS + 1)
        self.expected_minutes = process.expected_minutes_all[car[:, None], future]
        self.usage_level = process.usage_level_all[car, day]
        self.idle_rate = process.idle_rate[car]
        days = pd.date_range(pd.Timestamp(process.first_day), periods=process.expected_minutes_all.shape[1])
        by_region = np.stack([climate_factor(c.region, days) for c in CLIMATES])
        self.climate = by_region[process.region[car][:, None], future]
        self.options = process.options
        self.usage_posterior = None if usage_known else _usage_posterior(fleet, car, day)


def _usage_posterior(fleet: Fleet, car: np.ndarray, day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the mean and sd of the normal posterior of log(the car's usage scale ÷ the simulator's), given
    the minutes it reported on driving days in the USAGE_WINDOW_DAYS up to the origin: each such day's
    log(minutes ÷ expected minutes) is the offset plus the day's noise, N(-σ²/2, σ²), and the offset's prior is
    the spread of cars' base minutes, N(0, MINUTES_SPREAD²). Capped days are left out (they censor the noise)."""
    process = fleet.process
    n_cars, n_period = len(fleet.cars), process.worn.shape[1]
    minutes = fleet.truth[TRIP_MINUTES].to_numpy().reshape(n_cars, n_period)
    reported = np.zeros((n_cars, n_period), dtype=bool)
    car_of = pd.Index(fleet.cars[CAR_ID].to_numpy(object)).get_indexer(fleet.telemetry[CAR_ID].to_numpy(object))
    day_of = (fleet.telemetry[DATE].to_numpy("datetime64[D]") - process.first_day).astype(np.int64)
    reported[car_of, day_of] = True
    columns = day[:, None] + np.arange(1 - USAGE_WINDOW_DAYS, 1)
    inside = columns >= 0
    columns = np.maximum(columns, 0)
    seen = minutes[car[:, None], columns]
    expected = (process.expected_minutes_all * process.usage_level_all)[car[:, None], columns]
    driving = inside & reported[car[:, None], columns] & (seen > 0) & (seen < MAX_MINUTES)
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(driving, np.log(seen / expected) + DAILY_NOISE**2 / 2, 0.0)
    precision = 1 / MINUTES_SPREAD**2 + driving.sum(axis=1) / DAILY_NOISE**2
    return offset.sum(axis=1) / DAILY_NOISE**2 / precision, 1 / np.sqrt(precision)


def _counter_after(rng: np.random.Generator, state: _OriginState, rows: np.ndarray, draws: int) -> np.ndarray:
    """(rows, draws) the lifetime counter 30 days after the origin, each draw a future as the simulator
    draws it (cycles are never negative, so `>= rated` there is "reached rated life within 30 days")."""
    shape = (len(rows), draws, HORIZON_DAYS)
    noise = rng.lognormal(-(DAILY_NOISE**2) / 2, DAILY_NOISE, shape)
    driving = rng.random(shape) >= state.idle_rate[rows, None, None]
    level = np.broadcast_to(state.usage_level[rows, None, None], shape)
    if state.usage_posterior is not None:  # the data-only reference: one usage scale per drawn future
        mean, sd = (values[rows, None] for values in state.usage_posterior)
        level = level * np.exp(rng.normal(mean, sd, shape[:2]))[:, :, None]
    if state.options.regime_change_rate > 0:
        jumps = rng.random(shape) < state.options.regime_change_rate
        factor = np.where(jumps, rng.lognormal(0.0, state.options.regime_change_sigma, shape), 1.0)
        level = level * np.cumprod(factor, axis=2)
    minutes = np.round(np.minimum(state.expected_minutes[rows, None, :] * level * noise * driving, MAX_MINUTES), 2)
    cost = CYCLES_PER_MINUTE * state.climate[rows, None, :] * rng.lognormal(0.0, COST_NOISE, shape)
    unaged = minutes * cost * state.wear[rows, None, None]
    worn_before = state.worn[rows, None, None] + np.cumsum(unaged, axis=2) - unaged
    daily = np.round(unaged * ageing_factor(worn_before / state.rated[rows, None, None]), 4)
    return np.round(state.lifetime[rows, None] + daily.sum(axis=2), 4)


@dataclass(frozen=True)
class ComparisonFleet:
    """A fleet the model is judged against the truth on: the test fleet's calendar, another seed or options."""

    seed: int
    options: SimulatorOptions = DEFAULT_OPTIONS
    start: str = "2015-06-01"
    end: str = "2017-05-31"


# The fleets of the truth comparison (issue 17): the test fleet, other seeds, and fleets that differ from the
# default where the forecast's uncertainty is hardest: heavier missing data, usage regime changes, a hot and a
# cold climate, and short histories (half the cars start reporting at a random day).
COMPARISON_FLEETS = {
    "default (seed 11)": ComparisonFleet(11),
    "seed 21": ComparisonFleet(21),
    "seed 31": ComparisonFleet(31),
    "missing ×4": ComparisonFleet(12, SimulatorOptions(missing_scale=4.0)),
    "regime changes": ComparisonFleet(13, SimulatorOptions(regime_change_rate=1 / 120)),
    "hot (Desert)": ComparisonFleet(14, SimulatorOptions(regions=(HOT_REGION,))),
    "cold (Nordic)": ComparisonFleet(15, SimulatorOptions(regions=(COLD_REGION,))),
    "short histories": ComparisonFleet(16, SimulatorOptions(late_start_share=0.5)),
}


def simulate_comparison_fleet(fleet: ComparisonFleet, n_cars: int) -> Fleet:
    return simulate_fleet(n_cars, fleet.start, fleet.end, fleet.seed, fleet.options)
