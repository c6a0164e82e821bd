"""Fuzzing the scoring endpoint (scoring/score.py under a real azmlinfsrv): no 5xx, and it does what it publishes.

Two kinds. Schema-driven: Schemathesis generates requests from the endpoint's own `GET /swagger.json`,
valid ones and ones that break it, and checks every answer against that document (status declared,
body matching its schema, content type) and that none is a 5xx. Byte-level: bodies no schema
describes — invalid UTF-8, deep nesting, a valid body cut at every point, a huge Content-Length, a
half-sent or trickling body — each must get its 4xx with a JSON error, and the worker must answer the
next request. Each fault class records its figures for the README's table (`fault_outcome`): lost is
a request that got a 5xx or no answer; the endpoint delivers nothing, so duplicates are 0.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from _models import endpoint_items, model_dir
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth, negative_data_rejection, positive_data_acceptance

from shared.devtools.inference_server import LocalEndpoint, running_endpoint
from shared.endpoint.server import MAX_BODY_BYTES

pytestmark = [pytest.mark.faults, pytest.mark.slow]
PATH = "scoring endpoint"
JSON_BODY = {"Content-Type": "application/json"}
# Requests Schemathesis sends, valid and invalid: about 20 s (generating them is most of it).
SCHEMATHESIS_EXAMPLES = 100
# Checks left out, and why: a malformed item is answered 200 with its own error (the fixed contract), so
# "invalid data must get 4xx" does not hold for items; a schema-valid item may still be refused for its
# values (an implausible number) inside a 200, which the next check does not know; the local endpoint
# takes no key (Azure ML checks it in front of the server), so "a request without auth must get 401" cannot.
EXCLUDED_CHECKS = [negative_data_rejection, positive_data_acceptance, ignored_auth]


def post(endpoint: LocalEndpoint, body: bytes) -> requests.Response:
    return requests.post(endpoint.scoring_uri, data=body, headers=JSON_BODY, timeout=60)


def healthy(endpoint: LocalEndpoint) -> bool:
    return requests.get(endpoint.health_uri, timeout=30).text == "Healthy"


def test_schemathesis_finds_no_5xx_and_every_answer_matches_the_published_swagger(scoring_endpoint,
                                                                                   fault_outcome) -> None:  # fmt: skip
    schema = schemathesis.openapi.from_url(scoring_endpoint.swagger_uri)
    statuses: Counter[int] = Counter()
    cases = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)

    @given(case=cases)
    @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def answers_as_published(case) -> None:
        response = case.call(base_url=f"http://127.0.0.1:{scoring_endpoint.port}", timeout=60)
        statuses[response.status_code] += 1
        case.validate_response(response, excluded_checks=EXCLUDED_CHECKS)

    answers_as_published()

    server_errors = sum(count for status, count in statuses.items() if status >= 500)
    fault_outcome(PATH, f"Schemathesis on the published swagger ({sum(statuses.values())} requests)",
                  lost=server_errors, duplicates=0, bound="0")  # fmt: skip
    assert server_errors == 0, statuses
    assert statuses[200] > 0 and statuses[400] > 0, statuses  # both valid and invalid bodies were sent
    assert healthy(scoring_endpoint)


# --- byte-level ---------------------------------------------------------------------------------------


def exchange(endpoint: LocalEndpoint, head: bytes, body: bytes = b"", *, end_body: bool = False,
             timeout: float = 60) -> tuple[int | None, dict | None]:  # fmt: skip
    """Send raw bytes (a request head and part or all of a body) and read the answer to its end.

    `end_body` closes our side after sending, as a client that gives up does. The answer's status and
    JSON body, or (None, None) when the connection closed without an answer.
    """
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=timeout) as connection:
        connection.sendall(head + body)
        if end_body:
            connection.shutdown(socket.SHUT_WR)
        return parse_answer(read_to_end(connection))


def read_to_end(connection: socket.socket) -> bytes:
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    return answer


def parse_answer(answer: bytes) -> tuple[int | None, dict | None]:
    if not answer:
        return None, None
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None


def request_head(content_length: int | None, **headers: str) -> bytes:
    lines = ["POST /score HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [] if content_length is None else [f"Content-Length: {content_length}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def small_body() -> bytes:
    """One battery with three days of history: a valid request of about 600 bytes."""
    [item] = endpoint_items(1)
    return json.dumps({"data": [{**item, "history": item["history"][-3:]}]}).encode()


def lost(statuses: list[int | None]) -> int:
    """Requests that got a 5xx or no answer at all."""
    return sum(1 for status in statuses if status is None or status >= 500)


def answers(endpoint: LocalEndpoint, bodies: list[bytes]) -> tuple[list[int], list[str]]:
    responses = [post(endpoint, body) for body in bodies]
    return [r.status_code for r in responses], [r.json().get("error", "") if r.content else "" for r in responses]


INVALID_UTF8 = {
    "a lone continuation byte": b'{"data": [{"Battery_ID": "\x80"}]}',
    "an impossible byte": b'{"data": [{"Battery_ID": "\xff"}]}',
    "a cut multi-byte character": b'{"data": [{"Car_ID": "\xe2\x82"}]}',
    "an overlong encoding of '/'": b'{"data": [{"Car_ID": "\xc0\xaf"}]}',
    "a surrogate encoded as UTF-8": b'{"data": [{"Car_ID": "\xed\xa0\x80"}]}',
    "Latin-1 in a key": b'{"d\xe4ta": []}',
    "a UTF-16 body": '{"data": []}'.encode("utf-16"),
    "only bad bytes": b"\xfe\xff\xfe",
}


def test_invalid_utf8_gets_400_naming_the_problem(scoring_endpoint, fault_outcome) -> None:
    statuses, errors = answers(scoring_endpoint, list(INVALID_UTF8.values()))

    fault_outcome(PATH, f"invalid UTF-8 ({len(statuses)} bodies)", lost=lost(statuses), duplicates=0, bound="0")
    assert statuses == [400] * len(INVALID_UTF8), dict(zip(INVALID_UTF8, statuses, strict=True))
    assert all("UTF-8" in error or "decoded as JSON" in error for error in errors), errors
    assert healthy(scoring_endpoint)


def nested(depth: int, opener: bytes, closer: bytes) -> bytes:
    return b'{"data": [' + opener * depth + closer * depth + b"]}"


DEEP = {
    "arrays 1,000 deep": nested(1_000, b"[", b"]"),
    "arrays 100,000 deep, never closed": b'{"data": ' + b"[" * 100_000,
    "objects 5,000 deep": nested(5_000, b'{"a":', b"}"),
    "a history row 2,000 deep": b'{"data": [{"history": [' + b"[" * 2_000 + b"]" * 2_000 + b"]}]}",
    "a Battery_ID 3,000 deep": b'{"data": [{"Battery_ID": ' + b'{"x":' * 3_000 + b"1" + b"}" * 3_000 + b"}]}",
}


def test_deep_nesting_gets_400_or_an_item_error_never_a_500(scoring_endpoint, fault_outcome) -> None:
    responses = [post(scoring_endpoint, body) for body in DEEP.values()]
    statuses = [r.status_code for r in responses]

    fault_outcome(PATH, f"deep nesting ({len(statuses)} bodies)", lost=lost(statuses), duplicates=0, bound="0")
    assert lost(statuses) == 0, dict(zip(DEEP, statuses, strict=True))
    for name, response in zip(DEEP, responses, strict=True):
        body = response.json()
        if response.status_code == 200:  # decodable: the nesting is some item's value, refused in its place
            assert all(p["error"] for p in body["predictions"]), (name, body)
        else:
            assert response.status_code == 400 and body["error"], (name, body)
    assert statuses[1] == 400 and "too deeply" in responses[1].json()["error"]
    assert healthy(scoring_endpoint)


def test_a_valid_body_cut_at_every_byte_gets_400(scoring_endpoint, fault_outcome) -> None:
    body = small_body()
    statuses, errors = answers(scoring_endpoint, [body[:cut] for cut in range(len(body))])

    fault_outcome(PATH, f"valid body cut at every byte ({len(statuses)} bodies)", lost=lost(statuses),
                  duplicates=0, bound="0")  # fmt: skip
    assert statuses == [400] * len(body), Counter(statuses)
    assert all(errors), "every 400 says why"
    assert post(scoring_endpoint, body).status_code == 200


def test_a_body_shorter_than_its_content_length_gets_400(scoring_endpoint, fault_outcome) -> None:
    body = small_body()
    cuts = range(0, len(body), 37)
    outcomes = [exchange(scoring_endpoint, request_head(len(body)), body[:cut], end_body=True) for cut in cuts]

    statuses = [status for status, _ in outcomes]
    fault_outcome(PATH, f"client closes mid-body ({len(statuses)} requests)", lost=lost(statuses), duplicates=0,
                  bound="0")  # fmt: skip
    assert statuses == [400] * len(cuts)
    assert all(f"of the {len(body):,} bytes of its Content-Length" in answer["error"] for _, answer in outcomes)
    assert healthy(scoring_endpoint)


def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read(scoring_endpoint, fault_outcome) -> None:
    """413 arrives while the client has sent a few bytes of its 1 TB or 64 MiB + 1 body: nothing was read."""
    outcomes = [exchange(scoring_endpoint, request_head(length), b'{"data": [') for length in
                (10**12, MAX_BODY_BYTES + 1)]  # fmt: skip

    statuses = [status for status, _ in outcomes]
    fault_outcome(PATH, "Content-Length over the limit (1 TB, limit + 1)", lost=lost(statuses), duplicates=0,
                  bound="0")  # fmt: skip
    assert statuses == [413, 413]
    assert "1,000,000,000,000 bytes; the limit is" in outcomes[0][1]["error"]
    assert healthy(scoring_endpoint)


def chunked(body: bytes, piece: int = 1 << 20) -> bytes:
    pieces = [body[start : start + piece] for start in range(0, len(body), piece)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_a_chunked_body_is_read_to_the_limit_and_no_further(scoring_endpoint, fault_outcome) -> None:
    """No Content-Length to refuse by: the body is read to MAX_BODY_BYTES + 1 bytes, then refused."""
    over = b'{"data": [], "padding": "' + b"x" * MAX_BODY_BYTES + b'"}'
    refused = exchange(scoring_endpoint, request_head(None, Transfer_Encoding="chunked"), chunked(over))
    accepted = exchange(scoring_endpoint, request_head(None, Transfer_Encoding="chunked"), chunked(small_body()))

    fault_outcome(PATH, "chunked body over the limit", lost=lost([refused[0], accepted[0]]), duplicates=0, bound="0")
    assert refused[0] == 413 and f"the limit is {MAX_BODY_BYTES:,}" in refused[1]["error"]
    assert accepted[0] == 200 and accepted[1]["predictions"][0]["error"] is None


def test_repeated_keys_get_400_naming_the_key(scoring_endpoint, fault_outcome) -> None:
    body = small_body().decode()
    bodies = {
        "data": '{"data": [], ' + body[1:],
        "Battery_ID": body.replace('"Battery_ID": ', '"Battery_ID": "other", "Battery_ID": ', 1),
        "Daily_Cycles_Used": body.replace('"Daily_Cycles_Used": ', '"Daily_Cycles_Used": 9, "Daily_Cycles_Used": ', 1),
        "x": body.replace("{", '{"x": 1, "x": 2, ', 1),
    }
    statuses, errors = answers(scoring_endpoint, [text.encode() for text in bodies.values()])

    fault_outcome(PATH, f"repeated keys ({len(statuses)} bodies)", lost=lost(statuses), duplicates=0, bound="0")
    assert statuses == [400] * len(bodies)
    for key, error in zip(bodies, errors, strict=True):
        assert f"repeats the key '{key}' in one object" in error


# Short timeouts for the stalled-client tests, on a server of their own: mid-body silence 1 s, run() 5 s,
# a worker held anywhere 8 s (more than run()'s bound, so a trickled body gets its 408 first).
STALL_TIMEOUTS = {"SCORING_BODY_IDLE_TIMEOUT_S": "1", "SCORING_TIMEOUT_MS": "5000", "WORKER_TIMEOUT": "8"}


@pytest.fixture(scope="module")
def impatient_endpoint() -> Iterator[LocalEndpoint]:
    with running_endpoint(model_dir(), environment=STALL_TIMEOUTS, timeout=180) as endpoint:
        yield endpoint


def test_a_client_stalling_mid_body_gets_408_and_does_not_hold_the_worker(impatient_endpoint, fault_outcome) -> None:
    body = small_body()
    with socket.create_connection(("127.0.0.1", impatient_endpoint.port), timeout=60) as stalled:
        stalled.sendall(request_head(len(body)) + body[: len(body) // 2])  # and then nothing
        started = time.monotonic()
        waiting = requests.get(impatient_endpoint.health_uri, timeout=60)  # queued behind the stalled client
        waited = time.monotonic() - started
        status, answer = parse_answer(read_to_end(stalled))

    fault_outcome(PATH, "client stalls mid-body (1 s idle timeout)", lost=lost([status, waiting.status_code]),
                  duplicates=0, bound="0")  # fmt: skip
    assert status == 408 and "send it again" in answer["error"]
    assert waiting.text == "Healthy" and waited < 4  # the 1 s idle timeout, not the 5 s scoring timeout
    assert post(impatient_endpoint, body).status_code == 200


def test_a_trickling_body_is_cut_off_by_the_scoring_timeout(impatient_endpoint, fault_outcome) -> None:
    """One byte every 0.3 s never trips the 1 s idle timeout; the 5 s bound on run() ends it with 408."""
    body = small_body()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", impatient_endpoint.port), timeout=60) as trickling:
        trickling.sendall(request_head(len(body)))
        for byte in body[:-1]:  # never the last one
            trickling.sendall(bytes([byte]))
            if select.select([trickling], [], [], 0.3)[0]:  # the answer came
                break
        status, answer = parse_answer(read_to_end(trickling))
    took = time.monotonic() - started

    fault_outcome(PATH, "client trickles its body (5 s scoring timeout)", lost=lost([status]), duplicates=0,
                  bound="0")  # fmt: skip
    assert status == 408 and answer["error"].startswith("the body did not arrive in time")
    assert 4.5 < took < 8
    assert healthy(impatient_endpoint)


def test_a_client_stalling_in_its_headers_costs_a_worker_restart_not_the_endpoint(impatient_endpoint,
                                                                                  fault_outcome) -> None:  # fmt: skip
    """Before run() there is nothing of ours to time out: gunicorn's --timeout (WORKER_TIMEOUT) kills the
    held worker and starts another, which answers the request queued behind it. The stalled connection,
    which never sent a whole request, gets gunicorn's own HTML 500 as its worker dies."""
    with socket.create_connection(("127.0.0.1", impatient_endpoint.port), timeout=60) as stalled:
        stalled.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")  # and then nothing
        started = time.monotonic()
        waiting = requests.get(impatient_endpoint.health_uri, timeout=60)
        waited = time.monotonic() - started
        stalled_answer = read_to_end(stalled)

    fault_outcome(PATH, "client stalls in its headers (8 s worker timeout; it gets gunicorn's HTML 500)",
                  lost=lost([waiting.status_code]), duplicates=0, bound="0")  # fmt: skip
    assert waiting.text == "Healthy" and 8 <= waited < 60  # after the worker timeout and the new worker's init()
    assert stalled_answer.startswith(b"HTTP/1.1 500 ") and b"text/html" in stalled_answer
