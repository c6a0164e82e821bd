"""The endpoint from the raw body (shared.endpoint.server.score_body), as scoring/score.py calls it.

A body of exactly the contract's shape is decoded straight into typed structs (the fast path); any
other JSON body goes item by item through `score_request`. Both must answer the same: these tests
compare them on good, gappy and malformed bodies, and check which path a body takes.
"""

from __future__ import annotations

import copy
import json

import pytest
from _models import END, endpoint_items, trained_model

import shared.endpoint.server as endpoint
from shared.endpoint.server import RequestError, RequestTooLarge, score_body, score_request

AS_OF = END


@pytest.fixture(scope="module")
def model():
    return trained_model()


@pytest.fixture(scope="module")
def items() -> list[dict]:
    """6 batteries' histories up to AS_OF, as the Function App sends them."""
    return endpoint_items(6)


def body_of(items: list) -> bytes:
    return json.dumps({"data": items}).encode()


def with_gaps(items: list[dict]) -> list[dict]:
    gappy = copy.deepcopy(items)
    gappy[0]["history"][-2].update(Daily_Cycles_Used=None, Daily_Trip_Duration=None)
    gappy[1]["history"][3].update(Number_Of_Trips=None)
    gappy[2]["Battery_ID"] = 4242  # an integer id is scored as the string "4242"
    gappy[3]["Battery_Rated_Cycles"] = 200.0
    return gappy


@pytest.mark.parametrize("change", [lambda items: items, with_gaps], ids=["as sent", "with gaps and integer id"])
def test_the_functions_apps_requests_take_the_fast_path_and_answer_as_item_by_item(model, items, change) -> None:
    data = change(items)
    expected = score_request(model, copy.deepcopy(data))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(endpoint, "score_request", lambda model, data: pytest.fail("left the fast path"))
        answer = score_body(model, body_of(data))

    assert answer == expected
    assert all(p["error"] is None for p in answer["predictions"]), answer["predictions"]


def rows_at_noon(item: dict) -> None:
    for row in item["history"]:
        row["Date"] += "T12:00:00"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda item: item.pop("Car_ID"), "Car_ID is missing"),
        (lambda item: item["history"][4].update(Number_Of_Trips="5"), "history[4]: Number_Of_Trips must be a number"),
        (lambda item: item["history"][4].update(Number_Of_Trips=True), "history[4]: Number_Of_Trips must be a number"),
        (lambda item: item["history"][5].update(Date="2016-02-30"), "history[5]: Date: not a date"),
        (lambda item: item["history"][8].update(Lifetime_Cycles_Used=10**400), "history[8]: Lifetime_Cycles_Used"),
        (lambda item: item.update(history=[]), "history must be a non-empty array of daily records"),
        (rows_at_noon, None),  # not the contract's YYYY-MM-DD, still a date: scored, on the slower path
    ],
)  # fmt: skip
def test_a_body_off_the_contract_is_answered_item_by_item(model, items, change, error) -> None:
    data = copy.deepcopy(items[:3])
    change(data[1])

    answer = score_body(model, body_of(data))

    assert answer == score_request(model, copy.deepcopy(data))
    bad, good = answer["predictions"][1], [answer["predictions"][0], answer["predictions"][2]]
    assert all(p["error"] is None for p in good)
    assert (bad["error"] is None) if error is None else (error in bad["error"])


def test_a_number_beyond_float_range_fails_its_item_not_the_request(model, items) -> None:
    data = copy.deepcopy(items[:2])
    data[0]["history"][0]["Daily_Cycles_Used"] = 123.25  # written as 1e400 below: json.dumps cannot
    body = body_of(data).replace(b"123.25", b"1e400")

    first, second = score_body(model, body)["predictions"]

    assert first["error"].startswith("history[0]: Daily_Cycles_Used: not a number")
    assert second["error"] is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"data": [', "POST body could not be decoded as JSON"),
        (b'{"data": [{"Battery_ID": true}], "more": [', "POST body could not be decoded as JSON"),
        (b"", "POST body is empty. Expecting a JSON dictionary."),
        (b"[1, 2]", "POST body should be a JSON dictionary."),
        (b'{"batteries": []}', "A value is not provided for the 'data' parameter."),
        (b'{"data": "17"}', "'data' must be a JSON array of battery items, got a string"),
    ],
)
def test_a_body_that_is_not_the_contract_shape_is_a_request_error(model, body, message) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        score_body(model, body)
    assert caught.value.status == 400


def test_oversize_bodies_are_refused_on_both_paths(model, items, monkeypatch) -> None:
    with pytest.raises(RequestTooLarge, match="1,001 batteries in one request"):
        score_body(model, body_of([{}] * 1001))
    monkeypatch.setattr(endpoint, "MAX_HISTORY_ROWS_PER_REQUEST", 100)
    with pytest.raises(RequestTooLarge, match="history rows in one request; the limit is 100"):
        score_body(model, body_of(items[:2]))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"data": [{"Battery_ID": "\xff"}]}', r"POST body is not valid UTF-8: invalid start byte \(byte 0xff\)"),
        (b'{"data": [' + b"[" * 5_000 + b"]" * 5_000 + b"]}", "POST body nests arrays or objects too deeply"),
        (b'{"data": ' + b'{"a": ' * 5_000, "POST body nests arrays or objects too deeply"),
        (b'{"data": [], "data": []}', "POST body repeats the key 'data' in one object"),
    ],
)
def test_a_body_that_cannot_be_read_as_json_is_a_request_error_not_a_crash(model, body, message) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        score_body(model, body)
    assert caught.value.status == 400


def repeat_first(text: str, key: str, value: str) -> str:
    return text.replace(f'"{key}": ', f'"{key}": {value}, "{key}": ', 1)


@pytest.mark.parametrize(
    ("key", "value"),
    [("Battery_ID", '"other"'), ("Daily_Cycles_Used", "9.5"), ("history", "[]"), ("Date", '"2016-02-30"')],
)
@pytest.mark.parametrize("path", ["contract", "item by item"])
def test_a_repeated_key_is_refused_naming_it_on_both_paths(model, items, key, value, path) -> None:
    data = copy.deepcopy(items[:2])
    if path == "item by item":
        data[1]["Battery_ID"] = True  # off the contract: the body takes the slower path
    with pytest.raises(RequestError, match=f"POST body repeats the key '{key}' in one object"):
        score_body(model, repeat_first(body_of(data).decode(), key, value).encode())


def test_colons_inside_strings_and_extra_fields_are_not_mistaken_for_repeated_keys(model, items) -> None:
    data = copy.deepcopy(items[:2])
    data[0]["Car_ID"] = 'CAR:17 "quoted": yes'
    data[1]["note"] = {"a": 1, "b": {"a": 2}}  # an added field; the same key in two objects is fine

    first, second = score_body(model, body_of(data))["predictions"]

    assert (first["error"], first["Car_ID"], second["error"]) == (None, 'CAR:17 "quoted": yes', None)


@pytest.mark.parametrize("day", ["0355-12-12", "9342-02-05", "1677-01-01", "2262-06-01"])
@pytest.mark.parametrize("suffix", ["", "T12:00:00"], ids=["contract", "item by item"])
def test_a_date_preparation_cannot_hold_fails_its_item_not_the_request(model, items, day, suffix) -> None:
    data = copy.deepcopy(items[:2])
    data[0]["history"][3]["Date"] = day + suffix

    first, second = score_body(model, body_of(data))["predictions"]

    assert first["error"].startswith("history[3]: Date: ")
    assert "is outside 1678-01-01 to 2261-12-31" in first["error"]
    assert second["error"] is None


def test_a_history_spanning_decades_fails_its_item_and_too_many_days_in_all_is_413(model, items) -> None:
    data = copy.deepcopy(items[:2])
    data[0]["history"][0]["Date"] = "1990-01-01"  # a gap preparation would fill day by day
    first, second = score_body(model, body_of(data))["predictions"]
    assert first["error"].startswith("history spans ") and "at most 7,320 are scored" in first["error"]
    assert second["error"] is None

    sparse = [{**items[0], "Battery_ID": str(n), "history": [dict(items[0]["history"][0], Date=day)
              for day in ("2000-01-01", "2019-12-31")]} for n in range(60)]  # fmt: skip
    with pytest.raises(RequestTooLarge, match="the histories span 438,300 days in all; the limit is 400,000"):
        score_body(model, body_of(sparse))


def test_error_messages_show_a_bounded_excerpt_of_a_huge_value(model, items) -> None:
    data = copy.deepcopy(items[:1])
    data[0]["Battery_Rated_Cycles"] = "9" * 1_000_000
    (prediction,) = score_body(model, body_of(data))["predictions"]
    assert prediction["error"].startswith("Battery_Rated_Cycles must be a number, got '9999")
    assert len(prediction["error"]) < 200
