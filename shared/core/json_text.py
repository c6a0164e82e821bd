"""Strict JSON for everything that arrives from outside: one decoder, one set of refusals.

Python's json module keeps the last of two equal keys without a word, takes NaN/Infinity, and raises
RecursionError (not ValueError) on deep nesting; each of those let bad input through or out as a crash.
Telemetry events, queued alerts, head-unit feedback and IoT Hub feedback all decode here.
"""

from __future__ import annotations

import json
from typing import Any

from shared.core.telemetry import InputError


class DuplicateKey(ValueError):
    """A JSON object gave one key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice (json keeps the last one without a word)."""
    value = dict(pairs)
    if len(value) < len(pairs):
        seen: set[str] = set()
        raise DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_object_without_duplicates)


def loads(body: bytes | str, what: str) -> Any:
    """The JSON value of `body`, or `InputError` saying why `what` (e.g. "queue message") is not JSON."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
        return STRICT_JSON.decode(text)
    except DuplicateKey as error:
        raise InputError(f"{what} is not JSON: duplicate key {error.key!r} in an object") from None
    except RecursionError:
        raise InputError(f"{what} is not JSON: nested deeper than the parser goes") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{what} is not JSON: {error}") from None
