"""Submitting the nightly Spark score, up to the wire: no Databricks or Azure ML workspace is reachable here.

Databricks: the real requests Session the submitter uses, with a recording adapter mounted on it that
answers as the Jobs API does. Azure ML: the job printed by `--dry-run` loads back with azure-ai-ml's
`load_job` to an entity that sends the same request body. The arguments sent are parsed by the Spark
job's own parser, so what the timer sends is what job.py runs.
"""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, date, datetime

import pytest
import requests
import urllib3
import yaml
from _models import model_dir
from azure.ai.ml import load_job
from azure.core.credentials import AccessToken
from requests.adapters import BaseAdapter
from test_azureml import plain, request_body

from shared.adapters.registry import ModelRegistry, RegistryError
from shared.adapters.storage import blob_service, table_service
from shared.bootstrap import Services
from shared.cli import main
from shared.config.settings import SettingsError, load_settings
from shared.handlers.nightly import nightly_batch_score
from shared.spark import submit

HOST = "https://adb-1234567890123456.7.azuredatabricks.net"
DATABRICKS = {"SPARK_TARGET": "databricks", "SPARK_STORAGE_ACCOUNT": "stbattery", "DATABRICKS_HOST": HOST,
              "DATABRICKS_JOB_ID": "4242"}  # fmt: skip
AZUREML = {"SPARK_TARGET": "azureml", "SPARK_STORAGE_ACCOUNT": "stbattery", "AZUREML_SUBSCRIPTION_ID": "sub",
           "AZUREML_RESOURCE_GROUP": "rg-battery", "AZUREML_WORKSPACE": "ws-battery"}  # fmt: skip
AS_OF = date(2016, 6, 20)
ARGUMENTS = submit.score_arguments(load_settings(DATABRICKS).spark, AS_OF, "v1", 0.8)


class RecordingJobsApi(BaseAdapter):
    """A requests adapter standing in for the Databricks Jobs API: records requests, answers in turn."""

    def __init__(self, answers: list[tuple[int, dict]]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[dict] = []

    def send(self, request, **kwargs) -> requests.Response:
        self.sent.append({"method": request.method, "url": request.url, "body": json.loads(request.body),
                          "authorization": request.headers.get("Authorization")})  # fmt: skip
        status, payload = self.answers.pop(0)
        content = json.dumps(payload).encode()
        response = requests.Response()
        response.status_code, response.url, response.request = status, request.url, request
        response.headers = requests.structures.CaseInsensitiveDict({"Content-Type": "application/json"})
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(content), status=status, preload_content=False)
        return response

    def close(self) -> None:
        pass


def recording_session(answers: list[tuple[int, dict]]) -> tuple[requests.Session, RecordingJobsApi]:
    api = RecordingJobsApi(answers)
    session = requests.Session()
    session.mount("https://", api)
    return session, api


class FakeCredential:
    def __init__(self) -> None:
        self.scopes: list[tuple] = []

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("entra-token", 2_000_000_000)


def test_spark_settings_name_what_is_missing_or_wrong() -> None:
    assert load_settings({}).spark is None
    with pytest.raises(SettingsError, match="SPARK_TARGET must be empty or one of databricks, azureml"):
        load_settings({"SPARK_TARGET": "emr"})
    with pytest.raises(SettingsError, match="DATABRICKS_JOB_ID"):
        load_settings({**DATABRICKS, "DATABRICKS_JOB_ID": ""})
    with pytest.raises(SettingsError, match="DATABRICKS_HOST must be the workspace's https:// URL"):
        load_settings({**DATABRICKS, "DATABRICKS_HOST": "http://adb.example"})
    with pytest.raises(SettingsError, match="set AZUREML_WORKSPACE"):
        load_settings({**AZUREML, "AZUREML_WORKSPACE": ""})
    with pytest.raises(SettingsError, match="SPARK_STORAGE_ACCOUNT"):
        load_settings({**AZUREML, "SPARK_STORAGE_ACCOUNT": "Not_An_Account"})


def test_the_arguments_sent_are_what_the_job_parses() -> None:
    pytest.importorskip("pyspark")
    from shared.spark.job import build_parser

    settings = load_settings(DATABRICKS).spark
    arguments = submit.score_arguments(settings, AS_OF, "20160601T000000Z-abcd1234", 0.8, history_days=105)
    parsed = build_parser().parse_args(arguments)
    assert (parsed.step, parsed.format, parsed.as_of, parsed.threshold, parsed.history_days) == (
        "score", "parquet", AS_OF, 0.8, 105)  # fmt: skip
    assert parsed.telemetry == "abfss://telemetry@stbattery.dfs.core.windows.net/"
    assert parsed.model == "abfss://models@stbattery.dfs.core.windows.net/20160601T000000Z-abcd1234/"
    assert parsed.scores_out == ("abfss://scores@stbattery.dfs.core.windows.net/"
                                 "date=2016-06-20/spark-20160601T000000Z-abcd1234/scores")  # fmt: skip


def test_databricks_run_now_retries_a_503_and_sends_one_idempotent_run() -> None:
    settings = load_settings(DATABRICKS).spark
    arguments = submit.score_arguments(settings, AS_OF, "v1", 0.8)
    session, api = recording_session([(503, {"message": "busy"}), (200, {"run_id": 77, "number_in_job": 77})])
    pauses: list[float] = []
    credential = FakeCredential()
    run = submit.submit_databricks(settings, arguments, session=session, credential=credential, pause=pauses.append)
    assert run["run_id"] == 77 and len(pauses) == 1
    first, second = api.sent
    assert first == second  # the same request again, so its idempotency token makes it one run
    assert (second["method"], second["url"]) == ("POST", f"{HOST}/api/2.1/jobs/run-now")
    assert second["body"] == {"job_id": 4242, "python_params": arguments,
                              "idempotency_token": "battery-score-2016-06-20-v1"}  # fmt: skip
    assert second["authorization"] == "Bearer entra-token"
    assert credential.scopes[0] == ("2ff814a6-3304-4ab8-85cb-cd0e6f879c1d/.default",)


def test_databricks_refusal_is_an_error_with_its_message_and_not_retried() -> None:
    settings = load_settings({**DATABRICKS, "DATABRICKS_TOKEN": "dapi-secret"}).spark
    refusal = {"error_code": "INVALID_PARAMETER_VALUE", "message": "Job 4242 does not exist."}
    session, api = recording_session([(400, refusal)])
    with pytest.raises(submit.SparkSubmitError, match="HTTP 400: Job 4242 does not exist"):
        submit.submit_databricks(settings, ARGUMENTS, session=session, pause=pytest.fail)
    assert len(api.sent) == 1 and api.sent[0]["authorization"] == "Bearer dapi-secret"


def test_databricks_failing_every_time_gives_up_after_the_attempts() -> None:
    settings = load_settings({**DATABRICKS, "DATABRICKS_TOKEN": "t"}).spark
    session, api = recording_session([(503, {})] * submit.DATABRICKS_ATTEMPTS)
    pauses: list[float] = []
    with pytest.raises(submit.SparkSubmitError, match="failed 3 times, last: HTTP 503"):
        submit.submit_databricks(settings, ARGUMENTS, session=session, pause=pauses.append)
    assert len(api.sent) == submit.DATABRICKS_ATTEMPTS and pauses == [2.0, 4.0]


def test_the_nightly_timer_submits_to_databricks_instead_of_scoring(storage_connection, tmp_path) -> None:
    blobs = blob_service(storage_connection)
    registry = ModelRegistry(blobs)
    with contextlib.suppress(RegistryError):  # another test of the session may have published it already
        registry.promote_if_better(model_dir())
    champion = registry.champion_metadata()
    settings = load_settings({**DATABRICKS, "DATABRICKS_TOKEN": "t"})
    session, api = recording_session([(200, {"run_id": 5})])
    services = Services(settings=settings, blobs=blobs, tables=table_service(storage_connection), queues=None,
                        scoring=None, gateway=session,
                        work_dir=tmp_path, clock=lambda: datetime(2016, 6, 21, 3, tzinfo=UTC))  # fmt: skip
    batch = nightly_batch_score(services)
    assert batch.alerts == [] and batch.summary["submitted"] == {"target": "databricks", "job_id": 4242, "run_id": 5}
    (sent,) = api.sent
    params = sent["body"]["python_params"]
    assert params[params.index("--as-of") + 1] == "2016-06-20"  # yesterday, as the in-process score
    assert params[params.index("--model") + 1].endswith(f"/{champion['version']}/")
    assert params[params.index("--history-days") + 1] == str(champion.get("window_days", 91) + 14)


def test_dry_run_prints_the_databricks_request_and_sends_nothing(monkeypatch, capsys) -> None:
    for name, value in DATABRICKS.items():
        monkeypatch.setenv(name, value)
    assert main(["spark", "submit", "--as-of", "2016-06-20", "--model-version", "v1", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["url"] == f"{HOST}/api/2.1/jobs/run-now"
    assert printed["body"]["job_id"] == 4242 and "--as-of" in printed["body"]["python_params"]


def test_azureml_dry_run_yaml_loads_back_to_the_job_it_would_submit(monkeypatch, capsys, tmp_path) -> None:
    for name, value in AZUREML.items():
        monkeypatch.setenv(name, value)
    assert main(["spark", "submit", "--as-of", "2016-06-20", "--model-version", "v1", "--dry-run",
                 "--work-dir", str(tmp_path)]) == 0  # fmt: skip
    (document,) = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d is not None]
    settings = load_settings(AZUREML).spark
    expected = submit.azureml_spark_job(settings, submit.score_arguments(settings, AS_OF, "v1", 0.8),
                                        tmp_path / "spark-code")  # fmt: skip
    # As `az ml job create -f` reads it: a Spark node, sent as the standalone job it stands for.
    loaded = load_job(io.StringIO(yaml.safe_dump(document)))._to_job()
    sent, want = request_body(loaded), request_body(expected)
    # The environment is still an entity in the body (the SDK registers it on submission): compare it as one.
    sent["properties"].pop("environmentId"), want["properties"].pop("environmentId")
    assert sent == want and plain(loaded.environment) == plain(expected.environment)
    assert plain(loaded)["args"] == plain(expected)["args"]
    properties = request_body(loaded)["properties"]
    assert properties["entry"]["file"] == "shared/spark/job.py"
    assert properties["resources"] == {"instanceType": "standard_e4s_v3", "runtimeVersion": "3.4"}
    assert (tmp_path / "spark-code" / "shared" / "spark" / "job.py").is_file()
