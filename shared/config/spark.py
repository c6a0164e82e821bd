"""The Spark target settings: where the nightly batch score runs when one machine is not enough.

SPARK_TARGET empty (the default) keeps scoring in process. `databricks` runs an existing Databricks job
(DATABRICKS_HOST, DATABRICKS_JOB_ID; the job's task runs shared/spark/job.py) with the night's
parameters; `azureml` submits an Azure ML serverless Spark job to the workspace of AZUREML_*. Both read
the archive and the champion model from, and write the scores to, the storage account
SPARK_STORAGE_ACCOUNT over abfss:// (containers telemetry, models, scores), with their own identity.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SPARK_TARGETS = ("databricks", "azureml")
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")


@dataclass(frozen=True)
class SparkSettings:
    target: str  # SPARK_TARGET: databricks | azureml
    storage_account: str  # SPARK_STORAGE_ACCOUNT
    databricks_host: str | None = None  # DATABRICKS_HOST, https://adb-<id>.<n>.azuredatabricks.net
    databricks_job_id: int | None = None  # DATABRICKS_JOB_ID
    # DATABRICKS_TOKEN (a Key Vault reference); without it the app's Entra identity gets a token.
    databricks_token: str | None = None
    instance_type: str = "standard_e4s_v3"  # SPARK_INSTANCE_TYPE (Azure ML serverless Spark)
    runtime_version: str = "3.4"  # SPARK_RUNTIME_VERSION (Azure ML serverless Spark)
    executor_instances: int = 2  # SPARK_EXECUTOR_INSTANCES (Azure ML serverless Spark)

    def uri(self, container: str, path: str = "") -> str:
        """abfss:// URI of a path in one of the app storage account's containers."""
        return f"abfss://{container}@{self.storage_account}.dfs.core.windows.net/{path}"


def load_spark_settings(env: Mapping[str, str]) -> SparkSettings | None:
    """The Spark target, or None when SPARK_TARGET is empty; `SettingsError` names a missing or bad setting."""
    from shared.config.settings import SettingsError

    def text(name: str) -> str:
        return env.get(name, "").strip()

    target = text("SPARK_TARGET").lower()
    if not target:
        return None
    if target not in SPARK_TARGETS:
        raise SettingsError(f"SPARK_TARGET must be empty or one of {', '.join(SPARK_TARGETS)}, got {target!r}")
    account = text("SPARK_STORAGE_ACCOUNT")
    if not _ACCOUNT.fullmatch(account):
        raise SettingsError(f"SPARK_STORAGE_ACCOUNT must be a storage account name (3-24 lower-case letters and "
                            f"digits) when SPARK_TARGET is set, got {account!r}")  # fmt: skip
    executors = text("SPARK_EXECUTOR_INSTANCES") or "2"
    if not executors.isdigit() or int(executors) < 1:
        raise SettingsError(f"SPARK_EXECUTOR_INSTANCES must be a whole number of at least 1, got {executors!r}")
    settings = SparkSettings(target=target, storage_account=account,
                             instance_type=text("SPARK_INSTANCE_TYPE") or SparkSettings.instance_type,
                             runtime_version=text("SPARK_RUNTIME_VERSION") or SparkSettings.runtime_version,
                             executor_instances=int(executors))  # fmt: skip
    if target == "azureml":
        missing = [n for n in ("AZUREML_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE") if not text(n)]
        if missing:
            raise SettingsError(f"SPARK_TARGET=azureml needs the workspace: set {', '.join(missing)}")
        return settings
    host, job_id = text("DATABRICKS_HOST").rstrip("/"), text("DATABRICKS_JOB_ID")
    if not host.startswith("https://"):
        raise SettingsError(f"DATABRICKS_HOST must be the workspace's https:// URL when SPARK_TARGET=databricks, "
                            f"got {host!r}")  # fmt: skip
    if not job_id.isdigit():
        raise SettingsError(f"DATABRICKS_JOB_ID must be the job's number when SPARK_TARGET=databricks, got {job_id!r}")
    return SparkSettings(**{**vars(settings), "databricks_host": host, "databricks_job_id": int(job_id),
                            "databricks_token": text("DATABRICKS_TOKEN") or None})  # fmt: skip
