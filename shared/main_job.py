"""The main job: the whole product running locally, end to end, on loopback (`python -m shared demo`, `make run`).

Why it exists: one command that shows a person (and a test) that the parts work together. It runs the
real `function_app.app`, driven by `shared.functions_host` (no Azure Functions Core Tools needed) against
real local services: Azurite for Blob, Queue and Table, the scoring endpoint (scoring/score.py under
azmlinfsrv) and the head-unit simulator, which verifies signatures and records what each car received.

The story it plays, with R = `end` − `replay_days`, the last day already in the archive:

1. simulate a fleet and write fleet/telemetry.csv and fleet/cars.csv;
2. start Azurite and the head-unit simulator (its signing key is random per run and never printed);
3. archive the telemetry up to day R in Blob, as if `score_telemetry` had ingested it (so only the records
   it would have accepted: the others are counted);
4. the night after R: fire `nightly_retrain` (trains on the archive, registers the champion), start the
   scoring endpoint on the champion, fire `nightly_batch_score` (scores as of R), and drain the alert queue
   into `push_alert`;
5. replay days R+1..end through `score_telemetry`, one event per car and day as the cars would send them
   (plus a few deliberately bad events on the first day, to show dead-lettering), each day followed by
   draining the alert queue;
6. write summary.md (a person's report) and summary.json (the same figures, for scripts and tests).

Simulated time: the app reads the time only through `Services.clock`. The job sets the app settings in the
environment (the app reads them there, as in Azure), lets `services.current()` build the app's services
from them exactly as an invocation would, and then points that object's `clock` at a `SimulatedClock` it
moves forward. So production code has no fake-time switch that could be left on in Azure, and the override
is one visible line here; it lasts as long as the environment block, whose exit clears the cached services.

The figures come from where an operator would find them: dead letters and parked requests from Blob, what
the cars received from the head-unit simulator, and the one-line JSON summary each function logs per
invocation (what Application Insights would hold), collected by a log handler for the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import function_app
from shared import services
from shared.archive import PARKED_CONTAINER as _UNUSED  # noqa: F401
from shared.archive import archive_telemetry, list_dead_letters
from shared.azurite import AzuriteEndpoints, free_port, running_azurite
from shared.events import DEFAULT_MAX_BODY_BYTES
from shared.functions_host import EventDelivery, FunctionsHost, Invocation, QueueDrain
from shared.headunit import HeadUnitSimulator
from shared.inference_server import running_endpoint
from shared.model_registry import ModelRegistry
from shared.report import training_report
from shared.settings import Settings
from shared.simulation import Fleet, simulate_fleet, write_fleet
from shared.telemetry import BATTERY_ID, CAR_ID, COLUMNS, DATE, INTEGER_COLUMNS, InputError, implausible_values
