"""Car profiles: what the app needs to know about a car to talk to it, in the Table storage table "cars".

One row per car (PartitionKey = Car_ID, RowKey = "profile"): `Locale` (the language its alerts are written
in; shared/core/messages.py) and `Channel` (how they reach its head unit: http or iothub; empty = the app's
ALERT_CHANNEL). Written from the car table (cars.csv, whose optional `locale` and `channel` columns fill
it; the locale defaults from Region); read one car at a time, because only cars being alerted are looked up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from shared.config.names import CARS_TABLE
from shared.config.settings import ALERT_CHANNELS
from shared.core.alerts import check_id
from shared.core.messages import FALLBACK_LOCALE, car_locales
from shared.core.telemetry import CAR_ID, InputError

CHANNEL = "channel"  # the car table's optional column
_PROFILE_ROW = "profile"


@dataclass(frozen=True)
class CarProfile:
    """A car's locale, and its channel (None: the app's ALERT_CHANNEL)."""

    locale: str = FALLBACK_LOCALE
    channel: str | None = None


def write_profiles(tables: TableServiceClient, cars: pd.DataFrame) -> int:
    """Upsert every car's profile from the car table (`read_cars_csv`'s frame); the number written.

    A channel that is neither http nor iothub is refused (`InputError` naming the cars) before anything
    is written, so a typo cannot send a car's alerts nowhere.
    """
    channels = cars[CHANNEL].astype("string").str.strip().str.lower() if CHANNEL in cars else None
    if channels is not None:
        bad = channels.notna() & (channels != "") & ~channels.isin(ALERT_CHANNELS)
        if bad.any():
            named = list(zip(cars.loc[bad, CAR_ID], channels[bad], strict=True))[:5]
            shown = ", ".join(f"{car} ({value!r})" for car, value in named)
            raise InputError(f"car table: column {CHANNEL} must be one of {', '.join(ALERT_CHANNELS)}: {shown}")
    locales = car_locales(cars)
    table = tables.create_table_if_not_exists(CARS_TABLE)
    for position, (car, locale) in enumerate(locales.items()):
        channel = "" if channels is None or pd.isna(channels.iloc[position]) else str(channels.iloc[position])
        entity = {"PartitionKey": check_id(car, CAR_ID), "RowKey": _PROFILE_ROW, "Locale": locale, "Channel": channel}
        table.upsert_entity(entity, mode=UpdateMode.MERGE)  # merge: the lifecycle's TimeZone stays
    return len(locales)


def read_profiles(tables: TableServiceClient, car_ids: Iterable[str]) -> dict[str, CarProfile]:
    """The profile of each car named (the default profile for a car with none), one point read per car."""
    table = tables.get_table_client(CARS_TABLE)
    profiles = {}
    for car in dict.fromkeys(car_ids):
        try:
            row = table.get_entity(check_id(car, CAR_ID), _PROFILE_ROW)
        except ResourceNotFoundError:  # no row for the car, or no table yet
            profiles[car] = CarProfile()
            continue
        profiles[car] = CarProfile(locale=row.get("Locale") or FALLBACK_LOCALE, channel=row.get("Channel") or None)
    return profiles


def read_locales(tables: TableServiceClient, car_ids: Iterable[str]) -> dict[str, str]:
    """Car_ID → locale of the cars named, for `shared.core.alerts.alerts_from_scores(car_locales=…)`."""
    return {car: profile.locale for car, profile in read_profiles(tables, car_ids).items()}
