"""The scoring endpoint's published OpenAPI (Swagger 2.0) document: what `GET /swagger.json` serves.

azmlinfsrv would otherwise serve its generic template, with schemas inferred from one example (which
declared `error` an object and marked nothing required). This document states the request and every
answer the endpoint gives: 200 with the contract's predictions (docs/contracts.md "Scoring endpoint", fixed);
400, 408, 413 and 415 with our `{"error": "..."}` (scoring/score.py); 431 and 500 with azmlinfsrv's
own `{"message": "..."}` (an over-long request-id header; an unexpected failure or the scoring timeout).
Fields may be added to the contract, so objects do not forbid additional properties.

The request schema is the contract's shape. The endpoint is more lenient than it: an item that does
not fit (a missing field, a wrong type, an empty history, an implausible value) is still answered with
200 and its own `error`, and an integer Battery_ID is scored as its string (Swagger 2.0 has no
"string or integer"). tests/test_endpoint_fuzz.py runs Schemathesis against this document on a real
azmlinfsrv; tests/test_score_script.py checks what the server publishes is this.
"""

from __future__ import annotations

from typing import Any

from shared.core.alerts import REASONS
from shared.core.risk import DAYS_TO_RATED_LIFE, HORIZON_DAYS, INTERVAL_LEVELS, MAX_DAYS_TO_RATED_LIFE, PROBABILITY
from shared.core.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_ID,
    DAILY_CYCLES,
    DATE,
    LIFETIME_CYCLES,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
)
from shared.endpoint.server import (
    EXAMPLE_ITEM,
    EXAMPLE_RESPONSE,
    HISTORY,
    MAX_BATTERIES_PER_REQUEST,
    MAX_BODY_BYTES,
    MAX_HISTORY_ROWS_PER_REQUEST,
)

# The file azmlinfsrv serves GET /swagger.json from when its app root holds it (scoring/score.py writes it).
SWAGGER_FILE = "swagger2.json"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "x-nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{name}"}


def _object(properties: dict[str, Any], description: str, required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "description": description, "required": required or list(properties),
            "properties": properties}  # fmt: skip


_MEASURE = {"type": "number"}
_COUNT = {"type": "integer"}

DEFINITIONS: dict[str, Any] = {
    "HistoryRow": _object(
        {
            DATE: {"type": "string", "format": "date", "description": "the day, YYYY-MM-DD"},
            AGE_DAYS: _nullable(_COUNT),
            TRIPS: _nullable(_COUNT),
            TRIP_MINUTES: _nullable(_MEASURE),
            DAILY_CYCLES: _nullable(_MEASURE),
            LIFETIME_CYCLES: _nullable(_MEASURE),
        },
        "One day of a battery's history. A null measure is a gap that preparation fills.",
    ),
    "BatteryItem": _object(
        {
            BATTERY_ID: {"type": "string", "minLength": 1, "description": "an integer is accepted too"},
            CAR_ID: {"type": "string", "minLength": 1},
            RATED_CYCLES: {"type": "number"},
            HISTORY: {"type": "array", "minItems": 1, "items": _ref("HistoryRow"), "description": "oldest to newest"},
        },
        "One battery to score. An item that does not fit gets its own error in the 200 answer.",
    ),
    "ServiceInput": {
        **_object(
            {"data": {"type": "array", "maxItems": MAX_BATTERIES_PER_REQUEST, "items": _ref("BatteryItem")}},
            f"At most {MAX_BATTERIES_PER_REQUEST:,} batteries, {MAX_HISTORY_ROWS_PER_REQUEST:,} history rows and "
            f"{MAX_BODY_BYTES:,} bytes per request (413 beyond). No object may repeat a key (400).",
        ),
        "example": {"data": [EXAMPLE_ITEM]},
    },
    "Prediction": _object(
        {
            BATTERY_ID: _nullable({"type": "string"}),
            CAR_ID: _nullable({"type": "string"}),
            PROBABILITY: _nullable({"type": "number", "minimum": 0, "maximum": 1}),
            DAYS_TO_RATED_LIFE: _nullable({"type": "number", "minimum": 0, "maximum": MAX_DAYS_TO_RATED_LIFE}),
            "forecast_daily_cycles": _nullable(
                {"type": "array", "minItems": HORIZON_DAYS, "maxItems": HORIZON_DAYS, "items": {"type": "number"}}
            ),
            "error": _nullable({"type": "string", "description": "why this item was not scored; null if it was"}),
            REASONS: _nullable({"type": "array", "items": {"type": "string"}}),
            **{
                column: _nullable(
                    {
                        "type": "number",
                        "minimum": 0,
                        "maximum": MAX_DAYS_TO_RATED_LIFE,
                        "description": f"added (issue 17): the {level:.0%} quantile of the days to rated life",
                    }
                )
                for column, level in INTERVAL_LEVELS.items()
            },
        },
        "One battery's answer, in the request's order: the numbers and a null error, or an error and null numbers.",
    ),
    "ServiceOutput": {
        **_object(
            {"model_version": {"type": "string"}, "predictions": {"type": "array", "items": _ref("Prediction")}},
            "The predictions, one per item of the request.",
        ),
        "example": EXAMPLE_RESPONSE,
    },
    "RequestError": _object({"error": {"type": "string"}}, "Why the request was refused (scoring/score.py)."),
    "ErrorResponse": _object({"message": {"type": "string"}}, "azmlinfsrv's own error answer."),
}

_REFUSED = {
    "400": "The body is not the contract's shape: not JSON, not UTF-8, nested too deeply, cut short of its "
    "Content-Length, not an object with a 'data' array, or an object in it repeats a key.",
    "408": "The body stalled (no byte within the idle timeout) or did not arrive within the scoring timeout.",
    "413": "Over the limits: the body's bytes (by Content-Length before reading, or as read), the batteries "
    "or the history rows.",
    "415": "The Content-Type is not application/json.",
}
_SERVER = {
    "431": "An x-request-id, x-ms-request-id or x-ms-client-request-id header over 100 characters (azmlinfsrv).",
    "500": "An unexpected failure, or scoring took longer than the scoring timeout (azmlinfsrv).",
}


def swagger_document() -> dict[str, Any]:
    """The Swagger 2.0 document of the endpoint, as served at GET /swagger.json."""
    score_responses = {"200": {"description": "Scored.", "schema": _ref("ServiceOutput")}}
    for statuses, schema in ((_REFUSED, "RequestError"), (_SERVER, "ErrorResponse")):
        score_responses |= {status: {"description": text, "schema": _ref(schema)} for status, text in statuses.items()}
    return {
        "swagger": "2.0",
        "info": {
            "title": "Battery failure risk",
            "version": "1.0",
            "description": "Forecasts each battery's daily cycles for 30 days and the probability that it "
            "reaches its rated life within them (docs/contracts.md, Scoring endpoint).",
        },
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {
            "Bearer": {
                "type": "apiKey",
                "name": "Authorization",
                "in": "header",
                "description": "Bearer <key or Azure AD token>; the local endpoint takes none.",
            },
        },
        "paths": {
            "/": {
                "get": {
                    "operationId": "ServiceHealthCheck",
                    "produces": ["text/html"],
                    "responses": {
                        "200": {"description": "'Healthy' once the model is loaded.", "schema": {"type": "string"}}
                    },
                }
            },
            "/swagger.json": {
                "get": {
                    "operationId": "GetSwaggerSpec",
                    "responses": {"200": {"description": "This document.", "schema": {"type": "object"}}},
                }
            },
            "/score": {
                "post": {
                    "operationId": "RunMLService",
                    "security": [{"Bearer": []}],
                    "parameters": [{"name": "body", "in": "body", "required": True, "schema": _ref("ServiceInput")}],
                    "responses": score_responses,
                }
            },
        },
        "definitions": DEFINITIONS,
    }
