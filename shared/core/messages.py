"""Messages: what an alert says, in the car's language, from the catalogues in `message_catalogues/`.

A catalogue is a JSON file per language (`<locale>.json`, two lower-case letters): its messages by key, and
the locale's conventions as data (decimal and grouping separators, the smallest integer part that is
grouped, the date pattern and, where the pattern names months, their names). Adding a language is adding a
file (README, "Languages"); nothing here names one except the fallback, English, which every other
catalogue must match key for key and placeholder for placeholder (tests/test_messages.py checks).

Templates use `str.format` fields with a format spec that says what the value is, so a translation moves a
number within its sentence but cannot change how it is written: `{days:d}` (a whole number),
`{rated:,d}` / `{used:,.1f}` (grouped thousands), `{date:date}` (a day in the locale's date pattern).
Python formats the number the English way and the locale's separators are swapped in.
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

CATALOGUE_DIR = Path(__file__).with_name("message_catalogues")
REGION_LOCALES_FILE = CATALOGUE_DIR / "region_locales.json"
FALLBACK_LOCALE = "en"
LOCALE = "locale"  # the alert's field, and the car table's column (lower case: a new, optional column)
_CATALOGUE_NAME = re.compile(r"[a-z]{2}")
_DATE_SPEC = "date"


@dataclass(frozen=True)
class Catalogue:
    """One language's messages and number/date conventions, as its file gives them."""

    locale: str
    messages: Mapping[str, str]
    decimal: str
    group: str
    min_grouping_digits: int
    date_pattern: str
    months: tuple[str, ...] = ()

    def render(self, key: str, **values: Any) -> str:
        """The message `key` with `values` put in, written the locale's way; KeyError for an unknown key."""
        return _LocaleFormatter(self).format(self.messages[key], **values)

    def format_number(self, value: float, spec: str) -> str:
        """`value` formatted by `spec` (a `format` spec: "d", ",d", ",.1f"), with this locale's separators."""
        english = format(value, spec)
        sign, digits = ("-", english[1:]) if english.startswith("-") else ("", english)
        whole = digits.split(".", 1)[0].replace(",", "")
        if "," in spec and len(whole) < 4 + self.min_grouping_digits - 1:
            digits = digits.replace(",", "")  # e.g. Polish and Spanish write 4-digit numbers ungrouped
        return sign + digits.translate({ord(","): self.group, ord("."): self.decimal})

    def format_date(self, day: date) -> str:
        """`day` in the locale's date pattern ({d}, {dd}, {mm}, {yyyy}, {month})."""
        month = self.months[day.month - 1] if self.months else ""
        return self.date_pattern.format(d=day.day, dd=f"{day.day:02d}", mm=f"{day.month:02d}",
                                        yyyy=f"{day.year:04d}", month=month)  # fmt: skip


class _LocaleFormatter(string.Formatter):
    """`str.format` whose numeric fields use the catalogue's separators and whose `:date` fields its date."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == _DATE_SPEC:
            return self.catalogue.format_date(pd.Timestamp(value).date())
        if format_spec and isinstance(value, int | float):
            return self.catalogue.format_number(value, format_spec)
        return super().format_field(value, format_spec)


def placeholders(template: str) -> set[tuple[str, str]]:
    """The (name, format spec) of every field in a template: what every translation of it must have."""
    return {(name, spec or "") for _, name, spec, _ in string.Formatter().parse(template) if name is not None}


@functools.cache
def locales() -> tuple[str, ...]:
    """The languages there is a catalogue for, sorted (read once per process: the files ship with the app)."""
    return tuple(sorted(path.stem for path in CATALOGUE_DIR.glob("*.json") if _CATALOGUE_NAME.fullmatch(path.stem)))


@functools.cache
def catalogue(locale: str | None) -> Catalogue:
    """The catalogue of `locale` ("de", "de-AT" and "de_AT" are German), English for one there is none for."""
    code = resolve_locale(locale)
    data = json.loads((CATALOGUE_DIR / f"{code}.json").read_text(encoding="utf-8"))
    numbers = data["numbers"]
    return Catalogue(locale=code, messages=data["messages"], decimal=numbers["decimal"], group=numbers["group"],
                     min_grouping_digits=int(numbers.get("min_grouping_digits", 1)), date_pattern=data["date"],
                     months=tuple(data.get("months", ())))  # fmt: skip


def resolve_locale(locale: object) -> str:
    """The catalogue a locale tag is served by: its language if there is a catalogue for it, else English."""
    if not isinstance(locale, str):
        return FALLBACK_LOCALE
    language = re.split(r"[-_]", locale.strip().lower(), maxsplit=1)[0]
    return language if language in locales() else FALLBACK_LOCALE


def car_locales(cars: pd.DataFrame) -> pd.Series:
    """Each car's locale (resolved to a catalogue), indexed by Car_ID: the car table's `locale` where it
    names one, else the default of the car's Region (region_locales.json), else English."""
    by_region = {k: v for k, v in json.loads(REGION_LOCALES_FILE.read_text(encoding="utf-8")).items()
                 if not k.startswith("_")}  # fmt: skip
    given = cars[LOCALE] if LOCALE in cars else pd.Series(None, index=cars.index, dtype=object)
    region = cars["Region"].map(by_region) if "Region" in cars else pd.Series(None, index=cars.index, dtype=object)
    chosen = given.where(given.notna() & (given.astype("string").str.strip() != ""), region)
    return pd.Series([resolve_locale(value) for value in chosen], index=cars["Car_ID"].to_numpy(), dtype=object)
