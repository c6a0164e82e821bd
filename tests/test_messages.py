"""Languages: the catalogues are complete, alerts are written in the car's language with its number and date
conventions, an unknown language falls back to English, and the alert still meets the contract."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, date, datetime

import pandas as pd
import pytest

from shared.adapters.car_profiles import CarProfile, read_locales, read_profiles, write_profiles
from shared.adapters.storage import table_service
from shared.core.alerts import ALERT_KEYS, alerts_from_scores, validate_alert
from shared.core.messages import CATALOGUE_DIR, car_locales, catalogue, locales, placeholders, resolve_locale
from shared.core.telemetry import InputError, read_cars_csv

CREATED = datetime(2017, 3, 20, 3, tzinfo=UTC)
URL = "https://service.example.com/book"
NBSP = "\u00a0"


def alert_in(locale: str | None, **columns) -> dict:
    row = {
        "Battery_ID": "17", "Car_ID": "CAR-00017", "failure_probability_30d": 0.93, "days_to_rated_life": 12.5,
        "Lifetime_Cycles_Used": 12345.6, "Battery_Rated_Cycles": 15000, "As_Of": "2017-03-19", "model_version": "v7",
        "reasons": ["usage doubled this month"],
    } | columns  # fmt: skip
    frame = pd.DataFrame({key: [value] for key, value in row.items()})
    [alert] = alerts_from_scores(frame, 0.8, CREATED, URL, car_locales={"CAR-00017": locale})
    return alert


def test_the_languages_asked_for_are_all_there():
    assert set(locales()) >= {"en", "de", "fr", "es", "it", "sv", "pl"}


@pytest.mark.parametrize("locale", locales())
def test_every_catalogue_has_every_key_and_placeholder_of_the_english_one(locale):
    english, other = catalogue("en"), catalogue(locale)
    assert other.locale == locale
    assert set(other.messages) == set(english.messages)
    for key, template in english.messages.items():
        assert placeholders(other.messages[key]) == placeholders(template), f"{locale} {key}"
        assert other.messages[key].strip(), f"{locale} {key} is empty"
    assert other.decimal and other.group and other.decimal != other.group
    assert len(other.months) == (12 if "{month}" in other.date_pattern else 0)
    other.format_date(date(2017, 12, 31))  # every field of the pattern is one the renderer fills


@pytest.mark.parametrize("locale", locales())
def test_every_catalogue_says_the_interval_with_its_own_number_rules(locale):
    """The interval sentence (issue 17) is the plain sentence with both ends of the interval added."""
    alert = alert_in(locale, days_to_rated_life_p10=9.4, days_to_rated_life_p50=12.4, days_to_rated_life_p90=1015.2)
    assert alert["message"] == alert_in(locale)["message"], "a 1,000-day-wide interval says nothing"
    alert = alert_in(locale, days_to_rated_life_p10=9.4, days_to_rated_life_p50=12.4, days_to_rated_life_p90=15.2)
    plain = alert_in(locale)["message"]
    assert alert["message"] != plain and alert["message"][: len(plain) - 1] == plain[:-1]
    assert re.fullmatch(r" \(\D+ 9 \D+ 16\)\.", alert["message"][len(plain) - 1 :]), alert["message"]


def test_a_catalogue_file_missing_a_key_or_a_placeholder_would_be_caught():
    """The check above compares against English: a translation that drops a number is a different set."""
    assert placeholders("in about {days:d} days") != placeholders("in a few days")
    assert placeholders("{used:,.1f} of {rated:,d}") != placeholders("{used:.1f} of {rated:,d}")


def test_a_german_alert_uses_comma_decimals_dot_thousands_and_day_month_year():
    alert = alert_in("de")
    assert alert["locale"] == "de"
    assert alert["title"] == "Batterie-Service empfohlen"
    assert alert["message"] == "Ihre Batterie erreicht das Ende ihrer Nennlebensdauer voraussichtlich in etwa 12 Tagen."
    assert alert["reasons"] == [
        f"93{NBSP}% Wahrscheinlichkeit, die Nennzahl von 15.000 Zyklen innerhalb von 30 Tagen zu erreichen",
        "12.345,6 von 15.000 Nennzyklen verbraucht",
        "Ende der Nennlebensdauer voraussichtlich um den 31.03.2017",
    ]


def test_a_polish_alert_uses_comma_decimals_space_thousands_from_five_digits_and_day_month_year():
    alert = alert_in("pl", Lifetime_Cycles_Used=1234.5, Battery_Rated_Cycles=12000)
    assert alert["locale"] == "pl"
    assert alert["message"] == "Akumulator powinien osiągnąć koniec nominalnej żywotności za około 12 dni."
    assert alert["reasons"] == [
        f"93% prawdopodobieństwa osiągnięcia nominalnych 12{NBSP}000 cykli w ciągu 30 dni",
        f"zużyto 1234,5 z 12{NBSP}000 nominalnych cykli",  # CLDR: Polish leaves 4-digit numbers ungrouped
        "koniec nominalnej żywotności przewidywany około 31.03.2017",
    ]


def test_english_keeps_the_model_reasons_and_other_languages_get_the_numbers_in_their_words():
    """The model words its reasons in English only: a German driver gets none of them, never a mix."""
    assert alert_in("en")["reasons"] == ["usage doubled this month"]
    assert all("usage" not in reason for reason in alert_in("sv")["reasons"])


@pytest.mark.parametrize("given", ["xx", "", None, "klingon", 42])
def test_an_unknown_locale_falls_back_to_english(given):
    alert = alert_in(given, reasons=[])
    assert alert["locale"] == "en"
    assert alert["title"] == "Battery service recommended"
    assert alert["reasons"][1] == "12,345.6 of 15,000 rated cycles used"
    assert alert["reasons"][2] == "rated life expected to be reached around 31 March 2017"


def test_region_tags_are_served_by_their_language():
    tags = ("de-AT", "fr_CA", " PL ", "en-GB", "pt-BR")
    assert [resolve_locale(tag) for tag in tags] == ["de", "fr", "pl", "en", "en"]


def test_every_message_case_renders_in_every_language_and_meets_the_contract():
    cases = [{"days_to_rated_life": 12.5}, {"days_to_rated_life": 1.2}, {"days_to_rated_life": 0.3},
             {"days_to_rated_life": float("nan")},
             {"Lifetime_Cycles_Used": 15000.0, "days_to_rated_life": 0.0}]  # fmt: skip
    for locale in locales():
        messages = set()
        for case in cases:
            alert = alert_in(locale, **case)
            validate_alert(alert)
            assert tuple(alert) == ALERT_KEYS
            assert json.loads(json.dumps(alert, allow_nan=False)) == alert
            messages.add(alert["message"])
        assert len(messages) == len(cases), f"{locale}: two cases share one message"


def test_an_alert_queued_before_locale_existed_still_validates_and_a_bad_locale_is_named():
    alert = alert_in("fr")
    validate_alert({key: value for key, value in alert.items() if key != "locale"})
    with pytest.raises(InputError, match="locale must be one of"):
        validate_alert(alert | {"locale": "xx"})


def test_cars_get_their_own_locale_else_their_regions_else_english():
    cars = pd.DataFrame({"Car_ID": ["A", "B", "C", "D"], "Region": ["Nordic", "Continental", "Atlantic", "Mars"],
                         "locale": ["pl", None, " ", None]})  # fmt: skip
    assert car_locales(cars).to_dict() == {"A": "pl", "B": "de", "C": "en", "D": "en"}
    assert car_locales(cars.drop(columns="locale")).to_dict() == {"A": "sv", "B": "de", "C": "en", "D": "en"}


def test_region_defaults_name_only_languages_there_are_catalogues_for():
    defaults = json.loads((CATALOGUE_DIR / "region_locales.json").read_text(encoding="utf-8"))
    assert {v for k, v in defaults.items() if not k.startswith("_")} <= set(locales())


def test_car_profiles_round_trip_through_table_storage(storage_connection):
    tables = table_service(storage_connection)
    a, b, c = (f"CAR-{uuid.uuid4().hex[:8]}" for _ in range(3))
    cars = pd.DataFrame({"Car_ID": [a, b], "Region": ["Nordic", "Atlantic"], "locale": [None, "it"],
                         "channel": ["IoTHub ", None]})  # fmt: skip
    assert write_profiles(tables, cars) == 2
    assert read_profiles(tables, [a, b, c]) == {a: CarProfile("sv", "iothub"), b: CarProfile("it", None),
                                                c: CarProfile()}  # fmt: skip
    assert read_locales(tables, [b]) == {b: "it"}


def test_a_channel_that_is_not_one_is_refused_naming_the_car_before_anything_is_written(storage_connection):
    tables = table_service(storage_connection)
    good, bad = f"CAR-{uuid.uuid4().hex[:8]}", f"CAR-{uuid.uuid4().hex[:8]}"
    cars = pd.DataFrame({"Car_ID": [good, bad], "Region": ["Nordic", "Nordic"], "channel": ["http", "sms"]})
    with pytest.raises(InputError, match=f"{bad} \\('sms'\\)"):
        write_profiles(tables, cars)
    assert read_profiles(tables, [good]) == {good: CarProfile()}


def test_the_car_table_keeps_its_optional_locale_and_channel_columns(tmp_path):
    path = tmp_path / "cars.csv"
    path.write_text("Car_ID,Make,Model_Year,Engine_Type,Region,Purchase_Date,locale,channel\n"
                    "CAR-1,Arcadia,2013,BEV,Nordic,2013-05-01,pl,iothub\n"
                    "CAR-2,Arcadia,2014,BEV,Continental,2014-05-01,,\n")  # fmt: skip
    cars = read_cars_csv(path)
    assert car_locales(cars).to_dict() == {"CAR-1": "pl", "CAR-2": "de"}
    assert cars["channel"].tolist()[0] == "iothub"
