"""Azure ML entry script of the scoring endpoint: `init()` loads the model once, `run()` scores a request.

Served by azmlinfsrv (`python -m shared serve` locally; Azure ML's inference server in the cloud, on a
managed online endpoint or, with the v1 SDK, ACI). The request and response are DESIGN.md's "Scoring
endpoint" contract; all the work is `shared.endpoint.score_body`, the batch path's own code.

run() takes the raw HTTP request (@rawhttp) rather than letting the server parse the body: the server's
json.loads took 2 of the 2.6 seconds of a 1,000-battery request (39 MB), and score_body decodes it in a
fraction of that. It answers as the server would have: 415 for a body that is not JSON, 400 with a JSON
error for a body that is not the contract's shape.

azmlinfsrv loads this file by path and puts only AML_APP_ROOT on sys.path, so the directory holding
`shared` (this file's parent's parent: the repo root locally, the uploaded code folder in Azure ML) is
added here before importing it.
"""

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema
from inference_schema.schema_util import is_schema_decorated

from shared.endpoint import EXAMPLE_ITEM, EXAMPLE_RESPONSE, RequestError, find_model_dir, score_body
from shared.explanation import prepare_reasons
from shared.forecasting import load_model

logger = logging.getLogger("azmlinfsrv.score")
model = None
JSON = {"Content-Type": "application/json"}


def init() -> None:
    """Load the model from AZUREML_MODEL_DIR once per worker, before the first request."""
    global model
    model_dir = find_model_dir(os.environ["AZUREML_MODEL_DIR"])
    model = load_model(model_dir)
    prepare_reasons(model)
    _describe_the_contract_in_the_swagger()
    logger.info("loaded model %s from %s", model.version, model_dir)


@rawhttp
def run(request: AMLRequest) -> AMLResponse:
    """Score the batteries of a POSTed body; a body that is not the contract's shape gets a JSON 400 (or 413)."""
    if request.method == "OPTIONS":  # a CORS preflight: answered as azmlinfsrv answers it
        return AMLResponse("", 200)
    if request.method != "POST":
        return _error(405, "POST the request as a JSON body")
    if not request.is_json:
        return _error(415, "Expects Content-Type to be application/json")
    try:
        return AMLResponse(msgspec.json.encode(score_body(model, _body(request))), 200, JSON)
    except RequestError as error:
        return _error(error.status, str(error))


def _body(request: AMLRequest) -> bytes:
    """The request body, read in the socket's pieces rather than gunicorn's 1 KB ones.

    azmlinfsrv serves through gunicorn (on Linux: locally and in Azure ML), whose wsgi.input reads 1 KB
    at a time and copies its buffer at each read: about 0.15 s more CPU for a 39 MB body. The reader
    beneath it (`.reader`, the body's own length-bounded reader) returns what each recv() brings.
    Anything else (another server, a chunked body, a body already started) is read the ordinary way.
    """
    stream = request.environ.get("wsgi.input")
    reader, already_read = getattr(stream, "reader", None), getattr(stream, "buf", None)
    if reader is None or already_read is None or already_read.tell() or request.content_length is None:
        return request.get_data()
    return reader.read(request.content_length)


def _error(status: int, message: str) -> AMLResponse:
    return AMLResponse(msgspec.json.encode({"error": message}), status, JSON)


def _describe_the_contract_in_the_swagger() -> None:
    """Register the request and response examples with inference_schema, for GET /swagger.json.

    azmlinfsrv refuses a run() that has both @rawhttp and @input_schema when it imports this file, but
    builds the swagger from inference_schema's registry only after init(): registering the schemas here
    (the decorated wrapper is not used) gives the swagger the contract while run() keeps the raw body.
    tests/test_score_script.py checks the swagger shows it.
    """
    if not is_schema_decorated(run):
        input_schema("data", StandardPythonParameterType([EXAMPLE_ITEM]), convert_to_provided_type=False)(run)
        output_schema(StandardPythonParameterType(EXAMPLE_RESPONSE))(run)
