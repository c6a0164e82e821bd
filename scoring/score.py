"""Azure ML entry script of the scoring endpoint: `init()` loads the model once, `run()` scores a request.

Served by azmlinfsrv (`python -m shared serve` locally; Azure ML's inference server in the cloud, on a
managed online endpoint or, with the v1 SDK, ACI). The request and response are docs/contracts.md's "Scoring
endpoint" contract; all the work is `shared.endpoint.server.score_body`, the batch path's own code.

run() takes the raw HTTP request (@rawhttp) rather than letting the server parse the body: the server's
json.loads took 2 of the 2.6 seconds of a 1,000-battery request (39 MB), and score_body decodes it in a
fraction of that. It answers as the server would have: 415 for a body that is not JSON, 400 with a JSON
error for a body that is not the contract's shape. Reading the body itself, it also bounds it: a
Content-Length over MAX_BODY_BYTES is refused before a byte is read, no more than the limit + 1 bytes
are read, and a client that stops sending mid-body gets 408 after BODY_IDLE_TIMEOUT_S (the single
local worker is not held). The whole of run() is bounded by azmlinfsrv's SCORING_TIMEOUT_MS and the
worker by gunicorn's --timeout (WORKER_TIMEOUT): see shared.endpoint.server.SERVER_ENVIRONMENT.

azmlinfsrv loads this file by path and puts only AML_APP_ROOT on sys.path, so the directory holding
`shared` (this file's parent's parent: the repo root locally, the uploaded code folder in Azure ML) is
added here before importing it.
"""

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

from shared.endpoint.schema import SWAGGER_FILE, swagger_document
from shared.endpoint.server import (
    BODY_IDLE_TIMEOUT_S,
    MAX_BODY_BYTES,
    RequestError,
    RequestTimeout,
    check_body_size,
    find_model_dir,
    score_body,
)
from shared.models.explanation import prepare_reasons
from shared.models.loader import load_model

logger = logging.getLogger("azmlinfsrv.score")
model = None
JSON = {"Content-Type": "application/json"}
# Seconds a client may go silent in the middle of its body; overridable for tests and slow links.
BODY_IDLE_TIMEOUT_SETTING = "SCORING_BODY_IDLE_TIMEOUT_S"
body_idle_timeout_s = BODY_IDLE_TIMEOUT_S


def init() -> None:
    """Load the model from AZUREML_MODEL_DIR once per worker, before the first request."""
    global model, body_idle_timeout_s
    body_idle_timeout_s = float(os.environ.get(BODY_IDLE_TIMEOUT_SETTING) or BODY_IDLE_TIMEOUT_S)
    model_dir = find_model_dir(os.environ["AZUREML_MODEL_DIR"])
    model = load_model(model_dir)
    prepare_reasons(model)
    _publish_the_swagger()
    logger.info("loaded model %s from %s", model.version, model_dir)


@rawhttp
def run(request: AMLRequest) -> AMLResponse:
    """Score the batteries of a POSTed body; a body that is not the contract's shape gets a JSON 4xx."""
    if request.method == "OPTIONS":  # a CORS preflight: answered as azmlinfsrv answers it
        return AMLResponse("", 200)
    if request.method != "POST":
        return _error(405, "POST the request as a JSON body", {"Allow": "POST, OPTIONS"})
    if not request.is_json:
        return _error(415, "Expects Content-Type to be application/json")
    try:
        return AMLResponse(msgspec.json.encode(score_body(model, _body(request))), 200, JSON)
    except RequestError as error:
        return _error(error.status, str(error))


def _body(request: AMLRequest) -> bytes:
    """The request body, bounded: refused by its Content-Length, read to at most MAX_BODY_BYTES + 1 bytes.

    A client silent for body_idle_timeout_s mid-body gets 408 (the socket's timeout, gunicorn's socket
    being in the environ); one that trickles is cut off by azmlinfsrv's SCORING_TIMEOUT_MS, whose
    alarm raises TimeoutError here too. A body shorter than its Content-Length (the client gave up) is
    a 400.

    It reads through the body's own length-bounded reader (`.reader`) where gunicorn has one: some
    gunicorn releases read wsgi.input 1 KB at a time and copy their buffer at each read (about 0.15 s
    more CPU for a 39 MB body). Anything else (another server, a body already started) is read through
    wsgi.input.
    """
    declared = request.content_length
    if declared is not None:
        check_body_size(declared, "the body (Content-Length)")
    stream = request.environ.get("wsgi.input")
    if stream is None or (declared is None and not request.environ.get("wsgi.input_terminated")):
        return b""  # no length and no end marker: WSGI says the body must not be read
    reader, already_read = getattr(stream, "reader", None), getattr(stream, "buf", None)
    if reader is not None and already_read is not None and not already_read.tell() and declared is not None:
        stream = reader
    wanted = MAX_BODY_BYTES + 1 if declared is None else declared
    try:
        with _idle_timeout(request.environ.get("gunicorn.socket"), body_idle_timeout_s):
            body = stream.read(wanted)
    except TimeoutError:  # the socket's timeout, or azmlinfsrv's scoring-timeout alarm
        raise RequestTimeout(f"the body did not arrive in time (none of it for {body_idle_timeout_s:g} s, or "
                             "not all of it within the scoring timeout): send it again") from None  # fmt: skip
    except Exception as error:  # the server's own reader refusing the body (gunicorn: a malformed chunk)
        raise RequestError(f"POST body could not be read: {type(error).__name__}: {error}"[:300]) from None
    check_body_size(len(body))
    if declared is not None and len(body) < declared:
        raise RequestError(f"POST body ended after {len(body):,} of the {declared:,} bytes of its Content-Length")
    return body


@contextlib.contextmanager
def _idle_timeout(connection: socket.socket | None, seconds: float) -> Iterator[None]:
    """Give the client's socket a receive timeout for the block, then the one it had (gunicorn: none)."""
    if not isinstance(connection, socket.socket):
        yield
        return
    before = connection.gettimeout()
    connection.settimeout(seconds)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # the client may have gone; gunicorn closes the socket
            connection.settimeout(before)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> AMLResponse:
    return AMLResponse(msgspec.json.encode({"error": message}), status, {**JSON, **(headers or {})})


def _publish_the_swagger() -> None:
    """Write the endpoint's OpenAPI document where azmlinfsrv serves GET /swagger.json from.

    After init() azmlinfsrv builds its swagger, and takes `swagger2.json` from its app root (AML_APP_ROOT)
    when there is one instead of its generic template (Azure ML Designer's entry scripts publish theirs
    the same way). Written atomically, as each worker runs init(). A read-only app root leaves the
    generic document, with a warning: scoring does not depend on it.
    """
    target = Path(os.environ.get("AML_APP_ROOT", "/var/azureml-app")) / SWAGGER_FILE
    staged = target.with_name(f".{SWAGGER_FILE}.{os.getpid()}")
    try:
        staged.write_text(json.dumps(swagger_document(), indent=1), encoding="utf-8")
        os.replace(staged, target)
    except OSError as error:
        logger.warning("could not publish the swagger at %s (%s): GET /swagger.json is azmlinfsrv's generic one",
                       target, error)  # fmt: skip
