"""The one strict JSON decoder for outside input: every refusal is an InputError naming what was read."""

from __future__ import annotations

import pytest

from shared.adapters.iothub import parse_feedback as parse_iothub_feedback
from shared.core import json_text
from shared.core.feedback import parse_feedback
from shared.core.telemetry import InputError

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"a": NaN}', "NaN is not valid JSON"),
        (DEEP, "nested deeper than the parser goes"),
        (b'{"a": "\xff"}', "can't decode byte 0xff"),
        (b"{", "Expecting property name"),
    ],
)
def test_each_refusal_names_what_was_read_and_why(body: bytes, why: str) -> None:
    with pytest.raises(InputError, match="queue message is not JSON") as refused:
        json_text.loads(body, "queue message")
    assert why in str(refused.value)


@pytest.mark.parametrize("parse", [parse_feedback, parse_iothub_feedback])
def test_every_reader_of_outside_json_refuses_deep_nesting_and_duplicate_keys_as_input_errors(parse) -> None:
    for body in (DEEP, b'{"action": "seen", "action": "dismissed"}'):
        with pytest.raises(InputError, match="not JSON"):
            parse(body)
