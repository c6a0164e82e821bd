"""The alerts of the nightly Spark score: the job runs on a cluster after the nightly timer has returned.

A light module (no model stack): its timer runs every 15 minutes and, without a Spark target, at once
returns. Spark's output of a night (shared/spark/submit.py `score_arguments`) is
`scores/date=<as_of>/spark-<model>/scores/`, complete when Spark has written its `_SUCCESS`;
`_ALERTED` is left beside it once its alerts are queued.
"""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shared.adapters.storage import download_bytes, list_blob_names, upload_bytes
from shared.bootstrap import Services
from shared.config.names import SCORES_CONTAINER, SPARK_OUTPUT_PREFIX
from shared.core.alerts import SCORE_COLUMNS, AlertBatch
from shared.handlers.lifecycle import alerts_of_scores

SPARK_DONE, SPARK_ALERTED = "_SUCCESS", "_ALERTED"


def alert_spark_scores(services: Services) -> AlertBatch:
    """With SPARK_TARGET set: the alerts of yesterday's Spark score, once the job's output is complete.

    The job runs for minutes after the nightly timer submitted it; this timer finds each of the day's
    `spark-<model>/scores/` folders that Spark has finished (its `_SUCCESS` is written last), builds the
    alerts as the in-process batch score does, and leaves `spark-<model>/_ALERTED` so later runs skip the
    folder. Alert ids are the streaming path's, so a battery already alerted is delivered once.
    """
    if services.settings.spark is None:
        return AlertBatch([], {"alerts": 0, "reason": "no SPARK_TARGET configured"})
    now = services.clock()
    as_of = now.date() - timedelta(days=1)
    container = services.blobs.get_container_client(SCORES_CONTAINER)
    prefix = f"date={as_of.isoformat()}/"
    outputs = spark_outputs(list_blob_names(container, prefix), prefix)
    alerts, summary = [], {"as_of": as_of.isoformat(), "scored": 0, "alerted": [], "waiting": []}
    for folder, names in outputs.items():
        if f"{folder}/{SPARK_ALERTED}" in names:
            continue
        if f"{folder}/scores/{SPARK_DONE}" not in names:
            summary["waiting"].append(folder)
            continue
        parts = [pq.read_table(io.BytesIO(download_bytes(container, f"{prefix}{name}")))
                 for name in names if _is_part(name, folder)]  # fmt: skip
        scores = pa.concat_tables(parts).to_pandas() if parts else pd.DataFrame(columns=SCORE_COLUMNS)
        scores["reasons"] = scores["reasons"].map(list) if "reasons" in scores else None
        alerts += alerts_of_scores(
            services,
            scores.assign(As_Of=pd.Timestamp(as_of)),
            now,
            model_version=folder.removeprefix(SPARK_OUTPUT_PREFIX),
        )
        upload_bytes(container, f"{prefix}{folder}/{SPARK_ALERTED}",
                     json.dumps({"alerted_at": now.isoformat(), "scored": len(scores)}).encode())  # fmt: skip
        summary["scored"] += len(scores)
        summary["alerted"].append(folder)
    return AlertBatch(alerts, {**summary, "alerts": len(alerts)})


def spark_outputs(names: list[str], prefix: str) -> dict[str, set[str]]:
    """A day's blob names (under `prefix`) by Spark output folder, each relative to the day."""
    outputs: dict[str, set[str]] = {}
    for name in names:
        relative = name[len(prefix) :]
        folder = relative.split("/", 1)[0]
        if folder.startswith(SPARK_OUTPUT_PREFIX) and "/" in relative:
            outputs.setdefault(folder, set()).add(relative)
    return dict(sorted(outputs.items()))


def _is_part(name: str, folder: str) -> bool:
    """A Parquet part Spark wrote in the folder's scores (not _SUCCESS, nor a local file system's .crc)."""
    return name.startswith(f"{folder}/scores/part-") and name.endswith(".parquet")
