"""Azure ML entry script of the scoring endpoint: `init()` loads the model once, `run()` scores a request.

Served by azmlinfsrv (`python -m shared serve` locally; Azure ML's inference server in the cloud, on a
managed online endpoint or, with the v1 SDK, ACI). The request and response are DESIGN.md's "Scoring
endpoint" contract; all the work is `shared.endpoint.score_request`, the batch path's own code.

azmlinfsrv loads this file by path and puts only AML_APP_ROOT on sys.path, so the directory holding
`shared` (this file's parent's parent: the repo root locally, the uploaded code folder in Azure ML) is
added here before importing it.
"""

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from azureml_inference_server_http.api.aml_response import AMLResponse
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema

from shared.endpoint import EXAMPLE_ITEM, EXAMPLE_RESPONSE, RequestError, find_model_dir, score_request
from shared.forecasting import load_model

logger = logging.getLogger("azmlinfsrv.score")
model = None


def init() -> None:
    """Load the model from AZUREML_MODEL_DIR once per worker, before the first request."""
    global model
    model_dir = find_model_dir(os.environ["AZUREML_MODEL_DIR"])
    model = load_model(model_dir)
    logger.info("loaded model %s from %s", model.version, model_dir)


# The schemas describe the contract in the server's swagger (GET /swagger.json). Conversion is off:
# `data` reaches run() as parsed JSON, so one bad item becomes that item's error, not a failed request.
@input_schema("data", StandardPythonParameterType([EXAMPLE_ITEM]), convert_to_provided_type=False)
@output_schema(StandardPythonParameterType(EXAMPLE_RESPONSE))
def run(data):
    """Score the batteries of `data`; a body that is not the contract's shape gets a JSON 400 (or 413)."""
    try:
        return score_request(model, data)
    except RequestError as error:
        return AMLResponse({"error": str(error)}, error.status, json_str=True)
