"""Alerts: which scores become a service alert for a head unit, what it says, and whether to send it now.

Pure functions, no I/O. The alert JSON is the fixed contract of docs/contracts.md ("Alert to a head unit");
`build_alerts` owns that envelope for every alert type, and `alerts_from_scores` fills it for the one
type that exists today, a battery nearing the end of its rated life.

`alert_id` is a hash of car, battery, type and the day the score is about, never of the time it was
computed: the nightly batch and the streaming path score the same day independently, and a queue retry
rebuilds the same alert, so all of them carry one id and the car gets it once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from shared.core.messages import FALLBACK_LOCALE, LOCALE, catalogue, locales, resolve_locale
from shared.core.risk import DAYS_P10, DAYS_P90, DAYS_TO_RATED_LIFE, INTERVAL_COLUMNS, PROBABILITY
from shared.core.telemetry import BATTERY_ID, CAR_ID, LIFETIME_CYCLES, RATED_CYCLES, InputError

BATTERY_END_OF_LIFE = "battery_end_of_life"

# Columns of a scores frame (the batch scores table, or the endpoint's predictions with the battery's
# latest record joined on).
AS_OF = "As_Of"
REASONS = "reasons"
MODEL_VERSION = "model_version"
SCORE_COLUMNS = [BATTERY_ID, CAR_ID, PROBABILITY, DAYS_TO_RATED_LIFE, LIFETIME_CYCLES, RATED_CYCLES, AS_OF]

# The alert JSON's keys, in the contract's order, and the added ones (docs/contracts.md, "Additions"), which
# a message queued before they existed may lack.
REQUIRED_ALERT_KEYS = (
    "alert_id", "car_id", "battery_id", "type", "severity", "failure_probability_30d", "days_to_rated_life",
    "title", "message", "action", "reasons", "model_version", "created_at",
)  # fmt: skip
ALERT_KEYS = (*REQUIRED_ALERT_KEYS, LOCALE, *INTERVAL_COLUMNS)
# The message gives the interval of days to rated life ("in about 12 days (between 9 and 16)") when it says
# something: at least a day away, and no wider than this share of the days it is about.
INTERVAL_MAX_WIDTH_SHARE = 1.0

HIGH = "high"
CRITICAL = "critical"
SEVERITY_RANK = {HIGH: 1, CRITICAL: 2}
CRITICAL_WITHIN_DAYS = 7

SCHEDULE_SERVICE = "schedule_service"

# Why `should_deliver` decided as it did; stable codes for records and run summaries.
FIRST = "first"
COOLDOWN_ELAPSED = "cooldown_elapsed"
ESCALATED = "escalated"
COOLDOWN = "cooldown"
DUPLICATE = "duplicate"

_ALERT_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{2,62}")
_ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"
MAX_ID_LENGTH = 512
# What no id may hold: Table storage keys refuse / \ # ? and control characters, and a URL path segment
# would need / \ # ? escaped, which gateways and proxies treat inconsistently (%2F is often refused).
_FORBIDDEN_ID_CHARACTERS = frozenset("/\\#?") | {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}


@dataclass(frozen=True)
class AlertBatch:
    """What a scoring run produced (nightly batch, a telemetry batch, parked re-scoring): alert messages
    for the queue, and a summary for the log. Here rather than with any one producer, so the streaming
    path need not import the training stack to name it."""

    alerts: list[dict]
    summary: dict


def iso_utc(moment: datetime) -> str:
    """`2017-03-20T03:00:00Z`: the one timestamp format of alerts and their records (sorts as text)."""
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment!r} has no time zone; pass an aware datetime (UTC)")
    return moment.astimezone(UTC).strftime(_ISO_UTC)


def parse_iso_utc(text: str) -> datetime:
    """The aware UTC datetime of an `iso_utc` string."""
    return datetime.strptime(text, _ISO_UTC).replace(tzinfo=UTC)


def check_id(value: object, name: str) -> str:
    """`value` if it can name a car or an alert everywhere an alert takes it, else `InputError` naming
    `name` and what is wrong.

    Everywhere: a Table storage key (PartitionKey = car, RowKey = alert), one segment of the gateway's URL
    path, and UTF-8 JSON. So: a non-blank string of at most MAX_ID_LENGTH characters, without / \\ # ? or
    control characters, not "." or ".." (dot segments, which a URL resolves to the parent path whether
    escaped or not), and without lone surrogates (no UTF-8 for them).
    """
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{name} must be a non-empty string, got {value!r}")
    shown = value if len(value) <= 40 else f"{value[:40]}…"
    if len(value) > MAX_ID_LENGTH:
        raise InputError(f"{name} {shown!r} is {len(value)} characters long, over the limit of {MAX_ID_LENGTH}")
    bad = sorted(set(value) & _FORBIDDEN_ID_CHARACTERS)
    if bad:
        raise InputError(f"{name} {shown!r} contains {bad!r}, which no id may hold (Table keys, URL paths)")
    if value in (".", ".."):
        raise InputError(f"{name} {value!r} is a URL dot segment: it would change the gateway path it is sent to")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{name} {shown!r} holds a lone surrogate, which has no UTF-8 encoding") from None
    return value


def alert_id(car_id: str, battery_id: str, alert_type: str, day: date | str) -> str:
    """The id of the alert of `alert_type` for a car's battery about `day` (32 hex characters).

    A hash of the JSON list [car, battery, type, YYYY-MM-DD], so no choice of ids can make two
    different alerts collide, and the id is safe as an HTTP header and a Table storage RowKey.
    """
    day_text = day if isinstance(day, str) else day.strftime("%Y-%m-%d")
    key = json.dumps([str(car_id), str(battery_id), alert_type, day_text])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def alerts_from_scores(
    scores: pd.DataFrame,
    threshold: float,
    created_at: datetime,
    action_url: str,
    model_version: str | None = None,
    car_locales: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One `battery_end_of_life` alert per scored battery with failure probability ≥ threshold.

    Title, message and reasons are in the car's language (`car_locales`: Car_ID → locale, e.g.
    `shared.core.messages.car_locales(cars)`; a car not in it, or no mapping, gets English).

    `scores` has the columns of SCORE_COLUMNS, optionally `reasons` (a list of strings per row; empty or
    missing → the numbers behind the alert, in words), `model_version` (else the argument is used) and the
    interval of days to rated life (risk.INTERVAL_COLUMNS; missing → null, and the message without it).
    Rows with no probability (the scorer could not score them) are not alerts; the scorer's caller
    records those. Severity, message and ids are computed on the values as the car will see them
    (probability to 4 places, days to 1), so what a head unit shows is consistent with itself.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise InputError(f"scores: missing column(s): {', '.join(missing)}")
    if model_version is None and MODEL_VERSION not in scores.columns:
        raise InputError(f"scores: no {MODEL_VERSION} column and no model_version given")

    probability = _numbers(scores, PROBABILITY)
    outside = probability.notna() & ~probability.between(0.0, 1.0)
    if outside.any():
        raise InputError(f"scores: column {PROBABILITY}: outside [0, 1] on row(s) {_rows(outside)}")
    over = scores.loc[probability >= threshold]
    probability = probability[over.index].round(4)
    days = _numbers(over, DAYS_TO_RATED_LIFE).round(1)
    days = days.where(np.isfinite(days))
    interval = {column: (_numbers(over, column) if column in over else pd.Series(np.nan, index=over.index)).round(1)
                for column in INTERVAL_COLUMNS}  # fmt: skip
    lifetime = _numbers(over, LIFETIME_CYCLES)
    rated = _numbers(over, RATED_CYCLES)
    past_rated_life = lifetime >= rated
    car_ids = _ids(over, CAR_ID)
    locale = car_ids.map(lambda car: resolve_locale((car_locales or {}).get(car, FALLBACK_LOCALE)))
    day = _days(over)

    content = pd.DataFrame(
        {
            "car_id": car_ids,
            "battery_id": _ids(over, BATTERY_ID),
            "day": day,
            "severity": np.where(past_rated_life | (days <= CRITICAL_WITHIN_DAYS), CRITICAL, HIGH),
            PROBABILITY: probability,
            DAYS_TO_RATED_LIFE: days,
            "title": [catalogue(code).render(f"{BATTERY_END_OF_LIFE}.title") for code in locale],
            "message": _battery_messages(days, past_rated_life, locale, interval[DAYS_P10], interval[DAYS_P90]),
            REASONS: _battery_reasons(over, probability, lifetime, rated, days, past_rated_life, day, locale),
            MODEL_VERSION: over[MODEL_VERSION].astype(object) if MODEL_VERSION in over else model_version,
            LOCALE: locale,
            **interval,
        },
        index=over.index,
    )
    return build_alerts(content, BATTERY_END_OF_LIFE, created_at, action_url)


def build_alerts(content: pd.DataFrame, alert_type: str, created_at: datetime, action_url: str) -> list[dict]:
    """The contract's alert envelope, one per row of `content`, for any alert type.

    `content` has the columns car_id, battery_id, day (YYYY-MM-DD the alert is about), severity,
    failure_probability_30d, days_to_rated_life (NaN → null), title, message, reasons, model_version, and
    optionally locale (the language title, message and reasons are in; English when absent) and the
    interval of days to rated life (INTERVAL_COLUMNS; absent or NaN → null).
    Each alert gets its own `action` and `reasons` objects, so changing one never changes another.
    """
    if not _ALERT_TYPE_PATTERN.fullmatch(alert_type):
        raise ValueError(f"alert type must be lower_snake_case of 3-63 characters, got {alert_type!r}")
    created = iso_utc(created_at)
    days_to_life = content[DAYS_TO_RATED_LIFE].astype(object).where(content[DAYS_TO_RATED_LIFE].notna(), None)
    intervals = zip(*[_nullable_numbers(content, column) for column in INTERVAL_COLUMNS], strict=True)
    columns = zip(
        content["car_id"], content["battery_id"], content["day"], content["severity"],
        content[PROBABILITY].astype("float64").tolist(), days_to_life.tolist(),
        content["title"], content["message"], content[REASONS], content[MODEL_VERSION],
        content[LOCALE] if LOCALE in content else [FALLBACK_LOCALE] * len(content), intervals,
        strict=True,
    )  # fmt: skip
    return [
        {
            "alert_id": alert_id(car, battery, alert_type, day),
            "car_id": car,
            "battery_id": battery,
            "type": alert_type,
            "severity": severity,
            "failure_probability_30d": probability,
            "days_to_rated_life": days,
            "title": title,
            "message": message,
            "action": {"type": SCHEDULE_SERVICE, "url": action_url},
            "reasons": list(reasons),
            "model_version": str(version),
            "created_at": created,
            LOCALE: locale,
            **dict(zip(INTERVAL_COLUMNS, span, strict=True)),
        }
        for car, battery, day, severity, probability, days, title, message, reasons, version, locale, span in columns
    ]


def _nullable_numbers(content: pd.DataFrame, column: str) -> list[float | None]:
    """A column as JSON numbers, NaN and an absent column as null."""
    if column not in content:
        return [None] * len(content)
    values = content[column].astype("float64")
    return [None if np.isnan(value) else value for value in values.tolist()]


def validate_alert(alert: Mapping[str, Any]) -> None:
    """Raise `InputError` naming what is wrong with an alert read back from a queue message."""
    problems = [f"missing {key}" for key in REQUIRED_ALERT_KEYS if key not in alert]
    for key in ("alert_id", "car_id"):  # Table keys and a URL path segment
        if key in alert:
            try:
                check_id(alert[key], key)
            except InputError as error:
                problems.append(str(error))
    battery = alert.get("battery_id")  # neither: a compliance alert lists the car's parts in it
    if "battery_id" in alert and not (isinstance(battery, str) and battery.strip()):
        problems.append(f"battery_id must be a non-empty string, got {battery!r}")
    alert_type = alert.get("type")
    if "type" in alert and not (isinstance(alert_type, str) and _ALERT_TYPE_PATTERN.fullmatch(alert_type)):
        problems.append(f"type must be lower_snake_case, got {alert['type']!r}")
    if "severity" in alert and alert["severity"] not in SEVERITY_RANK:
        problems.append(f"severity must be one of {sorted(SEVERITY_RANK)}, got {alert['severity']!r}")
    for key in INTERVAL_COLUMNS:
        value = alert.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0):
            problems.append(f"{key} must be null or a number of days ≥ 0, got {value!r}")
    if LOCALE in alert and alert[LOCALE] not in locales():
        problems.append(f"locale must be one of {', '.join(locales())}, got {alert[LOCALE]!r}")
    if "created_at" in alert:
        try:
            parse_iso_utc(alert["created_at"])
        except (TypeError, ValueError):
            problems.append(f"created_at must look like 2017-03-20T03:00:00Z, got {alert['created_at']!r}")
    if problems:
        raise InputError(f"alert {alert.get('alert_id', '?')!r}: {'; '.join(problems)}")


def should_deliver(
    alert: Mapping[str, Any], previous: Mapping[str, Any] | None, cooldown_days: int, now: datetime
) -> tuple[bool, str]:
    """Whether to push `alert` now, and why (one of FIRST, COOLDOWN_ELAPSED, ESCALATED, COOLDOWN, DUPLICATE).

    `previous` is the latest alert of the same type *delivered* to the same car (keys alert_id,
    severity, delivered_at), or None. An owner told "service your battery" does not need telling again
    every night for a week; but if things got worse (high → critical) they hear it at once. `now` and
    `delivered_at` are on the same clock: wall time in production, the simulated day in a replay.
    """
    if previous is None:
        return True, FIRST
    if previous["alert_id"] == alert["alert_id"]:
        return False, DUPLICATE
    if now - parse_iso_utc(previous["delivered_at"]) >= timedelta(days=cooldown_days):
        return True, COOLDOWN_ELAPSED
    if SEVERITY_RANK[alert["severity"]] > SEVERITY_RANK[previous["severity"]]:
        return True, ESCALATED
    return False, COOLDOWN


def _battery_messages(
    days: pd.Series, past_rated_life: pd.Series, locale: pd.Series, p10: pd.Series, p90: pd.Series
) -> list[str]:
    """Plain words for the owner: what will happen, and roughly when (whole days, never "about 0 days"),
    with the interval when it is informative (INTERVAL_MAX_WIDTH_SHARE): its ends rounded outwards."""
    whole_days = np.floor(days.fillna(0.0)).astype("int64")
    low = np.floor(p10.fillna(-1.0)).astype("int64")
    high = np.ceil(p90.fillna(-1.0)).astype("int64")
    informative = (
        (low >= 1) & (low < whole_days) & (whole_days < high) & (high - low <= INTERVAL_MAX_WIDTH_SHARE * whole_days)
    )
    case = np.select(
        [past_rated_life, days.isna(), whole_days < 1, whole_days == 1, informative],
        ["reached", "within_30_days", "within_a_day", "one_day", "days_between"],
        default="days",
    )
    return [catalogue(code).render(f"{BATTERY_END_OF_LIFE}.message.{which}", days=int(n), low=int(a), high=int(b))
            for code, which, n, a, b in zip(locale, case, whole_days, low, high, strict=True)]  # fmt: skip


def _battery_reasons(
    over: pd.DataFrame,
    probability: pd.Series,
    lifetime: pd.Series,
    rated: pd.Series,
    days: pd.Series,
    past_rated_life: pd.Series,
    day: pd.Series,
    locale: pd.Series,
) -> list[list[str]]:
    """The scorer's reasons where it gave some and the car reads English (the model words them in English
    only), else the numbers that triggered the alert, and the day rated life is expected, in the car's
    language."""
    given = over[REASONS] if REASONS in over else pd.Series(None, index=over.index, dtype=object)
    chance = (probability * 100).round().astype("int64")
    whole_rated = rated.round().astype("int64")
    whole_days = np.floor(days.fillna(0.0)).astype("int64")
    dated = days.notna() & ~past_rated_life & (whole_days >= 1)
    expected_on = pd.to_datetime(day) + pd.to_timedelta(whole_days, unit="D")
    rows = zip(given, locale, chance, whole_rated, lifetime.round(1), dated, expected_on, strict=True)
    reasons = []
    for scorer, code, percent, cycles, used, has_date, on in rows:
        if code == FALLBACK_LOCALE and isinstance(scorer, list | tuple | np.ndarray) and len(scorer):
            reasons.append(list(scorer))
            continue
        words = catalogue(code)
        facts = [words.render(f"{BATTERY_END_OF_LIFE}.reason.chance", chance=int(percent), rated=int(cycles)),
                 words.render(f"{BATTERY_END_OF_LIFE}.reason.used", used=float(used), rated=int(cycles))]  # fmt: skip
        if has_date:
            facts.append(words.render(f"{BATTERY_END_OF_LIFE}.reason.date", date=on))
        reasons.append(facts)
    return reasons


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    try:
        return frame[column].astype("float64")
    except (TypeError, ValueError):
        bad = pd.to_numeric(frame[column], errors="coerce").isna() & frame[column].notna()
        raise InputError(f"scores: column {column}: not a number on row(s) {_rows(bad)}") from None


def _ids(frame: pd.DataFrame, column: str) -> pd.Series:
    ids = frame[column].astype("string").str.strip()
    empty = ids.isna() | (ids == "")
    if empty.any():
        raise InputError(f"scores: column {column}: empty id on row(s) {_rows(empty)}")
    return ids.astype(object)


def _days(frame: pd.DataFrame) -> pd.Series:
    days = pd.to_datetime(frame[AS_OF], errors="coerce", format="ISO8601")
    if days.isna().any():
        raise InputError(f"scores: column {AS_OF}: not a date on row(s) {_rows(days.isna())}")
    return days.dt.strftime("%Y-%m-%d").astype(object)


def _rows(mask: pd.Series, limit: int = 5) -> str:
    rows = [str(i) for i in mask.index[mask.to_numpy(bool)]]
    return ", ".join(rows[:limit]) + (f" and {len(rows) - limit} more" if len(rows) > limit else "")
