"""scoring/score.py under a real azmlinfsrv on a free port, as `python -m shared serve` runs it.

One server (one worker, the small trained model) serves the whole module; requests go over HTTP to
127.0.0.1 with `requests` and with the project's ScoringClient.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from _models import batch_rows, comparable_batteries, fleet, model_dir, request_items

from shared.adapters.scoring_client import ScoringClient, ScoringRejected
from shared.core.preparation import prepare_telemetry
from shared.devtools.azurite import free_port
from shared.devtools.inference_server import PROJECT_ROOT, LocalEndpoint, running_endpoint
from shared.endpoint.schema import swagger_document
from shared.models.loader import load_model
from shared.models.scoring import score_fleet

AS_OF = "2016-06-30"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[LocalEndpoint]:
    with running_endpoint(model_dir(), workers=1, timeout=180) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return request_items(comparable_batteries(fleet().telemetry, AS_OF))


def post(server: LocalEndpoint, body: bytes | str, content_type: str = "application/json") -> requests.Response:
    return requests.post(server.scoring_uri, data=body, headers={"Content-Type": content_type}, timeout=60)


def test_health_probe_answers_once_the_model_is_loaded(server: LocalEndpoint) -> None:
    response = requests.get(server.health_uri, timeout=10)
    assert (response.status_code, response.text) == (200, "Healthy")


def test_swagger_describes_the_request_and_the_response(server: LocalEndpoint) -> None:
    swagger = requests.get(server.swagger_uri, timeout=10).json()
    assert swagger == json.loads(json.dumps(swagger_document()))  # the endpoint's own document, not the template
    definitions = swagger["definitions"]
    request, response = definitions["ServiceInput"], definitions["ServiceOutput"]
    item = definitions[request["properties"]["data"]["items"]["$ref"].rpartition("/")[2]]
    assert {"Battery_ID", "Car_ID", "Battery_Rated_Cycles", "history"} <= set(item["properties"])
    assert set(item["required"]) == {"Battery_ID", "Car_ID", "Battery_Rated_Cycles", "history"}
    assert request["required"] == ["data"]
    assert request["example"]["data"][0]["history"][0]["Date"] == "2017-03-19"
    assert {"model_version", "predictions"} <= set(response["properties"])
    error = definitions["Prediction"]["properties"]["error"]
    assert (error["type"], error["x-nullable"]) == ("string", True)  # a string or null, not an object
    assert set(swagger["paths"]["/score"]["post"]["responses"]) == {"200", "400", "408", "413", "415", "431", "500"}


def test_contract_response_for_a_batch(server: LocalEndpoint, items: list[dict]) -> None:
    response = post(server, json.dumps({"data": items[:5]}))

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["model_version"] == load_model(model_dir()).version
    assert [p["Battery_ID"] for p in body["predictions"]] == [item["Battery_ID"] for item in items[:5]]
    for prediction in body["predictions"]:
        assert list(prediction) == ["Battery_ID", "Car_ID", "failure_probability_30d", "days_to_rated_life",
                                    "forecast_daily_cycles", "error", "reasons", "days_to_rated_life_p10",
                                    "days_to_rated_life_p50", "days_to_rated_life_p90"]  # fmt: skip
        assert prediction["error"] is None and len(prediction["forecast_daily_cycles"]) == 30
        assert 0 <= prediction["days_to_rated_life_p10"] <= prediction["days_to_rated_life_p50"]
        assert prediction["days_to_rated_life_p50"] <= prediction["days_to_rated_life_p90"]


def test_a_malformed_item_is_answered_in_its_place(server: LocalEndpoint, items: list[dict]) -> None:
    bad = {**items[0], "history": []}
    body = post(server, json.dumps({"data": [items[1], bad, items[2]]})).json()
    errors = [p["error"] for p in body["predictions"]]
    assert errors[0] is None and errors[2] is None
    assert errors[1] == "history must be a non-empty array of daily records, got an array"


def test_probabilities_over_http_equal_the_batch_paths(server: LocalEndpoint, items: list[dict]) -> None:
    telemetry = fleet().telemetry
    clean, _ = prepare_telemetry(telemetry[telemetry["Date"] <= AS_OF])
    batch, _ = score_fleet(load_model(model_dir()), clean, AS_OF, threshold=0.8)
    online = ScoringClient(server.scoring_uri, chunk_size=7).score(items)

    expected = batch_rows(batch, [item["Battery_ID"] for item in items])["failure_probability_30d"]
    assert len(online) == len(items) >= 10
    assert {p["Battery_ID"]: p["failure_probability_30d"] for p in online} == expected.to_dict()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"data": "17"}', "'data' must be a JSON array of battery items, got a string"),
        ('{"data": {"Battery_ID": "17"}}', "'data' must be a JSON array of battery items, got an object"),
        ('{"batteries": []}', "A value is not provided for the 'data' parameter."),
        ('{"data": [', "POST body could not be decoded as JSON"),
        ("[1, 2]", "POST body should be a JSON dictionary."),
    ],
)
def test_a_body_that_is_not_the_contract_shape_gets_a_json_400(server: LocalEndpoint, body: str, message: str) -> None:
    response = post(server, body)
    assert response.status_code == 400
    error = response.json()
    assert message in (error.get("error") or error.get("message"))


def test_run_takes_the_raw_body_and_answers_other_requests_as_the_server_would(server: LocalEndpoint) -> None:
    """run() is @rawhttp (it decodes the body itself, for speed): what the server used to refuse, it refuses."""
    not_json = post(server, '{"data": []}', content_type="text/plain")
    assert not_json.status_code == 415 and "application/json" in not_json.json()["error"]
    assert requests.get(server.scoring_uri, timeout=10).status_code == 405
    assert requests.options(server.scoring_uri, timeout=10).status_code == 200


def test_an_oversize_request_gets_a_413_the_client_does_not_retry(server: LocalEndpoint) -> None:
    response = post(server, json.dumps({"data": [{}] * 1001}))
    assert response.status_code == 413
    assert "1,001 batteries in one request; the limit is 1,000" in response.json()["error"]
    with pytest.raises(ScoringRejected, match="HTTP 413"):
        ScoringClient(server.scoring_uri, chunk_size=1001).score([{}] * 1001)


def test_a_model_directory_that_does_not_load_fails_the_start_with_the_servers_words(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text("{}")  # looks like a model directory, has no model in it
    with (
        pytest.raises(RuntimeError, match=r"(?s)azmlinfsrv did not become healthy.*server log"),
        running_endpoint(tmp_path, timeout=120),
    ):
        pass


def test_cli_serve_is_ready_when_it_says_so_and_stops_its_server_on_sigterm() -> None:
    port = free_port()
    command = [sys.executable, "-m", "shared", "serve", "--model-dir", str(model_dir()), "--port", str(port)]
    cli = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(180, cli.kill)  # a server that never gets ready must not hang the suite
    watchdog.start()
    try:
        ready = next((line for line in cli.stdout if "scoring endpoint ready" in line), None)
        assert ready is not None and f"SCORING_URI=http://127.0.0.1:{port}/score" in ready
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "Healthy"
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        cli.kill()
        cli.stdout.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the azmlinfsrv it started is gone too


def test_cli_serve_refuses_a_missing_model_directory(tmp_path: Path, capsys) -> None:
    from shared.cli import main

    assert main(["serve", "--model-dir", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
