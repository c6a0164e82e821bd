"""Typing and validating raw telemetry: the same words for the CSV, event and endpoint paths."""

import pandas as pd
import pytest

from shared.core.telemetry import (
    COLUMNS,
    MAX_ID_LENGTH,
    InputError,
    coerce_telemetry,
    id_problem,
    implausible_values,
    read_cars_csv,
    read_telemetry_csv,
)

HEADER = ",".join(COLUMNS)
GOOD = "2017-03-19,17,CAR-00017,1538,5,61.2,0.15,196.4,200"


def write(tmp_path, text, name="telemetry.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_daily_and_twelve_hour_rows_into_the_schema_types(tmp_path):
    path = write(tmp_path, f"{HEADER}\n{GOOD}\n2014-01-01 12:00:00,17,CAR-00017,2,3,30.5,0.07,1.2,200\n")
    frame = read_telemetry_csv(path)
    assert list(frame.columns) == COLUMNS
    assert frame["Date"].tolist() == [pd.Timestamp("2017-03-19"), pd.Timestamp("2014-01-01 12:00")]
    assert frame["Battery_ID"].tolist() == ["17", "17"]
    assert frame["Daily_Cycles_Used"].dtype == "float64"


def test_blank_measure_is_kept_as_missing_for_preparation_to_repair(tmp_path):
    path = write(tmp_path, f"{HEADER}\n2017-03-19,17,CAR-00017,1538,5,,0.15,196.4,200\n")
    frame = read_telemetry_csv(path)
    assert frame["Daily_Trip_Duration"].isna().tolist() == [True]


def test_missing_column_names_the_file_and_the_column(tmp_path):
    header = HEADER.replace(",Lifetime_Cycles_Used", "")
    row = GOOD.replace(",196.4", "")
    path = write(tmp_path, f"{header}\n{row}\n")
    with pytest.raises(InputError, match=r"telemetry\.csv: missing column\(s\): Lifetime_Cycles_Used"):
        read_telemetry_csv(path)


def test_unparsable_value_names_column_line_and_value(tmp_path):
    bad = GOOD.replace(",5,", ",five,")
    path = write(tmp_path, f"{HEADER}\n{GOOD}\n{bad}\n{bad}\n")
    with pytest.raises(InputError) as error:
        read_telemetry_csv(path)
    message = str(error.value)
    assert "telemetry.csv" in message
    assert "column Number_Of_Trips: not a number on line 3 ('five'), line 4 ('five')" in message


def test_bad_date_and_empty_id_are_problems(tmp_path):
    path = write(tmp_path, f"{HEADER}\n{GOOD.replace('2017-03-19', '2017-13-40')}\n")
    with pytest.raises(InputError, match="column Date: not a date"):
        read_telemetry_csv(path)
    path = write(tmp_path, f"{HEADER}\n{GOOD.replace(',17,', ',,')}\n")
    with pytest.raises(InputError, match="column Battery_ID: empty id on line 2"):
        read_telemetry_csv(path)


@pytest.mark.parametrize("text, expected", [("", "the file is empty"), (HEADER + "\n", "header but no rows")])
def test_empty_files_are_refused(tmp_path, text, expected):
    with pytest.raises(InputError, match=expected):
        read_telemetry_csv(write(tmp_path, text))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: no such file"):
        read_telemetry_csv(tmp_path / "nope.csv")


def test_coerce_keeps_good_rows_and_reports_each_bad_one():
    raw = pd.DataFrame([dict(zip(COLUMNS, GOOD.split(","), strict=True))] * 3, dtype=object)
    raw.loc[1, "Daily_Cycles_Used"] = "x"
    raw.loc[2, "Car_ID"] = " "
    typed, problems = coerce_telemetry(raw)
    assert len(typed) == 1
    assert {(p.row, p.column, p.reason) for p in problems} == {
        (1, "Daily_Cycles_Used", "not a number"),
        (2, "Car_ID", "empty id"),
    }


def test_implausible_values_name_the_first_bad_column():
    raw = pd.DataFrame([dict(zip(COLUMNS, GOOD.split(","), strict=True))] * 3, dtype=object)
    typed, _ = coerce_telemetry(raw)
    typed.loc[1, "Daily_Cycles_Used"] = -0.5
    typed.loc[2, "Daily_Trip_Duration"] = 9999
    reasons = implausible_values(typed).tolist()
    assert reasons[0] is None
    assert reasons[1].startswith("Daily_Cycles_Used=-0.5 outside")
    assert reasons[2].startswith("Daily_Trip_Duration=9999 outside")


def test_cars_csv_rejects_duplicates_and_bad_years(tmp_path):
    header = "Car_ID,Make,Model_Year,Engine_Type,Region,Purchase_Date\n"
    good = "CAR-1,Contoso,2013,BEV,Nordic,2013-05-01\n"
    assert read_cars_csv(write(tmp_path, header + good, "cars.csv"))["Model_Year"].tolist() == [2013]
    with pytest.raises(InputError, match="duplicate car on line"):
        read_cars_csv(write(tmp_path, header + good + good, "cars.csv"))
    with pytest.raises(InputError, match="Model_Year: not a number on line"):
        read_cars_csv(write(tmp_path, header + good.replace("2013,", "soon,"), "cars.csv"))


@pytest.mark.parametrize(
    "value, problem",
    [
        ("", "empty id"),
        (".", "'.' is not allowed as an id (a URL path resolves it away)"),
        ("..", "'..' is not allowed as an id (a URL path resolves it away)"),
        ("CAR/17", "contains '/', which storage keys and URL paths cannot hold"),
        ("CAR\\17", "contains '\\\\', which storage keys and URL paths cannot hold"),
        ("CAR#17", "contains '#', which storage keys and URL paths cannot hold"),
        ("CAR?17", "contains '?', which storage keys and URL paths cannot hold"),
        ("CAR\x0017", "contains the control character U+0000"),
        ("CAR\n17", "contains the control character U+000A"),
        ("CAR\x7f", "contains the control character U+007F"),
        ("CAR\x9f", "contains the control character U+009F"),
        ("CAR-\udc00", "contains a lone surrogate U+DC00, which is not text (UTF-8 cannot encode it)"),
        ("7" * (MAX_ID_LENGTH + 1), "longer than 256 characters (257)"),
        (17, "not a string (int)"),
    ],
)
def test_id_problem_names_what_no_store_or_url_can_hold(value, problem):
    assert id_problem(value) == problem


@pytest.mark.parametrize("value", ["CAR-00017", "17", "a.b", "...", "CAR 17", "%2F", "\xa0x", "é" * 256, "😀" * 256])
def test_id_problem_accepts_every_id_the_stores_and_the_gateway_can_hold(value):
    assert id_problem(value) is None


def test_dates_outside_what_a_datetime64_ns_holds_are_row_problems_not_errors():
    raw = pd.DataFrame([GOOD.split(",")] * 5, columns=COLUMNS)
    raw["Date"] = ["9999-12-31", "1677-09-22", "0001-01-01", "2262-04-11", "3000-01-01"]

    typed, problems = coerce_telemetry(raw)

    assert typed["Date"].tolist() == [pd.Timestamp("1677-09-22"), pd.Timestamp("2262-04-11")]
    assert [(p.row, p.reason) for p in problems] == [
        (row, "outside the dates this system holds (1677-09-22 to 2262-04-11)") for row in (0, 2, 4)
    ]
