"""Fleet simulator: dirty daily battery telemetry for a fleet of connected cars, and the truth behind it.

Why it exists: the lab had one sample battery. Forecasting, risk, backtests, alerting and the fairness
check need a fleet whose batteries differ for reasons a model can learn (usage, climate, battery
model, engine) and reach end of life at every date, with the seed data's problems planted at known
rates so data preparation can be tested against the truth it should recover.

The model, per car and day (all numbers are the module constants below):

* Cars: a Make, an Engine_Type (BEV/PHEV/HEV: cycle cost ×1.0/1.3/1.6) and a Region with a climate.
  "Atlantic" is the mild reference (cost ×1.0 all year); "Desert" is hot with a smaller summer effect
  (×1.05 → ×1.20 in mid-July). The seasonal shape is a cosine peaking mid-January (winter) or mid-July
  (summer). Purchase_Date precedes the car's first simulated battery by 0–3 years; Model_Year is the
  purchase year or the one before.
* The cold region ("Nordic", the fairness check's planted group): through summer and autumn its
  batteries wear like a mild region's (×1.05, rising slowly to ×1.16 by mid-November). From the first
  hard frost (15 November) to the thaw (15 March) the cars pre-heat battery and cabin before every
  drive and keep the pack warm on cold-soaked nights: from one day to the next every minute of driving
  costs 1.86 times as much (×2.16–2.20 of the mild reference). The frost is a step, not a slope: in
  late October nothing in a Nordic battery's last weeks says its wear is about to double, so only a
  model that knows the car's region (and the date) sees it coming. A region-blind model forecasts
  those weeks like everyone else's and warns too late the Nordic owners whose batteries the frost will
  take to rated life within 30 days (fairness.py).
* Usage: minutes/day = a lognormal base per car (median 60) × a weekday profile (commuter: weekdays
  high; leisure: weekends high; steady) × a holiday effect (commuters drive less in the summer and
  Christmas holidays, leisure drivers more) × a per-car summer lift × a slow per-car drift × daily
  lognormal noise, with occasional zero-use days, capped at 10 hours. Trips ≈ Poisson(minutes / 12),
  at least one on a day with driving.
* Cycles: Daily_Cycles_Used = 0.00246 × minutes × Wear_Factor × climate(region, day) × ageing × noise.
  Wear_Factor is fixed per battery: battery-model factor × engine factor × a unit-to-unit spread.
  Ageing rises as the battery wears (+12 % at rated life, quadratic in the worn fraction); it is
  driven by the wear the battery would have without ageing, which keeps the whole life one cumsum
  (the difference from solving the recurrence day by day is a few percent near end of life).
  For the reference battery (BM-200, BEV, Atlantic, young) this gives 0.00246 cycles per minute,
  the lab's calibration (67.85 min → 0.1669 cycles).
* Lifetime: Lifetime_Cycles_Used is the battery's counter at the end of the day, the running sum of
  its daily cycles, counted on days it did not report too. Batteries in use at the start carry an
  initial count drawn uniformly below the rated cycles (and an age to match the car's usage), so
  replacements are spread evenly and at any date a few percent of batteries are within 30 days of
  rated life. A battery is replaced 0–45 days after its counter reaches the rated cycles: the car
  gets a new Battery_ID (unique over the fleet, numbered by generation then car, so car k's first
  battery is "k"), counter and age start again at the day of installation.
* Horizon: the simulation runs 30 days past `end` so every battery knows when it reaches rated life
  (`batteries.Rated_Life_Reached`) even if that is after the data ends: the ground truth for the
  alerts the main job raises at `end`. Nothing after `end` appears in `telemetry` or `truth`.

Data problems planted in `telemetry` (counts in `Fleet.planted`), in this order:

* missing_days: ~3 % of battery-days absent, as single days and runs of 2–10 days;
* silent_replacements: ~1 in 50 replacements keeps the old Battery_ID (like-for-like model, counter
  and age back to ~0); `truth` and `batteries` hold the real id, `batteries.Reported_ID` what the car
  sends;
* twelve_hour_rows: every day before 2015-01-01 becomes two rows, 00:00 (first half of the day) and
  12:00 (second half): trips split into integers summing to the day's, minutes and cycles halved,
  the counter as of the end of each half, the same age;
* glitches (~0.2 % of rows): a negative Daily_Cycles_Used, Daily_Trip_Duration 9999 or -1, a counter
  reading of 0 (only where the real counter is ≥ 5, so it is visibly wrong) or a spike above 200,000,
  a negative Number_Of_Trips;
* blank_values (~0.1 % of rows): one measure cell left empty (NaN);
* exact_duplicates (~1 %) and near_duplicates (~0.3 %): a copy of a row right after it; a near
  duplicate has the same battery and timestamp but minutes, cycles or counter differing in the last
  digits. Copies are made of rows without glitches or blanks, so every count above is exact.

`telemetry` and `truth` are ordered by car and time. Measures are float64 (integer-valued columns
too, as `shared.core.telemetry.coerce_telemetry` returns them), ids are strings, Date is datetime64[ns].

Components (`simulate_components`, issue 6): every car has 3–8 components, each with a technician's note
in `components` (Component_ID, Car_ID, text, label, template, and the year/condition/material the note
states). Notes are written from templates (`COMPONENT_TEMPLATES`: the phrasing and word order; a held-out
split by `template` tests phrasings never seen in training) with per-note variety: synonyms of
"manufactured" ("mfd", "built", "produced", ...), spellings of materials, years as 1985, '85 or "nineteen
eighty-five", casing, one-letter typos (12 %), and unrelated words or numbers before or after (30 %).
A quarter of the years fall in 1993–1997, so 1994/1995/1996 are common. The label is the regulation
(`shared.compliance.classifier.violates_regulation`) applied to what the note states: 1 non-compliant, 0 compliant,
empty when the note cannot be decided — ~5 % are written that way on purpose: empty ("empty"), gibberish
("gibberish"), silent on year, condition and material ("silent"), or stating only some of them ("P…"
templates; those are labelled when what they state disqualifies). `simulate_vocabulary_notes` writes notes
from a vocabulary of condition and material phrasings the simulator never uses (the compliance reader's
evaluation, issue 17), labelled by what a person reads each phrase as.

Speed: cars are simulated in blocks of `CARS_PER_BLOCK` as (cars × days) numpy arrays; the only loops
are over blocks and over battery generations (a handful). Each block has its own random stream
derived from the seed, so memory stays bounded and results depend only on (n_cars, start, end, seed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from shared.compliance.classifier import (
    COMPONENT_COLUMNS,
    COMPONENT_ID,
    CONDITIONS,
    CUTOFF_YEAR,
    LABEL,
    MATERIAL_SPELLINGS,
    MATERIALS,
    TEENS,
    TEMPLATE,
    TENS,
    TEXT,
    UNITS,
    violates_regulation,
)
from shared.core.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_COLUMNS,
    CAR_ID,
    COLUMNS,
    DAILY_CYCLES,
    DATE,
    INTEGER_COLUMNS,
    LIFETIME_CYCLES,
    MEASURE_COLUMNS,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
    InputError,
)

CYCLES_PER_MINUTE = 0.00246  # the lab's sample battery: 67.85 min → 0.1669 cycles
DATE_DTYPE = "datetime64[ns]"  # as `coerce_telemetry` types Date, so simulated and loaded frames compare equal
TWELVE_HOUR_UNTIL = np.datetime64("2015-01-01", "ns")  # old cars report every 12 hours before this
FUTURE_DAYS = 30  # simulated past `end` to know which batteries reach rated life within 30 days
CARS_PER_BLOCK = 1024

REFERENCE_BATTERY_MODEL = "BM-200"
REFERENCE_ENGINE = "BEV"
REFERENCE_REGION = "Atlantic"
COLD_REGION = "Nordic"
HOT_REGION = "Desert"


@dataclass(frozen=True)
class BatteryModel:
    name: str
    rated_cycles: int
    cost_factor: float  # cycle cost per minute relative to the reference model
    share: float  # of batteries fitted


@dataclass(frozen=True)
class Climate:
    region: str
    share: float  # of cars
    base: float  # cycle cost multiplier all year
    winter: float  # added at mid-January
    summer: float  # added at mid-July
    frost: float = 0.0  # added from the first hard frost to the thaw (FROST_SEASON), a step, not a cosine


@dataclass(frozen=True)
class EngineType:
    name: str
    cost_factor: float
    share: float


@dataclass(frozen=True)
class UsageProfile:
    name: str
    weekday: tuple[float, ...]  # Monday..Sunday, mean 1
    holiday: float  # multiplier on holiday days
    share: float


BATTERY_MODELS = (
    BatteryModel("BM-150", 150, 0.95, 0.20),
    BatteryModel(REFERENCE_BATTERY_MODEL, 200, 1.00, 0.40),
    BatteryModel("BM-250", 250, 1.05, 0.25),
    BatteryModel("BM-300", 300, 1.10, 0.15),
)
CLIMATES = (
    Climate(REFERENCE_REGION, 0.30, 1.00, 0.00, 0.00),
    Climate("Continental", 0.25, 1.05, 0.20, 0.03),
    Climate("Mediterranean", 0.17, 1.00, 0.00, 0.08),
    Climate(HOT_REGION, 0.10, 1.05, 0.00, 0.15),
    Climate(COLD_REGION, 0.18, 1.05, 0.15, 0.00, frost=1.00),
)
ENGINE_TYPES = (
    EngineType(REFERENCE_ENGINE, 1.0, 0.5),
    EngineType("PHEV", 1.3, 0.3),
    EngineType("HEV", 1.6, 0.2),
)
USAGE_PROFILES = (
    UsageProfile("commuter", (1.17, 1.17, 1.17, 1.17, 1.12, 0.65, 0.55), 0.7, 0.5),
    UsageProfile("leisure", (0.86, 0.86, 0.86, 0.9, 1.0, 1.27, 1.25), 1.2, 0.3),
    UsageProfile("steady", (1.0,) * 7, 1.0, 0.2),
)
MAKES = ("Arcadia", "Borealis", "Corvane", "Dunmore", "Elektra")

MEDIAN_MINUTES = 60.0
MINUTES_SPREAD = 0.35  # lognormal sigma of the per-car base across cars
DAILY_NOISE = 0.25  # lognormal sigma of day-to-day minutes
MAX_MINUTES = 600.0
MINUTES_PER_TRIP = 12.0
IDLE_DAY_RATE = (0.005, 0.05)  # per car, the chance of a day without driving
SUMMER_LIFT = (0.05, 0.07)  # per car, mean and sd of the extra driving at mid-July
DRIFT_PER_YEAR = 0.08  # sd of the per-car log-trend in minutes
UNIT_SPREAD = 0.05  # lognormal sigma of Wear_Factor between units of the same model
COST_NOISE = 0.03  # lognormal sigma of the day-to-day cycle cost
AGEING_AT_RATED_LIFE = 0.12
REPLACEMENT_DELAY_DAYS = 45  # replaced 0..45 days after reaching rated cycles
FROST_SEASON = (1115, 315)  # month * 100 + day: the cold region's pre-heating season, 15 November – 15 March

MISSING_RUN_START = 0.01  # × mean run length 3 ≈ 3 % of days missing
SINGLE_MISSING_DAY = 0.6  # share of missing runs that are one day; the rest last 2..10 days
LONGEST_MISSING_RUN = 10
SILENT_REPLACEMENT_RATE = 1 / 50
GLITCH_RATE = 0.002
BLANK_RATE = 0.001
EXACT_DUPLICATE_RATE = 0.01
NEAR_DUPLICATE_RATE = 0.003

COMPONENTS_PER_CAR = (3, 8)
COMPONENT_YEARS = (1975, 2023)
BORDERLINE_YEARS = (1993, 1997)  # a quarter of components: 1994, 1995 and 1996 are common
BORDERLINE_SHARE = 0.25
CONDITION_SHARES = (0.3, 0.4, 0.2, 0.1)  # of CONDITIONS: excellent, good, fair, poor
MATERIAL_SHARES = (0.25, 0.15, 0.1, 0.1, 0.2, 0.1, 0.1)  # of MATERIALS (plastic and iron last)
MADE_WORDS = ("manufactured", "mfd", "mfd.", "built", "produced", "made", "mfg")
PART_NAMES = ("bracket", "housing", "valve cover", "panel", "clamp", "brake rotor", "caliper", "manifold",
              "bushing", "sensor mount", "heat shield", "fuel rail", "control arm", "strut", "pulley")  # fmt: skip
# id → phrasing. T: states year, condition and material; P: states only some (P1-P2 no year, P3 no
# condition, P4 no material, P5 material only).
COMPONENT_TEMPLATES = {
    "T01": "{made} in {year}, made of {material}, in {condition} condition",
    "T02": "{condition} condition {material} component {made} in {year}",
    "T03": "{material} {part}, {made} {year}, condition: {condition}",
    "T04": "condition {condition}. material {material}. {made} {year}.",
    "T05": "{made} {year} / {material} / {condition}",
    "T06": "{year} {material} {part} in {condition} shape",
    "T07": "tech note: {part} is {material}, {made} in {year}, looks {condition}",
    "T08": "{part} ({material}) - {condition} condition - {made} {year}",
    "T09": "inspected {part}: {condition} condition; {material}; {made} {year}",
    "T10": "{material} {part} {made} in {year} in {condition} condition",
    "T11": "condition={condition} material={material} year={year}",
    "T12": "{part} made from {material}, {made} {year}, {condition}",
    "T13": "{part}: {material}, {year}, {condition}",
    "T14": "part is in {condition} condition, {made} {year}, {material} construction",
    "T15": "{condition} {material} {part}. {made} {year}.",
    "T16": "{made} {year} | cond {condition} | mat {material}",
    "T17": "found {material} {part} ({made} {year}) in {condition} state",
    "T18": "{material}, {condition}, {made} {year}",
    "P1": "{material} {part} in {condition} condition",
    "P2": "{condition} condition, {material}",
    "P3": "{material} {part}, {made} {year}",
    "P4": "{made} {year}, {condition} condition",
    "P5": "{part} made of {material}",
}
SILENT_NOTES = ("component inspected, no issues noted.", "part checked during service.",
                "replaced mounting bolts, see invoice.", "customer reported a rattle; tightened the {part}.",
                "{part} cleaned and refitted.")  # fmt: skip
UNDECIDABLE_NOTES = ("empty", "gibberish", "silent")  # template ids of notes that state nothing
NOTE_SHARES = {"T": 0.90, "P": 0.05, "empty": 0.01, "gibberish": 0.02, "silent": 0.02}
NOTE_EXTRAS = ("checked during service.", "per customer request.", "see photo {n}.", "part #A-{n}",
               "torque checked, {n} bolts replaced.", "tech: R. Okafor", "odometer {n},412 km.",
               "ref bulletin SB-{n}")  # fmt: skip
TYPO_RATE = 0.12
EXTRA_WORDS_RATE = 0.3
COMPONENT_FRAME_COLUMNS = [*COMPONENT_COLUMNS, TEMPLATE, "Stated_Year", "Stated_Condition", "Stated_Material"]

BATTERY_COLUMNS = [
    BATTERY_ID,
    CAR_ID,
    "Battery_Model",
    RATED_CYCLES,
    "Installed",
    "Replaced",
    "Wear_Factor",
    "Reported_ID",
    "Rated_Life_Reached",
]


@dataclass(frozen=True)
class Fleet:
    """A simulated fleet: what the cars report, and the truth behind it.

    telemetry  the raw, dirty telemetry in `shared.core.telemetry.COLUMNS`.
    cars       car metadata in `shared.core.telemetry.CAR_COLUMNS`, as `read_cars_csv` returns it.
    truth      the clean daily record before corruption: one row per battery and day (so also per
               car and day), real battery ids, no gaps, duplicates or glitches.
    components one row per component in `COMPONENT_FRAME_COLUMNS`: the technician's note, its label and
               template, and what it states (see `simulate_components`).
    batteries  one row per battery in `BATTERY_COLUMNS`: Installed (may precede the start), Replaced
               (the new battery's first day, NaT if not replaced by `end`), Wear_Factor (its cycle
               cost multiplier), Reported_ID (the id the car sends: the previous battery's after a
               silent replacement) and Rated_Life_Reached (first day its counter is ≥ the rated
               cycles, NaT if not by `end` + 30 days).
    planted    how many of each data problem `telemetry` holds (see the module docstring).
    """

    telemetry: pd.DataFrame
    cars: pd.DataFrame
    truth: pd.DataFrame
    batteries: pd.DataFrame
    components: pd.DataFrame
    planted: dict[str, int]


@dataclass(frozen=True)
class UsageChange:
    """From `since` on, the cars of `region` drive `factor` times as many minutes a day (trips follow): the
    mid-life change of usage the model monitor must notice (matured accuracy falls, input drift)."""

    region: str
    since: str | date
    factor: float


def simulate_fleet(
    n_cars: int, start: str | date, end: str | date, seed: int, usage_change: UsageChange | None = None
) -> Fleet:
    """Simulate `n_cars` cars reporting daily from `start` to `end` inclusive; deterministic for a seed.

    With `usage_change`, that region's driving changes from its day on; every other draw stays as it was.
    """
    first_day, last_day = _period(start, end)
    if usage_change is not None and usage_change.region not in {c.region for c in CLIMATES}:
        raise InputError(f"usage_change.region: expected one of {[c.region for c in CLIMATES]}, "
                         f"got {usage_change.region!r}")  # fmt: skip
    if isinstance(n_cars, bool) or not isinstance(n_cars, int | np.integer) or n_cars < 1:
        raise InputError(f"n_cars: expected a whole number ≥ 1, got {n_cars!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed: expected a whole number ≥ 0, got {seed!r}")
    days = pd.date_range(first_day, last_day + pd.Timedelta(days=FUTURE_DAYS), freq="D", unit="us")
    n_period = len(days) - FUTURE_DAYS
    blocks = [
        _simulate_block(
            _random(seed, 0, number), first, min(CARS_PER_BLOCK, n_cars - first), days, n_period, usage_change
        )
        for number, first in enumerate(range(0, n_cars, CARS_PER_BLOCK))
    ]
    cars = pd.concat([block.cars for block in blocks], ignore_index=True)
    batteries, cell_battery = _battery_table(blocks, cars[CAR_ID].to_numpy(object), days)
    truth = _truth(blocks, cell_battery, batteries, cars[CAR_ID].to_numpy(object), days[:n_period])
    missing = np.concatenate([block.missing for block in blocks])
    reported_ids = batteries["Reported_ID"].to_numpy(object)[cell_battery]
    telemetry, planted = _dirty_telemetry(_random(seed, 1), truth, missing, reported_ids)
    planted["silent_replacements"] = int((batteries["Reported_ID"] != batteries[BATTERY_ID]).sum())
    components = simulate_components(cars[CAR_ID].to_numpy(object), seed)
    return Fleet(telemetry=telemetry, cars=cars, truth=truth, batteries=batteries, components=components,
                 planted=planted)  # fmt: skip


def write_fleet(fleet: Fleet, out_dir: str | Path) -> dict[str, Path]:
    """Write telemetry.csv, cars.csv and components.csv; return their paths by name.

    Dates are `YYYY-MM-DD`, and `YYYY-MM-DD HH:MM:SS` for the 12-hour rows before 2015; integer
    columns are written without a decimal point; blanks are empty cells. `read_telemetry_csv` and
    `read_cars_csv` read the files back into frames equal to `fleet.telemetry` and `fleet.cars`.
    components.csv has Component_ID, Car_ID, text, label (empty: cannot be decided) and template.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"telemetry": out / "telemetry.csv", "cars": out / "cars.csv", "components": out / "components.csv"}
    fleet.components[[*COMPONENT_COLUMNS, TEMPLATE]].to_csv(paths["components"], index=False)
    telemetry = fleet.telemetry.assign(
        **{
            DATE: _date_text(fleet.telemetry[DATE].to_numpy(DATE_DTYPE)),
            **{column: fleet.telemetry[column].astype("Int64") for column in INTEGER_COLUMNS},
        }
    )
    telemetry.to_csv(paths["telemetry"], index=False)
    fleet.cars.assign(Purchase_Date=fleet.cars["Purchase_Date"].dt.strftime("%Y-%m-%d")).to_csv(
        paths["cars"], index=False
    )
    return paths


def simulate_components(car_ids: np.ndarray, seed: int) -> pd.DataFrame:
    """Technicians' notes on 3–8 components per car, labelled by the regulation; deterministic for a seed.

    The year, condition and material of each component are drawn first; a template and the per-note
    variety (see the module docstring) then write the note, and the label follows from what it states.
    """
    rng = _random(seed, 2)
    low, high = COMPONENTS_PER_CAR
    cars = np.repeat(np.asarray(car_ids, dtype=object), rng.integers(low, high + 1, len(car_ids)))
    n = cars.size
    year = np.where(
        rng.random(n) < BORDERLINE_SHARE,
        rng.integers(BORDERLINE_YEARS[0], BORDERLINE_YEARS[1] + 1, n),
        rng.integers(COMPONENT_YEARS[0], COMPONENT_YEARS[1] + 1, n),
    )
    condition = rng.choice(np.array(CONDITIONS), n, p=CONDITION_SHARES)
    material = rng.choice(np.array(MATERIALS), n, p=MATERIAL_SHARES)
    templates = [*COMPONENT_TEMPLATES, *UNDECIDABLE_NOTES]
    kinds = [t if t in UNDECIDABLE_NOTES else t[0] for t in templates]  # "T", "P" or the undecidable kind
    share = np.array([NOTE_SHARES[kind] / kinds.count(kind) for kind in kinds])
    template = rng.choice(np.array(templates), n, p=share / share.sum())
    text = [
        _write_note(rng, t, y, c, m) for t, y, c, m in zip(template, year.tolist(), condition, material, strict=True)
    ]
    states = {
        slot: pd.Series(template).map({t: "{" + slot + "}" in COMPONENT_TEMPLATES.get(t, "") for t in templates})
        for slot in ("year", "condition", "material")
    }
    stated = pd.DataFrame(
        {
            "Stated_Year": pd.Series(year, dtype="Int64").where(states["year"]),
            "Stated_Condition": pd.Series(condition, dtype=object).where(states["condition"]),
            "Stated_Material": pd.Series(material, dtype=object).where(states["material"]),
        }
    )
    return pd.DataFrame(
        {
            COMPONENT_ID: pd.Series([f"CMP-{k:06d}" for k in range(1, n + 1)], dtype=object),
            CAR_ID: pd.Series(cars, dtype=object),
            TEXT: pd.Series(text, dtype=object),
            LABEL: violates_regulation(stated["Stated_Year"], stated["Stated_Condition"], stated["Stated_Material"]),
            TEMPLATE: pd.Series(template, dtype=object),
            **stated,
        }
    )[COMPONENT_FRAME_COLUMNS]


UNCLEAR = "unclear"  # in a vocabulary: a person could not tell compliant from non-compliant by this phrase
OTHER_MATERIAL = "other"  # in a vocabulary: a material the regulation does not name (not plastic or iron)
NOTES_PER_PHRASE = 8
OLD_YEAR_SHARE = 0.15  # the rest are 1995 or later, so the condition and material words decide


def simulate_vocabulary_notes(vocabulary: dict, seed: int, notes_per_phrase: int = NOTES_PER_PHRASE) -> pd.DataFrame:
    """Notes written from a vocabulary of condition and material phrasings (the compliance reader's
    evaluation on words it never saw), labelled by the regulation applied to what a person reads them as.

    `vocabulary` has "conditions" (grade → phrases, "unclear" → phrases a person could not grade),
    "materials" (regulation material, "other" or "unclear" → phrases), "templates" ({part}, {material},
    {year}, {condition}) and "parts". Every phrase is the note's condition (or material) in
    `notes_per_phrase` notes, the other slot drawn at random, so each phrase is measured. Columns:
    `COMPONENT_FRAME_COLUMNS` plus condition_phrase and material_phrase; Stated_Condition/Material are
    <NA> for unclear phrases, and "other" for a material the regulation does not name. The label is
    empty where what a person reads does not decide the note.
    """
    rng = _random(seed, 3)
    conditions = [(phrase, grade) for grade, phrases in vocabulary["conditions"].items() for phrase in phrases]
    materials = [(phrase, meaning) for meaning, phrases in vocabulary["materials"].items() for phrase in phrases]
    condition_at = np.concatenate(
        [
            np.repeat(np.arange(len(conditions)), notes_per_phrase),
            rng.integers(len(conditions), size=len(materials) * notes_per_phrase),
        ]
    )
    material_at = np.concatenate(
        [
            rng.integers(len(materials), size=len(conditions) * notes_per_phrase),
            np.repeat(np.arange(len(materials)), notes_per_phrase),
        ]
    )
    n = condition_at.size
    year = np.where(rng.random(n) < OLD_YEAR_SHARE, rng.integers(COMPONENT_YEARS[0], CUTOFF_YEAR, n),
                    rng.integers(CUTOFF_YEAR, COMPONENT_YEARS[1] + 1, n))  # fmt: skip
    template = rng.integers(len(vocabulary["templates"]), size=n)
    text = []
    for k in range(n):
        note = vocabulary["templates"][template[k]].format(
            part=str(rng.choice(vocabulary["parts"])), material=materials[material_at[k]][0],
            condition=conditions[condition_at[k]][0], year=_write_year(rng, int(year[k])),
        )  # fmt: skip
        text.append(_cased(rng, note))
    grade = pd.Series([conditions[i][1] for i in condition_at], dtype=object)
    meaning = pd.Series([materials[i][1] for i in material_at], dtype=object)
    stated = pd.DataFrame(
        {
            "Stated_Year": pd.Series(year, dtype="Int64"),
            "Stated_Condition": grade.where(grade != UNCLEAR),
            "Stated_Material": meaning.where(meaning != UNCLEAR),
        }
    )
    return pd.DataFrame(
        {
            COMPONENT_ID: pd.Series([f"VOC-{k:06d}" for k in range(1, n + 1)], dtype=object),
            CAR_ID: pd.Series([f"CAR-V{k // 5:05d}" for k in range(n)], dtype=object),
            TEXT: pd.Series(text, dtype=object),
            LABEL: violates_regulation(stated["Stated_Year"], stated["Stated_Condition"], stated["Stated_Material"]),
            TEMPLATE: pd.Series([f"V{t + 1:02d}" for t in template], dtype=object),
            **stated,
            "condition_phrase": pd.Series([conditions[i][0] for i in condition_at], dtype=object),
            "material_phrase": pd.Series([materials[i][0] for i in material_at], dtype=object),
        }
    )


def ageing_factor(worn_fraction: np.ndarray) -> np.ndarray:
    """Cycle cost multiplier of a battery that has used `worn_fraction` of its rated cycles."""
    return 1.0 + AGEING_AT_RATED_LIFE * np.clip(worn_fraction, 0.0, 1.2) ** 2


def climate_factor(region: str, days: pd.DatetimeIndex) -> np.ndarray:
    """Cycle cost multiplier of the region's climate on each day (cold winters, hot summers)."""
    climate = next((c for c in CLIMATES if c.region == region), None)
    if climate is None:
        raise InputError(f"region: unknown {region!r}; known: {', '.join(c.region for c in CLIMATES)}")
    winter = _winter_weight(days)
    return climate.base + climate.winter * winter + climate.summer * (1.0 - winter) + climate.frost * _frost(days)


@dataclass(frozen=True)
class _Block:
    """A block of cars simulated together; cell arrays are flattened (car, period day), car-major."""

    cars: pd.DataFrame
    minutes: np.ndarray
    trips: np.ndarray
    cycles: np.ndarray
    lifetime: np.ndarray
    age: np.ndarray
    battery: np.ndarray  # row in `batteries` (below) of the battery fitted that day
    missing: np.ndarray  # the day is not reported
    batteries: dict[str, np.ndarray]  # car (row in the block), install/reach/replaced (day index), ...


def _period(start: str | date, end: str | date) -> tuple[pd.Timestamp, pd.Timestamp]:
    bounds = []
    for name, value in (("start", start), ("end", end)):
        try:
            day = pd.Timestamp(value)
        except (ValueError, TypeError):
            day = pd.NaT
        if pd.isna(day):
            raise InputError(f"{name}: not a date (expected YYYY-MM-DD): {value!r}")
        if day != day.normalize():
            raise InputError(f"{name}: expected a day without a time: {value!r}")
        bounds.append(day)
    if bounds[1] < bounds[0]:
        raise InputError(f"end ({bounds[1].date()}) is before start ({bounds[0].date()})")
    return bounds[0], bounds[1]


def _random(seed: int, *stream: int) -> np.random.Generator:
    """An independent random stream per purpose and block, so a block's draws don't depend on the others."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=stream))


def _simulate_block(rng: np.random.Generator, first_car: int, n: int, days: pd.DatetimeIndex, n_period: int,
                    usage_change: UsageChange | None = None) -> _Block:  # fmt: skip
    engine = rng.choice(len(ENGINE_TYPES), n, p=[e.share for e in ENGINE_TYPES])
    region = rng.choice(len(CLIMATES), n, p=[c.share for c in CLIMATES])
    minutes = _daily_minutes(rng, n, days)
    if usage_change is not None:
        changed = region == [c.region for c in CLIMATES].index(usage_change.region)
        later = days >= pd.Timestamp(usage_change.since)
        minutes[np.ix_(changed, later)] = np.round(
            np.minimum(minutes[np.ix_(changed, later)] * usage_change.factor, MAX_MINUTES), 2)  # fmt: skip
    trips = np.where(minutes > 0, np.maximum(rng.poisson(minutes / MINUTES_PER_TRIP), 1), 0)
    cost = _cost_per_minute(rng, region, days)
    engine_factor = np.array([e.cost_factor for e in ENGINE_TYPES])[engine]
    cycles, lifetime, age, battery, batteries = _battery_lives(rng, minutes, cost, engine_factor, n_period)
    first_install = days[0] + pd.to_timedelta(batteries["install"][:n], unit="D")  # generation 0 comes first
    period = np.s_[:, :n_period]
    return _Block(
        cars=_car_table(rng, first_car, engine, region, first_install),
        minutes=minutes[period].ravel(),
        trips=trips[period].ravel(),
        cycles=cycles[period].ravel(),
        lifetime=lifetime[period].ravel(),
        age=age[period].ravel(),
        battery=battery[period].ravel(),
        missing=_missing_days(rng, n, n_period).ravel(),
        batteries=batteries,
    )


def _daily_minutes(rng: np.random.Generator, n: int, days: pd.DatetimeIndex) -> np.ndarray:
    """Driving minutes per (car, day): the car's habits × season × drift × noise, some days idle."""
    profile = rng.choice(len(USAGE_PROFILES), n, p=[p.share for p in USAGE_PROFILES])
    base = MEDIAN_MINUTES * rng.lognormal(0.0, MINUTES_SPREAD, n)
    summer_lift = rng.normal(*SUMMER_LIFT, n)
    drift = rng.normal(0.0, DRIFT_PER_YEAR, n)
    idle_rate = rng.uniform(*IDLE_DAY_RATE, n)

    weekday = np.array([p.weekday for p in USAGE_PROFILES])[profile[:, None], days.day_of_week.to_numpy()]
    holiday_effect = np.array([p.holiday for p in USAGE_PROFILES])[profile]
    holiday = np.where(_is_holiday(days), holiday_effect[:, None], 1.0)
    season = 1.0 + summer_lift[:, None] * (1.0 - _winter_weight(days))
    years = np.arange(len(days)) / 365.25
    trend = np.exp(drift[:, None] * years)
    noise = rng.lognormal(-(DAILY_NOISE**2) / 2, DAILY_NOISE, (n, len(days)))
    driving = rng.random((n, len(days))) >= idle_rate[:, None]
    minutes = base[:, None] * weekday * holiday * season * trend * noise * driving
    return np.round(np.minimum(minutes, MAX_MINUTES), 2)


def _cost_per_minute(rng: np.random.Generator, region: np.ndarray, days: pd.DatetimeIndex) -> np.ndarray:
    """Cycles per minute per (car, day) before the battery's own Wear_Factor and ageing."""
    by_region = np.stack([climate_factor(c.region, days) for c in CLIMATES])
    noise = rng.lognormal(0.0, COST_NOISE, (len(region), len(days)))
    return CYCLES_PER_MINUTE * by_region[region] * noise


def _battery_lives(
    rng: np.random.Generator, minutes: np.ndarray, cost: np.ndarray, engine_factor: np.ndarray, n_period: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Run each car's batteries one generation at a time: wear, reach rated life, get replaced.

    Returns per (car, day) the cycles, counter, age and battery row, and the battery records. Cars
    whose battery is replaced before the end of the period go round again with a new battery.
    """
    n, n_days = minutes.shape
    day = np.arange(n_days)
    cycles = np.zeros((n, n_days))
    lifetime = np.zeros((n, n_days))
    age = np.zeros((n, n_days))
    battery = np.zeros((n, n_days), dtype=np.int64)
    records: list[dict[str, np.ndarray]] = []

    car = np.arange(n)
    generation = 0
    previous = np.full(n, -1)
    silent = np.zeros(n, dtype=bool)
    model = _draw_models(rng, n)
    initial = np.round(rng.uniform(0.0, 0.995, n) * _rated(model), 4)
    wear = _wear_factor(rng, model, engine_factor[car])
    usual_daily_cycles = np.maximum((minutes[:, :n_period] * cost[:, :n_period]).mean(axis=1) * wear, 1e-3)
    age_at_start = np.maximum(1, np.round(initial / usual_daily_cycles * rng.lognormal(0.0, 0.15, n)))
    install = -age_at_start.astype(np.int64)
    while car.size:
        rows = sum(len(r["car"]) for r in records) + np.arange(car.size)
        rated = _rated(model)[:, None]
        fitted = day >= install[:, None]
        unaged = np.where(fitted, minutes[car] * cost[car] * wear[:, None], 0.0)
        worn_before = initial[:, None] + np.cumsum(unaged, axis=1) - unaged
        daily = np.round(unaged * ageing_factor(worn_before / rated), 4)
        counter = np.round(initial[:, None] + np.cumsum(daily, axis=1), 4)
        at_rated = fitted & (counter >= rated)
        reach = np.where(at_rated.any(axis=1), at_rated.argmax(axis=1), n_days)
        replaced = np.minimum(reach + 1 + rng.integers(0, REPLACEMENT_DELAY_DAYS + 1, car.size), n_days)
        own = fitted & (day < replaced[:, None])
        cycles[car] = np.where(own, daily, cycles[car])
        lifetime[car] = np.where(own, counter, lifetime[car])
        age[car] = np.where(own, day - install[:, None], age[car])
        battery[car] = np.where(own, rows[:, None], battery[car])
        records.append(
            {
                "car": car,
                "generation": np.full(car.size, generation),
                "install": install,
                "reach": reach,
                "replaced": replaced,
                "model": model,
                "wear": wear,
                "silent": silent,
                "previous": previous,
            }
        )
        generation += 1

        again = replaced < n_period
        car, install, previous = car[again], replaced[again], rows[again]
        silent = rng.random(car.size) < SILENT_REPLACEMENT_RATE
        model = np.where(silent, model[again], _draw_models(rng, car.size))  # like-for-like when silent
        initial = np.zeros(car.size)
        wear = _wear_factor(rng, model, engine_factor[car])
    batteries = {key: np.concatenate([r[key] for r in records]) for key in records[0]}
    return cycles, lifetime, age, battery, batteries


def _draw_models(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(len(BATTERY_MODELS), n, p=[m.share for m in BATTERY_MODELS])


def _rated(model: np.ndarray) -> np.ndarray:
    return np.array([m.rated_cycles for m in BATTERY_MODELS], dtype=float)[model]


def _wear_factor(rng: np.random.Generator, model: np.ndarray, engine_factor: np.ndarray) -> np.ndarray:
    model_factor = np.array([m.cost_factor for m in BATTERY_MODELS])[model]
    return np.round(model_factor * engine_factor * rng.lognormal(0.0, UNIT_SPREAD, model.size), 4)


def _missing_days(rng: np.random.Generator, n: int, n_days: int) -> np.ndarray:
    """Days a car did not report: runs of one day, or of 2..10 days, starting at random."""
    starts = rng.random((n, n_days)) < MISSING_RUN_START
    longer = rng.integers(2, LONGEST_MISSING_RUN + 1, (n, n_days), dtype=np.int8)
    length = np.where(rng.random((n, n_days)) < SINGLE_MISSING_DAY, 1, longer)
    missing = np.zeros((n, n_days), dtype=bool)
    for offset in range(min(LONGEST_MISSING_RUN, n_days)):
        missing[:, offset:] |= starts[:, : n_days - offset] & (length[:, : n_days - offset] > offset)
    return missing


def _car_table(
    rng: np.random.Generator,
    first_car: int,
    engine: np.ndarray,
    region: np.ndarray,
    first_install: pd.DatetimeIndex,
) -> pd.DataFrame:
    n = len(engine)
    purchase = first_install - pd.to_timedelta(rng.integers(0, 3 * 365 + 1, n), unit="D")
    return pd.DataFrame(
        {
            "Car_ID": pd.Series([f"CAR-{k:05d}" for k in range(first_car + 1, first_car + n + 1)], dtype=object),
            "Make": pd.Series(np.array(MAKES)[rng.integers(0, len(MAKES), n)], dtype="str"),
            "Model_Year": pd.Series(purchase.year - rng.integers(0, 2, n), dtype="Int64"),
            "Engine_Type": pd.Series(np.array([e.name for e in ENGINE_TYPES])[engine], dtype="str"),
            "Region": pd.Series(np.array([c.region for c in CLIMATES])[region], dtype="str"),
            "Purchase_Date": pd.Series(purchase, dtype="datetime64[us]"),
        }
    )[CAR_COLUMNS]


def _battery_table(
    blocks: list[_Block], car_ids: np.ndarray, days: pd.DatetimeIndex
) -> tuple[pd.DataFrame, np.ndarray]:
    """All blocks' batteries with fleet-wide ids (by generation, then car), and each cell's battery row."""
    car_offsets = np.cumsum([0] + [len(b.cars) for b in blocks])[:-1]
    row_offsets = np.cumsum([0] + [len(b.batteries["car"]) for b in blocks])[:-1]
    part = {key: np.concatenate([b.batteries[key] for b in blocks]) for key in blocks[0].batteries}
    car = np.concatenate([b.batteries["car"] + off for b, off in zip(blocks, car_offsets, strict=True)])
    previous = np.concatenate(
        [
            np.where(b.batteries["previous"] >= 0, b.batteries["previous"] + off, -1)
            for b, off in zip(blocks, row_offsets, strict=True)
        ]
    )
    order = np.lexsort((car, part["generation"]))
    ids = np.empty(len(car), dtype=object)
    ids[order] = [str(k) for k in range(1, len(car) + 1)]
    reported = ids.copy()
    for generation in range(1, part["generation"].max() + 1):  # a silent one reports its predecessor's id
        silent = np.flatnonzero(part["silent"] & (part["generation"] == generation))
        reported[silent] = reported[previous[silent]]

    n_days = len(days)
    first_day = days[0].to_datetime64()
    table = pd.DataFrame(
        {
            BATTERY_ID: pd.Series(ids, dtype=object),
            CAR_ID: pd.Series(car_ids[car], dtype=object),
            "Battery_Model": pd.Series(np.array([m.name for m in BATTERY_MODELS])[part["model"]], dtype="str"),
            RATED_CYCLES: _rated(part["model"]).astype(np.int64),
            "Installed": _day_dates(first_day, part["install"], True),
            "Replaced": _day_dates(first_day, part["replaced"], part["replaced"] < n_days - FUTURE_DAYS),
            "Wear_Factor": part["wear"],
            "Reported_ID": pd.Series(reported, dtype=object),
            "Rated_Life_Reached": _day_dates(first_day, part["reach"], part["reach"] < n_days),
        }
    )
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    cell_rows = np.concatenate([b.battery + off for b, off in zip(blocks, row_offsets, strict=True)])
    return table.iloc[order].reset_index(drop=True), position[cell_rows]


def _day_dates(first_day: np.datetime64, offset: np.ndarray, known: np.ndarray | bool) -> np.ndarray:
    """Day indices (0 = the start, negative before it) as dates; NaT where not `known`."""
    dates = first_day + offset.astype("timedelta64[D]")
    return np.where(known, dates, np.datetime64("NaT")).astype(DATE_DTYPE)


def _truth(
    blocks: list[_Block],
    cell_battery: np.ndarray,
    batteries: pd.DataFrame,
    car_ids: np.ndarray,
    period: pd.DatetimeIndex,
) -> pd.DataFrame:
    cells = {
        name: np.concatenate([getattr(b, name) for b in blocks])
        for name in ("age", "trips", "minutes", "cycles", "lifetime")
    }
    return pd.DataFrame(
        {
            DATE: np.tile(period.to_numpy(DATE_DTYPE), len(car_ids)),
            BATTERY_ID: pd.Series(batteries[BATTERY_ID].to_numpy(object)[cell_battery], dtype=object),
            CAR_ID: pd.Series(np.repeat(car_ids, len(period)), dtype=object),
            AGE_DAYS: cells["age"].astype(np.float64),
            TRIPS: cells["trips"].astype(np.float64),
            TRIP_MINUTES: cells["minutes"],
            DAILY_CYCLES: cells["cycles"],
            LIFETIME_CYCLES: cells["lifetime"],
            RATED_CYCLES: batteries[RATED_CYCLES].to_numpy(np.float64)[cell_battery],
        }
    )[COLUMNS]


def _dirty_telemetry(
    rng: np.random.Generator, truth: pd.DataFrame, missing: np.ndarray, reported_ids: np.ndarray
) -> tuple[pd.DataFrame, dict[str, int]]:
    """What the cars send: the truth minus missing days, under reported ids, split, glitched, duplicated."""
    kept = ~missing
    rows = {column: truth[column].to_numpy()[kept] for column in COLUMNS}
    rows[BATTERY_ID] = reported_ids[kept]
    rows, twelve_hour_rows = _split_twelve_hour(rows)

    n = len(rows[DATE])
    rates = (GLITCH_RATE, BLANK_RATE, EXACT_DUPLICATE_RATE, NEAR_DUPLICATE_RATE)
    counts = [round(rate * n) for rate in rates]
    picked = rng.choice(n, sum(counts), replace=False)
    glitched, blanked, exact, near = np.split(picked, np.cumsum(counts)[:-1])
    _plant_glitches(rng, rows, glitched)
    for row, column in zip(blanked, rng.integers(0, len(MEASURE_COLUMNS), blanked.size), strict=True):
        rows[MEASURE_COLUMNS[column]][row] = np.nan
    rows = _plant_duplicates(rng, rows, exact, near)

    telemetry = pd.DataFrame(
        {
            column: pd.Series(values, dtype=object) if column in (BATTERY_ID, CAR_ID) else values
            for column, values in rows.items()
        }
    )[COLUMNS]
    planted = {
        "twelve_hour_rows": twelve_hour_rows,
        "exact_duplicates": int(exact.size),
        "near_duplicates": int(near.size),
        "missing_days": int(missing.sum()),
        "glitches": int(glitched.size),
        "blank_values": int(blanked.size),
    }
    return telemetry, planted


def _split_twelve_hour(rows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """Each day before 2015 becomes a 00:00 row (first half) and a 12:00 row (second half)."""
    early = rows[DATE] < TWELVE_HOUR_UNTIL
    source = np.repeat(np.arange(len(early)), np.where(early, 2, 1))
    split = early[source]
    second = np.zeros(len(source), dtype=bool)
    second[1:] = split[1:] & (source[1:] == source[:-1])
    out = {column: values[source] for column, values in rows.items()}
    out[DATE] = out[DATE] + np.where(second, np.timedelta64(12, "h"), np.timedelta64(0, "h"))
    morning_trips = np.floor(out[TRIPS] / 2)
    half_trips = np.where(second, out[TRIPS] - morning_trips, morning_trips)
    out[TRIPS] = np.where(split, half_trips, out[TRIPS])
    out[TRIP_MINUTES] = np.round(np.where(split, out[TRIP_MINUTES] / 2, out[TRIP_MINUTES]), 3)
    out[DAILY_CYCLES] = np.round(np.where(split, out[DAILY_CYCLES] / 2, out[DAILY_CYCLES]), 5)
    at_noon = out[LIFETIME_CYCLES] - out[DAILY_CYCLES]
    out[LIFETIME_CYCLES] = np.round(np.where(split & ~second, at_noon, out[LIFETIME_CYCLES]), 5)
    return out, int(split.sum())


def _plant_glitches(rng: np.random.Generator, rows: dict[str, np.ndarray], at: np.ndarray) -> None:
    """Overwrite one value in each row of `at` with a reading no real car could produce."""
    kind = rng.integers(0, 5, at.size)
    kind[(kind == 2) & (rows[LIFETIME_CYCLES][at] < 5)] = 3  # a zero counter must be visibly wrong
    negative_cycles, absurd_minutes, zero_counter, counter_spike, negative_trips = (at[kind == k] for k in range(5))
    rows[DAILY_CYCLES][negative_cycles] = -np.round(rng.uniform(0.01, 0.5, negative_cycles.size), 4)
    rows[TRIP_MINUTES][absurd_minutes] = rng.choice([9999.0, -1.0], absurd_minutes.size)
    rows[LIFETIME_CYCLES][zero_counter] = 0.0
    rows[LIFETIME_CYCLES][counter_spike] = np.round(rng.uniform(2e5, 1e7, counter_spike.size), 1)
    rows[TRIPS][negative_trips] = -rng.integers(1, 6, negative_trips.size).astype(np.float64)


def _plant_duplicates(
    rng: np.random.Generator, rows: dict[str, np.ndarray], exact: np.ndarray, near: np.ndarray
) -> dict[str, np.ndarray]:
    """Insert a copy right after each `exact` row, and a copy off in the last digits after each `near` row."""
    near_copy = {column: values[near] for column, values in rows.items()}
    nudged = np.array([TRIP_MINUTES, DAILY_CYCLES, LIFETIME_CYCLES])[rng.integers(0, 3, near.size)]
    steps = rng.integers(1, 4, near.size)
    for column, unit in ((TRIP_MINUTES, 0.01), (DAILY_CYCLES, 1e-4), (LIFETIME_CYCLES, 1e-4)):
        mine = nudged == column
        near_copy[column][mine] = np.round(near_copy[column][mine] + steps[mine] * unit, 5)
    order = np.argsort(np.concatenate([np.arange(len(rows[DATE])), exact, near]), kind="stable")
    return {
        column: np.concatenate([values, values[exact], near_copy[column]])[order] for column, values in rows.items()
    }


def _write_note(rng: np.random.Generator, template: str, year: int, condition: str, material: str) -> str:
    """One technician's note: the template's phrasing with this note's words, typo, extras and casing."""
    if template == "empty":
        return str(rng.choice(["", " "]))
    if template == "gibberish":
        text = " ".join(
            "".join(rng.choice(list("bcdfghjklmnpqrstvwxz"), rng.integers(3, 8))) for _ in range(rng.integers(1, 4))
        )
        return text if rng.random() < 0.7 else str(rng.choice(["???", "n/a", "-", "xx", "..."]))
    part = str(rng.choice(PART_NAMES))
    if template == "silent":
        text = str(rng.choice(SILENT_NOTES)).format(part=part)
    else:
        words = {"made": str(rng.choice(MADE_WORDS)), "year": _write_year(rng, year), "condition": condition,
                 "material": str(rng.choice(MATERIAL_SPELLINGS[material])), "part": part}  # fmt: skip
        phrasing = COMPONENT_TEMPLATES[template]
        typo_slots = [slot for slot in ("condition", "material", "made", "part")
                      if "{" + slot + "}" in phrasing and re.search(r"[a-z]{4}", words[slot])]  # fmt: skip
        if typo_slots and rng.random() < TYPO_RATE:
            slot = typo_slots[rng.integers(len(typo_slots))]
            words[slot] = _typo(rng, words[slot])
        text = phrasing.format(**words)
    if rng.random() < EXTRA_WORDS_RATE:
        extra = str(rng.choice(NOTE_EXTRAS)).format(n=rng.integers(2, 99))
        text = f"{extra} {text}" if rng.random() < 0.5 else f"{text} {extra}"
    return _cased(rng, text)


def _cased(rng: np.random.Generator, text: str) -> str:
    """As technicians type: sentence case (50 %), lower, UPPER or Title case."""
    casing = rng.choice(["sentence", "lower", "upper", "title"], p=[0.5, 0.2, 0.15, 0.15])
    return {"sentence": text[:1].upper() + text[1:], "lower": text.lower(), "upper": text.upper(),
            "title": text.title()}[casing]  # fmt: skip


def _write_year(rng: np.random.Generator, year: int) -> str:
    """1985 (55 %), '85 (15 %) or spelled out (30 %): "nineteen eighty-five", "two thousand and ten"."""
    form = rng.choice(["digits", "apostrophe", "words"], p=[0.55, 0.15, 0.30])
    if form == "digits":
        return str(year)
    if form == "apostrophe":
        return str(rng.choice(["'", "’"])) + f"{year % 100:02d}"
    separator = str(rng.choice(["-", " "]))
    if year < 2000:
        return "nineteen " + _spell_two_digits(year - 1900, separator)
    if year >= 2010 and rng.random() < 0.5:
        return "twenty " + _spell_two_digits(year - 2000, separator)
    rest = year - 2000
    tail = "" if rest == 0 else " " + (UNITS[rest - 1] if rest < 10 else _spell_two_digits(rest, separator))
    return "two thousand" + (" and" if rng.random() < 0.3 else "") + tail


def _spell_two_digits(number: int, separator: str) -> str:
    """1..99 as a year's last two digits are said: "oh five", "twelve", "eighty-five"."""
    if number < 10:
        return f"oh{separator}{UNITS[number - 1]}"
    if number < 20:
        return TEENS[number - 10]
    tens, unit = divmod(number, 10)
    return TENS[tens - 2] + (f"{separator}{UNITS[unit - 1]}" if unit else "")


def _typo(rng: np.random.Generator, phrase: str) -> str:
    """One slip of the keyboard in one word of at least four letters: a swap, a doubled, wrong or lost letter."""
    words = phrase.split(" ")
    long_words = [i for i, word in enumerate(words) if re.fullmatch(r"[a-z]{4,}", word)]
    if not long_words:
        return phrase
    i = long_words[rng.integers(len(long_words))]
    word = words[i]
    while True:
        at = int(rng.integers(1, len(word) - 1))
        kind = rng.choice(["swap", "double", "wrong", "lost"] if len(word) >= 6 else ["swap", "double", "wrong"])
        slipped = {
            "swap": word[:at] + word[at + 1] + word[at] + word[at + 2 :],
            "double": word[:at] + word[at] + word[at:],
            "wrong": word[:at] + str(rng.choice(list("aeiourstnl"))) + word[at + 1 :],
            "lost": word[:at] + word[at + 1 :],
        }[kind]
        if slipped != word:
            words[i] = slipped
            return " ".join(words)


def _is_holiday(days: pd.DatetimeIndex) -> np.ndarray:
    """Summer holidays (20 July – 15 August) and Christmas (24 December – 1 January)."""
    month_day = days.month * 100 + days.day
    return np.asarray(((month_day >= 720) & (month_day <= 815)) | (month_day >= 1224) | (month_day <= 101))


def _frost(days: pd.DatetimeIndex) -> np.ndarray:
    """1 from the first hard frost (15 November) to the thaw (15 March) inclusive, else 0."""
    month_day = days.month * 100 + days.day
    return np.asarray((month_day >= FROST_SEASON[0]) | (month_day <= FROST_SEASON[1]), dtype=np.float64)


def _winter_weight(days: pd.DatetimeIndex) -> np.ndarray:
    """1 in mid-January, 0 in mid-July, a cosine in between."""
    return (1.0 + np.cos(2 * np.pi * (days.day_of_year.to_numpy() - 15) / 365.25)) / 2


def _date_text(dates: np.ndarray) -> np.ndarray:
    text = np.datetime_as_string(dates, unit="D").astype(object)
    early = dates < TWELVE_HOUR_UNTIL
    if early.any():  # np.char.replace fails on an empty array (numpy 2.x): a fleet starting in 2015 has none
        text[early] = np.char.replace(np.datetime_as_string(dates[early], unit="s"), "T", " ")
    return text
