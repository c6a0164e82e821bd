"""Model monitoring: how right the scores were, once their 30 days have passed, and how far the inputs drifted.

Every nightly score matures: HORIZON_DAYS days after the day it was scored on, the archive shows whether the
battery reached its rated cycles and what it really used each day. The functions here turn a day's stored
scores and the telemetry that followed into the accuracy table (per segment of the fleet), and compare the
model's input features with the distribution it was trained on (population stability index). Pure: frames
in, frames out; the monitor handler (shared/handlers/monitoring.py) reads and writes them.
"""

from __future__ import annotations

# --- the tables the monitor stores (shared/adapters/monitor_store.py) ---------------------------------

SCORED_ON = "Scored_On"  # the day the scores were computed as of (the scores' date= partition)
MATURED_ON = "Matured_On"  # the last day of the horizon: the scores are judged on telemetry up to it
MODEL_VERSION = "Model_Version"
ROLE = "Role"  # CHAMPION (its scores alerted) or SHADOW (scored beside it, never alerted)
SEGMENT_KIND = "Segment_Kind"  # ALL_SEGMENTS, or a car attribute among SEGMENT_KINDS
SEGMENT = "Segment"  # the attribute's value ("all" for the whole fleet)
BATTERIES = "Batteries"  # batteries whose outcome is known (scored, not censored, not already past rated)
POSITIVES = "Positives"  # of them, the ones that reached their rated cycles within the horizon
BRIER = "Brier"
RECALL = "Recall"  # at the alert threshold; NaN without positives
PRECISION = "Precision"  # at the alert threshold; NaN without alerts
AVERAGE_PRECISION = "Average_Precision"
NRMSE = "NRMSE"  # the daily-cycles forecast over the matured days, RMSE / range of the actual values
ALERTS = "Alerts"  # batteries at or above the threshold among all scored (alert volume), labelled or not

CHAMPION = "champion"
SHADOW = "shadow"
ROLES = (CHAMPION, SHADOW)
ALL_SEGMENTS = "all"
SEGMENT_KINDS = ("make", "region", "engine_type", "battery_model")
ACCURACY_COLUMNS = [SCORED_ON, MATURED_ON, MODEL_VERSION, ROLE, SEGMENT_KIND, SEGMENT, BATTERIES, POSITIVES,
                    BRIER, RECALL, PRECISION, AVERAGE_PRECISION, NRMSE, ALERTS]  # fmt: skip

# Reliability (calibration) bins of the same scores: equal-width probability bins.
BIN = "Bin"  # "0.0-0.1", ...
COUNT = "Count"
MEAN_PREDICTED = "Mean_Predicted"
OBSERVED_RATE = "Observed_Rate"
RELIABILITY_COLUMNS = [SCORED_ON, MODEL_VERSION, ROLE, SEGMENT_KIND, SEGMENT, BIN, COUNT, MEAN_PREDICTED,
                       OBSERVED_RATE]  # fmt: skip

# Input drift of the model's main features on a day, against the training reference.
DAY = "Day"
FEATURE = "Feature"
PSI = "PSI"
THRESHOLD = "Threshold"
DRIFTED = "Drifted"
DRIFT_COLUMNS = [DAY, MODEL_VERSION, FEATURE, PSI, THRESHOLD, DRIFTED]

# The monitor's retrain decision of a night.
REASON = "Reason"  # why it triggered, or why not ("" when nothing was wrong)
TRIGGERED = "Triggered"  # True: the retrain ran that night
COOLDOWN_UNTIL = "Cooldown_Until"  # no other trigger before this day (set by a trigger; NaT otherwise)
RETRAIN_OUTCOME = "Retrain_Outcome"  # the retrain's outcome (JSON text), empty when not triggered
RETRAIN_COLUMNS = [DAY, MODEL_VERSION, REASON, TRIGGERED, COOLDOWN_UNTIL, RETRAIN_OUTCOME]
