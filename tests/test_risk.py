"""Failure risk on constructed arrays: the probability's meaning, its calibration, days to rated life."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.core.risk import (
    BEYOND_DAYS,
    MAX_DAYS_TO_RATED_LIFE,
    QUANTILE_LEVELS,
    RiskCalibration,
    calibrate,
    days_to_rated_life,
    error_scale,
    failure_risk,
    recent_known_days,
    recent_variability,
)

RNG = np.random.default_rng(42)


def flat(rate: float, n: int = 1) -> np.ndarray:
    return np.full((n, 30), rate)


def normal_calibration(n: int = 20_000) -> RiskCalibration:
    """What `calibrate` learns when the standardised errors are N(0, 1)."""
    forecast = flat(0.2, n)
    scale = error_scale(forecast.sum(axis=1), np.zeros(n))
    return calibrate(forecast.sum(axis=1) + RNG.standard_normal(n) * scale, forecast, np.zeros(n))


def test_past_rated_life_is_certain_and_has_no_days_left():
    risk = failure_risk(np.array([200.0, 250.0]), np.array([200, 200]), flat(0.2, 2), normal_calibration())
    np.testing.assert_array_equal(risk["failure_probability_30d"], [1.0, 1.0])
    np.testing.assert_array_equal(risk["days_to_rated_life"], [0.0, 0.0])


def test_probability_rises_as_the_remaining_cycles_shrink():
    remaining = np.linspace(12.0, 0.5, 40)  # forecast uses 6 cycles in 30 days
    risk = failure_risk(200 - remaining, np.full(40, 200), flat(0.2, 40), normal_calibration())
    probability = risk["failure_probability_30d"].to_numpy()

    assert np.all(np.diff(probability) >= 0)
    assert probability[0] < 0.01 and probability[-1] > 0.99
    # Exactly the forecast's worth of cycles left: a coin toss under symmetric errors.
    at_forecast = failure_risk([194.0], [200], flat(0.2), normal_calibration())["failure_probability_30d"][0]
    assert at_forecast == pytest.approx(0.5, abs=0.03)


def test_probabilities_match_observed_frequencies_when_errors_are_like_the_calibration_ones():
    """Calibrate on one sample of skewed errors, then check P against outcomes in a fresh sample."""
    n = 40_000
    forecast = flat(0.15, n) * RNG.uniform(0.5, 2.0, (n, 1))
    daily_std = 0.3 * forecast[:, 0]
    predicted = forecast.sum(axis=1)

    def actual_sums() -> np.ndarray:  # right-skewed errors: usage jumps more often than it drops
        return predicted + (RNG.gamma(2.0, 1.0, n) - 2.0) * error_scale(predicted, daily_std)

    calibration = calibrate(actual_sums(), forecast, daily_std)
    remaining = predicted * RNG.uniform(0.7, 1.4, n)
    probability = failure_risk(200 - remaining, np.full(n, 200), forecast, calibration, daily_std)[
        "failure_probability_30d"
    ].to_numpy()
    happened = actual_sums() >= remaining

    for low in np.arange(0.0, 1.0, 0.1):
        in_bin = (probability >= low) & (probability < low + 0.1)
        assert in_bin.sum() > 500
        assert happened[in_bin].mean() == pytest.approx(probability[in_bin].mean(), abs=0.03)


def test_a_noisier_battery_gets_a_less_certain_probability():
    """Same forecast and margin: the battery whose daily use swings more is further from 0 or 1."""
    calibration = normal_calibration()
    risk = failure_risk([190.0, 190.0], [200, 200], flat(0.2, 2), calibration, daily_std=np.array([0.0, 0.3]))
    steady, noisy = risk["failure_probability_30d"]
    assert steady < noisy < 0.5


def test_a_short_history_gets_a_less_certain_probability():
    """One known day says less about the level than 28: the probability moves towards a coin toss."""
    calibration = normal_calibration()
    risk = failure_risk([196.0] * 3, [200] * 3, flat(0.2, 3), calibration, known_days=np.array([28, 7, 1]))
    full, week, day = risk["failure_probability_30d"]
    assert 0.5 < day < week < full
    unknown = failure_risk([196.0], [200], flat(0.2), calibration)["failure_probability_30d"][0]
    assert unknown == full  # no count given: a full history


def test_days_to_rated_life_interpolates_within_and_extrapolates_beyond_the_horizon():
    forecast = np.vstack([flat(0.5)[0], flat(0.5)[0], flat(0.0)[0], np.r_[np.zeros(29), 1.0]])
    days = days_to_rated_life(np.array([2.25, 20.0, 5.0, 0.5]), forecast)

    np.testing.assert_allclose(days[:2], [4.5, 40.0])  # 15 cycles in 30 days, 5 more at 0.5 a day
    assert days[2] == MAX_DAYS_TO_RATED_LIFE  # never used: capped, not infinite (JSON has no infinity)
    np.testing.assert_allclose(days[3], 29.5)


def uniform_calibration() -> RiskCalibration:
    """Standardised errors spread evenly over [-3, 3]: P(z >= t) = (3 - t) / 6, readable by hand."""
    return RiskCalibration(z_quantiles=-3.0 + 6.0 * QUANTILE_LEVELS, n_errors=201)


@pytest.mark.parametrize(("t", "probability"), [(-1.5, 0.75), (0.0, 0.5), (1.5, 0.25), (2.4, 0.1)])
def test_the_probability_is_the_calibrations_tail_beyond_the_remaining_cycles(t, probability):
    # One cycle a day forecast: 30 cycles in 30 days, error scale 0.1 x 30 = 3 cycles (steady use, no noise).
    # The battery has 30 + 3t cycles left, so it reaches rated life when the error z is at least t.
    remaining = 30.0 + 3.0 * t
    risk = failure_risk(np.array([500.0 - remaining]), np.array([500.0]), flat(1.0), uniform_calibration(),
                        daily_std=np.zeros(1))  # fmt: skip
    assert risk["failure_probability_30d"].item() == pytest.approx(probability, abs=1e-6)


@pytest.mark.parametrize(("remaining", "days"), [(10.0, 20.0), (30.0, 60.0), (0.25, 0.5)])
def test_failure_risk_tells_the_day_the_forecast_uses_up_the_remaining_cycles(remaining, days):
    # Half a cycle a day forecast: 10 cycles last 20 days; 30 last 60 (beyond the horizon, at the same rate).
    risk = failure_risk(np.array([200.0 - remaining]), np.array([200.0]), flat(0.5), uniform_calibration())
    assert risk["days_to_rated_life"].item() == pytest.approx(days)


def test_calibration_survives_a_dict_round_trip():
    calibration = normal_calibration(2_000)
    again = RiskCalibration.from_dict(calibration.to_dict())
    np.testing.assert_array_equal(again.z_quantiles, calibration.z_quantiles)
    assert again.n_errors == 2_000


def test_calibration_needs_enough_errors():
    with pytest.raises(ValueError, match="too few held-out forecasts"):
        calibrate(np.ones(5), flat(0.1, 5), np.zeros(5))


def test_recent_variability_uses_only_known_recent_days():
    daily = np.full((3, 40), np.nan)
    daily[0, -28:] = np.tile([0.1, 0.3], 14)
    daily[0, :12] = 5.0  # older than 28 days: ignored
    daily[1, -1] = 0.2  # one known day: no spread to measure
    std = recent_variability(daily)
    np.testing.assert_allclose(std[0], np.std(np.tile([0.1, 0.3], 14), ddof=1))
    np.testing.assert_array_equal(std[1:], [0.0, 0.0])
    np.testing.assert_array_equal(recent_known_days(daily), [28, 1, 0])


def test_past_the_horizon_days_to_rated_life_and_the_interval_follow_the_forecasters_season():
    """Half a cycle a day forecast, 20 left: 15 used by day 30, 5 more. Where the season halves the use after
    day 30 (`wear_beyond` 0.5), they take 20 days, not 10; each quantile keeps its day-30 ratio to the forecast."""
    calibration = uniform_calibration()
    args = (np.array([180.0]), np.array([200.0]), flat(0.5), calibration)
    flat_rate = failure_risk(*args, daily_std=np.zeros(1))
    halved = failure_risk(*args, daily_std=np.zeros(1), wear_beyond=np.full((1, BEYOND_DAYS), 0.5))
    assert halved["failure_probability_30d"].item() == flat_rate["failure_probability_30d"].item()
    assert flat_rate["days_to_rated_life"].item() == pytest.approx(40.0)
    assert halved["days_to_rated_life"].item() == pytest.approx(50.0)
    assert halved["days_to_rated_life_p50"].item() == pytest.approx(50.0)
    # p90: use at its 10 % quantile, z = -2.4 over a scale of 0.1 x use, so 0.76 x 15 = 11.4 cycles by day 30,
    # then 11.4 x (1 + (t - 30) / 60) along the halved season: 20 cycles on day 30 + 60 x (20 / 11.4 - 1).
    assert flat_rate["days_to_rated_life_p90"].item() == pytest.approx(30 * 20 / 11.4)
    assert halved["days_to_rated_life_p90"].item() == pytest.approx(30 + 60 * (20 / 11.4 - 1))
    unknown = failure_risk(*args, daily_std=np.zeros(1), wear_beyond=np.full((1, BEYOND_DAYS), np.nan))
    pd.testing.assert_frame_equal(unknown, flat_rate)  # no season known: the forecast's mean rate, as before
