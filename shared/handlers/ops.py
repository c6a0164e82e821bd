"""Ops: what operators and service staff ask the running app over HTTP — is it healthy, what did a car get.

The health report answers a probe, so every check is bounded: a short timeout and no SDK retries (the
Azure SDKs otherwise retry a dead endpoint for most of a minute), and one failing check never hides
the others. It reports what failed in words, never a connection string or key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from shared.adapters import alert_store, feedback_store
from shared.adapters.registry import ModelRegistry
from shared.bootstrap import Services
from shared.config.settings import configuration_problems
from shared.core.alerts import check_id

CHECK_TIMEOUT_S = 3.0


def health_report(services: Services, timeout_s: float = CHECK_TIMEOUT_S) -> dict[str, Any]:
    """{"healthy", "checked_at", "checks": {"blob", "table", "scoring_endpoint", "configuration": {"ok",
    "detail"}}, "champion_model": version or None}. Healthy when storage and the scoring endpoint both
    answer and the configuration lets every function do its job (`configuration_problems`: an unset
    HEAD_UNIT_SIGNING_KEY, say, leaves alerts queued, so the app is not healthy).

    The champion is information, not a condition: before the first night's training there is none, and
    the streaming path still works against whatever the endpoint serves.
    """
    bounded = {"connection_timeout": timeout_s, "read_timeout": timeout_s, "retry_total": 0}
    checks = {
        "blob": _check(lambda: services.blobs.get_service_properties(**bounded) and "reachable"),
        "table": _check(lambda: services.tables.get_service_properties(**bounded) and "reachable"),
        "scoring_endpoint": _check(lambda: _endpoint_alive(services.settings.scoring_uri, timeout_s)),
        "configuration": _configuration(services),
    }
    champion = None
    if checks["blob"]["ok"]:  # else the registry read would wait out the SDK's retries on a dead store
        registry = _check(lambda: ModelRegistry(services.blobs).champion_version())
        champion = registry["detail"] if registry["ok"] else None
    return {
        "healthy": all(check["ok"] for check in checks.values()),
        "checked_at": services.clock().isoformat(),
        "checks": checks,
        "champion_model": champion,
    }


def vehicle_alerts(services: Services, car_id: str) -> list[dict[str, Any]]:
    """A car's alerts, newest first (empty for a car that never had one): delivery state, the head unit's
    answers, the lifecycle with times (`alert_store.list_alerts`), and the outcome label of the alert's
    battery: `outcome` is replaced (telemetry showed another battery in the car since), booked (the owner
    booked a service for it), or alerted; `battery_outcome` the label's details (None: no feedback on it).

    Raises `InputError` naming the problem for an id no car can have (`check_id`), before any storage call.
    """
    table = alert_store.alerts_table(services.tables)
    alerts = alert_store.list_alerts(table, check_id(car_id, "car_id"))
    outcomes = feedback_store.car_outcomes(table, car_id) if alerts else {}
    for alert in alerts:
        label = outcomes.get(alert["battery_id"])
        alert["battery_outcome"] = label
        alert["outcome"] = ("replaced" if label and label["replaced_at"] else
                            "booked" if label and label["booked_at"] else "alerted")  # fmt: skip
    return alerts


def endpoint_root(scoring_uri: str) -> str:
    """The endpoint's root URL from its scoring URI: where azmlinfsrv and Azure ML answer liveness."""
    parts = urlsplit(scoring_uri)
    return urlunsplit((parts.scheme, parts.netloc, "/", "", ""))


def _endpoint_alive(scoring_uri: str, timeout_s: float) -> str:
    root = endpoint_root(scoring_uri)
    response = requests.get(root, timeout=timeout_s)
    response.raise_for_status()
    return f"GET {root} answered {response.status_code}"


def _configuration(services: Services) -> dict[str, Any]:
    problems = configuration_problems(services.settings)
    return {"ok": not problems, "detail": "; ".join(problems) or "every function can do its job"}


def _check(probe: Callable[[], Any]) -> dict[str, Any]:
    """Run one probe: its detail, or the failure's type and first line (probes hold no secrets to leak)."""
    try:
        return {"ok": True, "detail": probe()}
    except Exception as error:  # a probe reports any failure rather than failing the whole report
        first_line = (str(error).splitlines() or [""])[0][:200]
        return {"ok": False, "detail": f"{type(error).__name__}: {first_line}"}
