"""The scoring client against a real HTTP server on 127.0.0.1 that fails on purpose.

The server plays a script of answers (429 with Retry-After, 503, a response that never comes in time,
then success) and records every request, so the tests see exactly what went over the wire. Waits between
retries go to a recording `sleep`, so nothing here actually waits for a backoff.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.adapters.scoring_client import (
    AZURE_ML_SCOPE,
    ERROR_EXCERPT_CHARS,
    RetryPolicy,
    ScoringClient,
    ScoringRejected,
    ScoringUnavailable,
    excerpt,
    is_retryable,
)
from shared.config.settings import load_settings


@dataclass
class Answer:
    """One scripted answer: a status, headers, and a JSON body; `hang` = never answer in time."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: object = None
    hang: bool = False


class ScriptedServer:
    """http.server on a free loopback port answering requests from a script (then echoing successes)."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.requests: list[dict] = []
        self.release = threading.Event()  # lets a hanging handler finish at teardown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                answer = server.script.pop(0) if server.script else Answer(body=server.echo(body))
                if answer.hang:
                    server.release.wait(timeout=10)
                    return
                payload = json.dumps(answer.body if answer.body is not None else {}).encode()
                self.send_response(answer.status)
                for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @staticmethod
    def echo(body: dict) -> dict:
        """A contract-shaped success: one prediction per item, probability 0.5."""
        predictions = [
            {"Battery_ID": item["Battery_ID"], "Car_ID": item["Car_ID"], "failure_probability_30d": 0.5,
             "days_to_rated_life": 40.0, "forecast_daily_cycles": [0.1] * 30, "error": None}
            for item in body["data"]
        ]  # fmt: skip
        return {"model_version": "v-test", "predictions": predictions}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    scripted.thread.start()
    yield scripted
    scripted.release.set()
    scripted.httpd.shutdown()
    scripted.httpd.server_close()


class RecordingSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def items(n: int) -> list[dict]:
    return [
        {"Battery_ID": str(i), "Car_ID": f"CAR-{i:05d}", "Battery_Rated_Cycles": 200,
         "history": [{"Date": "2017-03-19", "Battery_Age_Days": 10, "Number_Of_Trips": 5,
                      "Daily_Trip_Duration": 61.2, "Daily_Cycles_Used": 0.15, "Lifetime_Cycles_Used": 1.5}]}
        for i in range(n)
    ]  # fmt: skip


def client(server: ScriptedServer, sleep: RecordingSleep | None = None, **options) -> ScoringClient:
    options.setdefault("retry", RetryPolicy(max_attempts=4, backoff_base_s=0.5, max_wait_s=5.0))
    return ScoringClient(server.url, sleep=sleep or RecordingSleep(), jitter=lambda: 1.0, **options)


def test_scores_many_batteries_in_chunks_and_keeps_their_order(server: ScriptedServer) -> None:
    predictions = client(server, chunk_size=3).score(items(7))

    assert [len(r["body"]["data"]) for r in server.requests] == [3, 3, 1]
    assert [p["Battery_ID"] for p in predictions] == [str(i) for i in range(7)]
    assert {p["model_version"] for p in predictions} == {"v-test"}
    assert server.requests[0]["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in server.requests[0]["headers"]


def test_no_items_sends_no_request(server: ScriptedServer) -> None:
    assert client(server).score([]) == []
    assert server.requests == []


def test_sends_the_key_as_bearer_and_never_logs_it(server: ScriptedServer, caplog) -> None:
    secret = "s3cr3t-endpoint-key"
    server.script = [Answer(503, body={"message": "busy"})]
    with caplog.at_level(logging.DEBUG):
        scorer = client(server, key=secret)
        scorer.score(items(1))

    assert [r["headers"]["Authorization"] for r in server.requests] == [f"Bearer {secret}"] * 2
    assert "retrying" in caplog.text
    assert secret not in caplog.text
    assert secret not in repr(scorer)


def test_an_endpoint_that_echoes_the_request_headers_does_not_put_the_key_in_the_log(server: ScriptedServer,
                                                                                      caplog) -> None:  # fmt: skip
    secret = "k3y-4bc.def/ghi+jkl="
    echo = {"message": f"bad gateway; you sent Authorization: Bearer {secret}, X-Api-Key: {secret}\n"
                       "ERROR forged log line\r\x1b[31m" + "padding " * 500}  # fmt: skip
    headers_echoed = {"error": {"Authorization": f"Bearer {secret}", "X-Functions-Key": secret}}
    server.script = [Answer(503, body=echo), Answer(400, body=headers_echoed)]
    with caplog.at_level(logging.DEBUG), pytest.raises(ScoringRejected) as caught:
        client(server, key=secret).score(items(1))

    logged = caplog.text + str(caught.value) + caught.value.reason
    assert secret not in logged and "Bearer [redacted]" in caplog.text
    assert "forged log line" in caplog.text and "\nERROR forged" not in caplog.text and "\x1b" not in caplog.text
    assert max(len(record.getMessage()) for record in caplog.records) < 400  # the 4 KB page is an excerpt
    assert len(caught.value.reason) <= ERROR_EXCERPT_CHARS


def test_an_echoed_azure_ad_token_is_redacted_too(server: ScriptedServer) -> None:
    class Credential:
        def get_token(self, *scopes, **kwargs):
            return type("Token", (), {"token": "aad-t0ken", "expires_on": time.time() + 3600})()

    server.script = [Answer(400, body={"error": "token aad-t0ken is not for this audience"})]
    with pytest.raises(ScoringRejected) as caught:
        client(server, credential=Credential()).score(items(1))
    assert caught.value.reason == "token [redacted] is not for this audience"


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("denied for Bearer eyJhbGciOi.J9.eyJzdWIi-_x", [], "denied for Bearer [redacted]"),
        ("header authorization: basic dXNlcjpwYXNz==; retry", [], "header authorization: basic [redacted]; retry"),
        ("key abc123 in ?code=abc123", ["abc123"], "key [redacted] in ?code=[redacted]"),
        ("line one\nline two\t\x00end\u2028", [], "line one line two end"),
        ("x" * 500, [], "x" * (ERROR_EXCERPT_CHARS - 1) + "…"),
    ],
)
def test_the_excerpt_of_an_endpoints_words_is_redacted_printable_and_bounded(text, secrets, expected) -> None:
    assert excerpt(text, secrets) == expected


def test_sends_an_azure_ad_token_for_the_azure_ml_scope_and_reuses_it(server: ScriptedServer) -> None:
    class Credential:
        def __init__(self) -> None:
            self.scopes: list[tuple] = []

        def get_token(self, *scopes, **kwargs):
            self.scopes.append(scopes)
            return type("AccessToken", (), {"token": "aad-token", "expires_on": time.time() + 3600})()

    credential = Credential()
    client(server, credential=credential, chunk_size=1).score(items(2))

    assert credential.scopes == [(AZURE_ML_SCOPE,)]
    assert [r["headers"]["Authorization"] for r in server.requests] == ["Bearer aad-token"] * 2


def test_429_waits_at_least_retry_after_then_succeeds(server: ScriptedServer) -> None:
    server.script = [Answer(429, {"Retry-After": "3"}, {"message": "throttled"})]
    sleep = RecordingSleep()
    predictions = client(server, sleep).score(items(2))

    assert len(server.requests) == 2
    assert sleep.waits == [3.0]  # backoff ceiling after attempt 1 is 0.5 s: Retry-After wins
    assert len(predictions) == 2


def test_503s_back_off_exponentially_within_the_bound(server: ScriptedServer) -> None:
    server.script = [Answer(503, body={"message": "busy"})] * 3
    sleep = RecordingSleep()
    retry = RetryPolicy(max_attempts=5, backoff_base_s=1.0, max_wait_s=3.0)
    client(server, sleep, retry=retry).score(items(1))

    assert len(server.requests) == 4
    assert sleep.waits == [1.0, 2.0, 3.0]  # 1, 2, 4 capped at 3 (jitter draw pinned at its maximum)


def test_jitter_spreads_waits_below_the_exponential_ceiling() -> None:
    policy = RetryPolicy(backoff_base_s=1.0, max_wait_s=60.0)
    assert policy.wait_s(3, None, draw=0.25) == 1.0
    assert policy.wait_s(3, None, draw=0.0) == 0.0
    assert policy.wait_s(1, retry_after_s=120.0, draw=0.0) == 60.0  # even Retry-After is bounded


def test_a_response_that_does_not_come_in_time_is_retried(server: ScriptedServer) -> None:
    server.script = [Answer(hang=True)]
    predictions = client(server, read_timeout_s=0.3).score(items(1))

    assert len(server.requests) == 2
    assert predictions[0]["failure_probability_30d"] == 0.5


def test_gives_up_with_the_last_status_and_reason(server: ScriptedServer) -> None:
    server.script = [Answer(503, body={"message": "model loading"})] * 10
    sleep = RecordingSleep()
    with pytest.raises(ScoringUnavailable, match=r"after 4 attempts: HTTP 503: model loading") as caught:
        client(server, sleep).score(items(1))

    assert (caught.value.status, caught.value.reason, caught.value.attempts) == (503, "model loading", 4)
    assert len(server.requests) == 4
    assert len(sleep.waits) == 3  # no pointless wait after the last attempt


def test_gives_up_on_timeouts_with_a_clear_reason(server: ScriptedServer) -> None:
    server.script = [Answer(hang=True)] * 2
    retry = RetryPolicy(max_attempts=2)
    with pytest.raises(ScoringUnavailable, match=r"timed out") as caught:
        client(server, retry=retry, read_timeout_s=0.2).score(items(1))
    assert caught.value.status is None


def test_connection_refused_is_retried_then_reported() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}/score"  # bound, then closed: nothing listens
    sleep = RecordingSleep()
    scorer = ScoringClient(url, retry=RetryPolicy(max_attempts=3), sleep=sleep, jitter=lambda: 0.5)
    with pytest.raises(ScoringUnavailable, match="connection failed"):
        scorer.score(items(1))
    assert len(sleep.waits) == 2


def test_a_400_is_not_retried(server: ScriptedServer) -> None:
    server.script = [Answer(400, body={"error": "body must be a JSON object with a 'data' list"})]
    with pytest.raises(ScoringRejected, match="HTTP 400: body must be a JSON object") as caught:
        client(server).score(items(1))
    assert caught.value.attempts == 1
    assert len(server.requests) == 1


def test_a_response_with_the_wrong_number_of_predictions_is_refused(server: ScriptedServer) -> None:
    server.script = [Answer(200, body={"model_version": "v", "predictions": []})]
    with pytest.raises(ScoringRejected, match="0 predictions for 2 batteries"):
        client(server).score(items(2))


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(408, True), (429, True), (500, True), (504, True), (400, False), (401, False), (404, False), (413, False)],
)
def test_which_statuses_are_transient(status: int, retryable: bool) -> None:
    assert is_retryable(status) is retryable


def test_client_from_settings_uses_scoring_uri_and_key() -> None:
    settings = load_settings({"SCORING_URI": "http://127.0.0.1:5999/score", "SCORING_KEY": "k"})
    scorer = ScoringClient.from_settings(settings, chunk_size=10)
    assert (scorer.scoring_uri, scorer.chunk_size, scorer._headers()) == (
        "http://127.0.0.1:5999/score",
        10,
        {"Authorization": "Bearer k"},
    )
