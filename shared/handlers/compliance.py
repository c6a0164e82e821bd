"""The nightly compliance job: score the component catalogue, store the results, alert the affected cars.

Where things live (all in the app's storage account unless the catalogue is in a database):

    components/catalog.csv                       the catalogue (Component_ID, Car_ID, text): setting
                                                 COMPONENT_CATALOG_BLOB, "<container>/<blob>"
    compliance-models/<version>/...              each published classifier (the files `ComplianceModel.save`
                                                 writes; the version is a digest of the weights)
    compliance-models/champion.json              the pointer to the version the job uses: the one published
                                                 last. Not the battery ModelRegistry: its champion rule
                                                 compares backtest metrics a classifier does not have, so a
                                                 person publishes a classifier after reading its held-out
                                                 metrics (`python -m shared compliance publish`).
    compliance/date=YYYY-MM-DD/results.csv       every component's result, needs-review notes included
    compliance/date=YYYY-MM-DD/review_worklist.csv  the words that kept notes in review, most notes first
                                                 (`shared.compliance.review`): what a reviewer answers in the
                                                 site glossary of the next published classifier

With COMPONENT_CATALOG_DSN set (a SQLAlchemy URL), the catalogue is read from that database with
COMPONENT_CATALOG_QUERY instead of from Blob, and checked exactly as a CSV catalogue is.

Alerts are `component_compliance` alerts about the run's day (UTC), one per car with non-compliant parts;
`push_alert` applies the same cooldown, idempotency and delivery rules to them as to battery alerts, so a
second run on the same day names the same alerts and delivers nothing new.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from azure.storage.blob import BlobServiceClient

from shared.adapters.storage import (
    download_bytes,
    download_file,
    download_json,
    ensure_container,
    upload_bytes,
    upload_file,
    upload_json,
)
from shared.bootstrap import Services
from shared.compliance.classifier import (
    COMPONENT_COMPLIANCE,
    MODEL_FILE,
    NEEDS_REVIEW,
    NON_COMPLIANT,
    WEIGHTS_FILE,
    ComplianceModel,
    compliance_alert_content,
    load_model,
    read_components_csv,
    score_components,
)
from shared.compliance.review import review_worklist
from shared.config.names import COMPLIANCE_MODELS_CONTAINER as MODELS_CONTAINER
from shared.config.names import COMPLIANCE_RESULTS_CONTAINER as RESULTS_CONTAINER
from shared.core.alerts import AlertBatch, build_alerts, iso_utc
from shared.core.telemetry import CAR_ID, InputError

CHAMPION_BLOB = "champion.json"
MODEL_FILES = (MODEL_FILE, WEIGHTS_FILE)
_VERSION = re.compile(r"cmp-[0-9a-f]{12}")  # ComplianceModel.version


def compliance_run(model: ComplianceModel, components: pd.DataFrame, now: datetime,
                   action_url: str) -> tuple[pd.DataFrame, AlertBatch]:  # fmt: skip
    """Score the catalogue; return every component's result and one alert per car with non-compliant parts.

    The alerts are about `now`'s UTC day, so every run on one day names the same alerts (idempotency) and
    the next day's run is held back by the cooldown unless the owner was not told for long enough.
    Notes that need review stay in the results and are counted; they are never alerted.
    """
    day = now.astimezone(UTC).date()
    results = score_components(model, components)
    content = compliance_alert_content(results, day, model.version)
    alerts = build_alerts(content, COMPONENT_COMPLIANCE, now, action_url)
    flagged = (results[NON_COMPLIANT] == 1).fillna(False)
    summary = {
        "day": day.isoformat(),
        "scored": len(results),
        "non_compliant": int(flagged.sum()),
        "needs_review": int(results[NEEDS_REVIEW].sum()),
        "cars_affected": int(results.loc[flagged, CAR_ID].nunique()),
        "alerts": len(alerts),
        "model_version": model.version,
    }
    return results, AlertBatch(alerts, summary)


def nightly_compliance_score(services: Services) -> AlertBatch:
    """The timer's job: the published classifier over the catalogue; results to Blob; the alerts returned.

    Without a published classifier or a catalogue there is nothing to do, and the summary says which.
    A catalogue that is malformed raises `InputError` naming what is wrong (the run fails, visibly).
    """
    model = published_model(services)
    if model is None:
        return AlertBatch([], {"scored": 0, "reason": f"no compliance model published in {MODELS_CONTAINER}"})
    components, source = load_catalog(services)
    if components is None:
        return AlertBatch([], {"scored": 0, "reason": f"no component catalogue at {source}"})
    now = services.clock()
    results, batch = compliance_run(model, components, now, services.settings.service_booking_url)
    container = ensure_container(services.blobs, RESULTS_CONTAINER)
    name, worklist_name = (f"date={batch.summary['day']}/{blob}" for blob in ("results.csv", "review_worklist.csv"))
    upload_bytes(container, name, results.to_csv(index=False).encode())
    worklist = review_worklist(components, results, model.lexicon)
    upload_bytes(container, worklist_name, worklist.to_csv(index=False).encode())
    summary = {**batch.summary, "catalogue": source, "results_blob": f"{RESULTS_CONTAINER}/{name}",
               "review_worklist_blob": f"{RESULTS_CONTAINER}/{worklist_name}",
               "review_words": len(worklist)}  # fmt: skip
    return AlertBatch(batch.alerts, summary)


# --- the catalogue --------------------------------------------------------------------------------------


def load_catalog(services: Services) -> tuple[pd.DataFrame | None, str]:
    """The catalogue and where it came from (a blob path, or "database"; never the DSN, which may hold a
    password); None when the catalogue blob does not exist. Checked by `read_components_csv` either way."""
    settings = services.settings
    staged = services.work_dir / "compliance" / "catalog.csv"
    staged.parent.mkdir(parents=True, exist_ok=True)
    if settings.component_catalog_dsn:
        frame = read_catalog_database(settings.component_catalog_dsn, settings.component_catalog_query)
        frame.to_csv(staged, index=False)
        return _checked(staged, "the catalogue database query"), "database"
    container, blob = settings.component_catalog_blob.split("/", 1)
    data = download_bytes(services.blobs.get_container_client(container), blob)
    if data is None:
        return None, settings.component_catalog_blob
    staged.write_bytes(data)
    return _checked(staged, f"blob {settings.component_catalog_blob}"), settings.component_catalog_blob


def read_catalog_database(dsn: str, query: str) -> pd.DataFrame:
    """The rows `query` returns from the database at `dsn` (a SQLAlchemy URL), every column as text."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(dsn)
    try:
        with engine.connect() as connection:
            return pd.read_sql(sqlalchemy.text(query), connection).astype(object)
    finally:
        engine.dispose()


def _checked(path: Path, source: str) -> pd.DataFrame:
    try:
        return read_components_csv(path)
    except InputError as error:
        raise InputError(f"{source}: {str(error).removeprefix(f'{path}: ')}") from None


# --- the published classifier ---------------------------------------------------------------------------


def publish_model(blobs: BlobServiceClient, model_dir: str | Path) -> str:
    """Upload a compliance model directory as `<version>/...` and point champion.json at it; return the version.

    The model is loaded first, so a directory that is not a whole, consistent model is refused (InputError).
    """
    model = load_model(model_dir)
    container = ensure_container(blobs, MODELS_CONTAINER)
    for name in MODEL_FILES:
        upload_file(container, f"{model.version}/{name}", Path(model_dir) / name)
    pointer = {"version": model.version, "published_at": iso_utc(datetime.now(UTC)),
               "metrics": model.metadata.get("metrics")}  # fmt: skip
    upload_json(container, CHAMPION_BLOB, pointer)
    return model.version


def published_model(services: Services) -> ComplianceModel | None:
    """The classifier champion.json points at, downloaded once per version into the work directory."""
    container = services.blobs.get_container_client(MODELS_CONTAINER)
    pointer = download_json(container, CHAMPION_BLOB)
    if pointer is None:
        return None
    version = str(pointer.get("version"))
    if not _VERSION.fullmatch(version):  # it names a local folder: never a path
        raise InputError(f"{MODELS_CONTAINER}/{CHAMPION_BLOB}: not a compliance model version: {version!r}")
    target = services.work_dir / MODELS_CONTAINER / version
    if not all((target / name).is_file() for name in MODEL_FILES):
        target.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FILES:
            download_file(container, f"{version}/{name}", target / name)
    return _load_cached(str(target))


@functools.lru_cache(maxsize=2)
def _load_cached(model_dir: str) -> ComplianceModel:
    """A version's weights never change (the version is their digest), so a loaded model can be kept."""
    return load_model(model_dir)
