"""Feedback: what `POST /api/vehicles/{car_id}/alerts/{alert_id}/feedback` does with a head unit's answer.

The head unit signs its answer as the app signs alerts (shared/adapters/headunit.py): `X-Signature` over the
raw body, and the Standard Webhooks headers, whose timestamp must be within the tolerance of the app's
clock, so a captured request replayed later is refused; one replayed within the window is the same action
again, which changes nothing. Every answer is a status and a JSON body, never a 500:

- 401 bad or missing signature, or a timestamp outside the tolerance (the reason says which);
- 400 a malformed body or an impossible id, naming the field;
- 404 no such alert for this car (another car's alert included: nothing a head unit sends reaches it);
- 409 an alert no feedback applies to, with its state (rejected, suppressed, ...);
- 503 when the app cannot verify (no signing key) or storage does not answer: the head unit retries;
- 200 accepted, or unchanged when the same action was recorded before.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from azure.core.exceptions import AzureError

from shared.adapters import alert_store, feedback_store
from shared.adapters.headunit import (
    SIGNATURE_HEADER,
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
    WEBHOOK_TOLERANCE_S,
    verify,
    verify_webhook,
)
from shared.bootstrap import Services
from shared.core.alerts import check_id, iso_utc
from shared.core.feedback import parse_feedback
from shared.core.telemetry import InputError


def receive_feedback(
    services: Services, car_id: str, alert_id: str, headers: Mapping[str, str], body: bytes
) -> tuple[int, dict[str, Any]]:
    """Verify, validate and record one feedback request; the HTTP status and JSON body to answer with.

    `headers` is looked up case-insensitively (an `azure.functions.HttpRequest`'s are).
    """
    key = services.settings.head_unit_signing_key
    if not key:
        return 503, {"error": "HEAD_UNIT_SIGNING_KEY is not set: feedback cannot be verified"}
    if not verify(body, headers.get(SIGNATURE_HEADER), key):
        return 401, {"error": f"missing or bad {SIGNATURE_HEADER}"}
    now = services.clock()
    problem = verify_webhook(headers.get(WEBHOOK_ID_HEADER), headers.get(WEBHOOK_TIMESTAMP_HEADER),
                             headers.get(WEBHOOK_SIGNATURE_HEADER), body, key, now=now.timestamp(),
                             tolerance_s=WEBHOOK_TOLERANCE_S)  # fmt: skip
    if problem is not None:
        return 401, {"error": problem}
    try:
        check_id(car_id, "car_id")
        check_id(alert_id, "alert_id")
        feedback = parse_feedback(body)
        if feedback.at > now + timedelta(seconds=WEBHOOK_TOLERANCE_S):
            raise InputError(f"at is {iso_utc(feedback.at)}, in the future (now {iso_utc(now)})")
    except InputError as error:
        return 400, {"error": str(error)}
    try:
        table, labels = alert_store.alerts_table(services.tables), feedback_store.open_labels(services.tables)
        outcome = feedback_store.record_feedback(table, labels, car_id, alert_id, feedback, now)
    except feedback_store.AlertNotFound as error:
        return 404, {"error": str(error)}
    except feedback_store.AlertClosed as error:
        return 409, {"error": str(error), "state": error.state}
    except feedback_store.FeedbackContention as error:
        return 503, {"error": str(error)}
    except AzureError as error:
        return 503, {"error": f"storage did not answer ({type(error).__name__}); try again"}
    return 200, {"alert_id": outcome.alert_id, "car_id": outcome.car_id, "action": outcome.action,
                 "result": outcome.result, "state": outcome.state}  # fmt: skip
