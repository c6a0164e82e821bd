"""Shared fixtures: real local services (Azurite) started once per test session."""

from __future__ import annotations

import inspect

import pytest
from _fault_report import FaultOutcome, write_report

from shared.adapters.storage import AzuriteEndpoints
from shared.devtools.azurite import running_azurite

_FAULT_OUTCOMES: list[FaultOutcome] = []


@pytest.fixture(scope="session")
def azurite() -> AzuriteEndpoints:
    """A real Azurite (Blob, Queue, Table) on free loopback ports, in memory, for the whole session."""
    with running_azurite() as endpoints:
        yield endpoints


@pytest.fixture(scope="session")
def storage_connection(azurite: AzuriteEndpoints) -> str:
    """The connection string of the session's Azurite, as the Azure SDKs take it."""
    return azurite.connection_string


@pytest.fixture
def alert_table(storage_connection: str):
    """A fresh, empty alerts table on the session's Azurite, so tests never see each other's alerts."""
    import uuid

    from shared.adapters.alert_store import alerts_table
    from shared.adapters.storage import table_service

    service = table_service(storage_connection)
    table = alerts_table(service, name=f"alerts{uuid.uuid4().hex[:12]}")
    yield table
    service.delete_table(table.table_name)


@pytest.fixture
def make_alert():
    """A factory of real battery alerts (built by `alerts_from_scores`) for the store and delivery tests."""
    from datetime import UTC, datetime

    import pandas as pd

    from shared.core.alerts import alerts_from_scores

    def make(car_id: str = "CAR-00017", day: str = "2017-03-19", days_left: float = 12.5) -> dict:
        scores = pd.DataFrame({
            "Battery_ID": ["17"], "Car_ID": [car_id], "failure_probability_30d": [0.93],
            "days_to_rated_life": [days_left], "Lifetime_Cycles_Used": [190.0], "Battery_Rated_Cycles": [200],
            "As_Of": [day], "model_version": ["v7"],
        })  # fmt: skip
        created_at = datetime(2017, 3, 20, 3, tzinfo=UTC)
        [alert] = alerts_from_scores(scores, 0.8, created_at, "https://service.example.com/book")
        return alert

    return make


@pytest.fixture(scope="session")
def scoring_endpoint():
    """The real local scoring endpoint (scoring/score.py under azmlinfsrv) serving the small test model,
    started once per session (training the model and starting the server take seconds)."""
    from _models import model_dir

    from shared.devtools.inference_server import running_endpoint

    with running_endpoint(model_dir()) as endpoint:
        yield endpoint


@pytest.fixture
def harness(storage_connection, scoring_endpoint, monkeypatch, tmp_path):
    """function_app.app on empty Azurite storage, the real endpoint and a head-unit simulator
    (see tests/_services.py)."""
    from _services import app_harness

    with app_harness(storage_connection, scoring_endpoint.scoring_uri, monkeypatch, tmp_path) as running:
        yield running


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Every training a test runs (CLI `train`, the nightly retrain) is tracked in a throwaway SQLite
    store, never in the project's data/mlflow."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store.as_posix()}")
        yield store


@pytest.fixture
def fault_outcome():
    """Record one injected fault's outcome: `fault_outcome(path, fault, lost=..., duplicates=..., bound=...)`.

    The fault-injection tests assert lost == 0 and duplicates within the bound themselves; this only keeps
    the figures for data/fault-report.md (tests/_fault_report.py).
    """

    def record(path: str, fault: str, *, lost: int, duplicates: int, bound: str) -> None:
        _FAULT_OUTCOMES.append(FaultOutcome(path, fault, lost, duplicates, bound))

    return record


def pytest_sessionfinish(session, exitstatus):
    if _FAULT_OUTCOMES:
        write_report(_FAULT_OUTCOMES)


# Each test is in one group, so each can be run alone (`make test-unit`, `test-integration`, `test-e2e`,
# `test-browser`): browser = headless Chromium on the dashboard;
# end to end = the main job; integration = a real local service (Azurite, azmlinfsrv, the local host, a
# head-unit simulator, a subprocess), through a fixture or in the module's own code; unit = the rest,
# which starts nothing.
END_TO_END_MODULES = {"test_main_job", "test_demo_check"}
BROWSER_MODULES = {"test_dashboard_browser"}  # headless Chromium: `make test-browser`
SERVICE_FIXTURES = {"azurite", "storage_connection", "scoring_endpoint", "harness", "alert_table"}
SERVICES_IN_CODE = ("running_azurite", "running_endpoint", "FunctionsHost", "HeadUnitSimulator", "subprocess",
                    "run_main_job", "ThreadingHTTPServer")  # fmt: skip


def test_group(module, fixturenames: list[str]) -> str:
    """The group of a test: from its module and the fixtures it uses (transitively)."""
    if module.__name__ in END_TO_END_MODULES:
        return "e2e"
    if module.__name__ in BROWSER_MODULES:
        return "browser"
    if SERVICE_FIXTURES & set(fixturenames) or any(name in inspect.getsource(module) for name in SERVICES_IN_CODE):
        return "integration"
    return "unit"


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(test_group(item.module, item.fixturenames))
