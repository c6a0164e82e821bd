"""Ingest: what the `score_telemetry` Event Hub trigger does with one batch of car telemetry.

validate → dead-letter the bad events → archive the good records → note each car's battery (a replacement
or counter reset retracts the old battery's alerts: shared/handlers/lifecycle.py) → update each battery's rolling window
→ ONE scoring call for the batch → alerts for the queue. Nothing a car sent is dropped: a bad event is
dead-lettered with its reason, an item the endpoint cannot score is recorded with the endpoint's reason,
and a batch the endpoint cannot score is parked for `rescore_parked`.

Every step before scoring is idempotent, because the Functions retry policy re-runs the whole batch when
scoring raises: the archive and dead-letter blobs are named by the batch (the same events give the same
names, so a retry overwrites rather than duplicates), and the battery-state merge is keyed by day.

When the endpoint stays down (`ScoringUnavailable` after the client's own retries) the batch raises, so
the retry policy runs it again later; on the policy's last attempt (`final_attempt`) the scoring request
is parked in Blob instead, with its reason, because after that the host checkpoints past the batch.
A request the endpoint refuses outright (`ScoringRejected`) is parked at once: running the same batch
again would be refused the same way, while a fixed or redeployed endpoint can score it later.
`rescore_parked` tries the parked requests in turn and dead-letters one after `MAX_PARKED_REFUSALS`
refusals, so a request the endpoint will never take cannot hold up the others.

Overlap. The batteries of a batch are merged and scored in chunks of at most the scoring client's
`chunk_size` (one request each): while the endpoint, in its own process, scores one chunk, this process
merges the next chunk's state and builds its request, since waiting on the HTTP response releases the
GIL. Once a chunk finds the endpoint unavailable, the later chunks are merged but not sent (they would
only wait out the same retries), and their items share that chunk's fate: raised, or parked together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from azure.storage.blob import ContainerClient

from shared.adapters import feedback_store, observability
from shared.adapters.archive import archive_telemetry, dead_letter
from shared.adapters.battery_state import update_states
from shared.adapters.scoring_client import ScoringError, ScoringRejected, ScoringUnavailable
from shared.adapters.storage import download_bytes, ensure_container, upload_json
from shared.bootstrap import Services
from shared.config.names import BATTERY_STATE_TABLE as STATE_TABLE
from shared.config.names import DEADLETTER_CONTAINER, PARKED_CONTAINER
from shared.core.alerts import AS_OF, MODEL_VERSION, REASONS, AlertBatch
from shared.core.battery_window import histories_for_request
from shared.core.events import parse_events
from shared.core.feedback import batteries_in_cars
from shared.core.telemetry import BATTERY_ID, CAR_ID, DATE, LIFETIME_CYCLES, RATED_CYCLES
from shared.handlers.lifecycle import alerts_of_scores, note_batteries

# Days of history kept per battery and sent to the endpoint. The model reads its last `window_days`
# (91 today, in its metadata); the rest is headroom so a retrained model with a longer window scores
# well from its first night, without the streaming state having to be rebuilt.
STATE_WINDOW_DAYS = 120

PARKED_PREFIX = "telemetry/"
PARKED_DEADLETTER_PREFIX = "parked/"  # in the dead-letter container: parked requests refused for good
# Refusals after which a parked request is dead-lettered: a 4xx repeated three times, 10 minutes apart,
# is the request, not a passing fault (a redeployed endpoint gets two more chances at it).
MAX_PARKED_REFUSALS = 3
SCORING_ERRORS_PREFIX = "scoring/"
UNKNOWN_MODEL = "unknown"  # an endpoint that does not say which model answered

log = logging.getLogger(__name__)


def ingest_telemetry(services: Services, bodies: list[bytes], metadata: list[dict], final_attempt: bool) -> AlertBatch:
    """Validate, archive and score one Event Hub batch; the alerts to queue and a summary for the log.

    `metadata[i]` describes `bodies[i]` (sequence_number, partition_key, offset, enqueued_time) and is
    kept with its dead letters. Raises `ScoringUnavailable` when the endpoint is down and this is not
    the final attempt, and `battery_state.StateConflictError` when other writers kept winning the race
    for some batteries' state (both: the retry policy runs the batch again).
    """
    now = services.clock()
    batch = batch_id(bodies, metadata)
    good, bad = parse_events(bodies, metadata, received=now, max_age_days=services.settings.telemetry_max_age_days)
    dead_letter(services.blobs, bad, now, batch)
    archive_telemetry(services.blobs, good, now, batch)
    summary: dict[str, Any] = {"batch_id": batch, "events": len(bodies), "records": len(good),
                               "dead_lettered": len(bad),
                               "batteries_changed": note_batteries(services, good, now)}  # fmt: skip
    if not good.empty:  # a new Battery_ID on a car closes its old battery's outcome label
        summary["replacements_labelled"] = feedback_store.record_replacements(services.tables, batteries_in_cars(good),
                                                                              now)  # fmt: skip
    if good.empty:
        return AlertBatch([], summary | {"batteries": 0, "alerts": 0})
    chunks = merge_and_score(services, good)
    summary["batteries"] = sum(len(chunk.items) for chunk in chunks)
    unscored = [item for chunk in chunks if chunk.error is not None for item in chunk.items]
    if unscored:
        error = next(chunk.error for chunk in chunks if chunk.error is not None)
        if isinstance(error, ScoringUnavailable) and not final_attempt:
            raise error
        summary["parked"] = park_request(services, batch, unscored, error, now)
        summary["parked_records"] = int(good[BATTERY_ID].astype(str).isin([str(i[BATTERY_ID]) for i in unscored]).sum())
    alerts, errors = [], 0
    for chunk in chunks:
        if chunk.error is None:
            chunk_alerts, chunk_errors = alerts_from_scored(services, batch, chunk.items, chunk.scores, now)
            alerts, errors = alerts + chunk_alerts, errors + chunk_errors
    return AlertBatch(alerts, summary | {"alerts": len(alerts), "scoring_errors": errors})


@dataclass(frozen=True)
class ScoredChunk:
    """One scoring request of a batch: its items, and their scores (`score_items`) or why it has none."""

    items: list[dict]
    scores: pd.DataFrame | None
    error: ScoringError | None


def merge_and_score(services: Services, good: pd.DataFrame) -> list[ScoredChunk]:
    """Merge the good records into their batteries' state and score the merged windows, chunk by chunk,
    the endpoint scoring one chunk while the next is merged (see "Overlap" above).

    Scoring errors are returned per chunk (a chunk not sent because an earlier one found the endpoint
    unavailable carries that error too); anything else raises, once the request in flight has ended.
    """
    state_table = services.tables.get_table_client(STATE_TABLE)
    unavailable: list[ScoringUnavailable] = []  # the scorer has one thread: chunks are scored in order

    def score(items: list[dict]) -> pd.DataFrame | ScoringError:
        if unavailable:
            return unavailable[0]
        try:
            return score_items(services, items)
        except ScoringError as error:
            if isinstance(error, ScoringUnavailable):
                unavailable.append(error)
            return error

    sent: list[tuple[list[dict], Future]] = []
    scorer = ThreadPoolExecutor(1, thread_name_prefix="score-chunk")
    try:
        for records in _battery_chunks(good, services.scoring.chunk_size):
            windows = update_states(state_table, records, STATE_WINDOW_DAYS, cache=services.state_cache)
            items = histories_for_request(windows)
            sent.append((items, scorer.submit(score, items)))
        results = [(items, future.result()) for items, future in sent]
    finally:
        scorer.shutdown(cancel_futures=True)  # after an error: the request in flight ends, the rest never start
    return [
        ScoredChunk(items, None, result) if isinstance(result, ScoringError) else ScoredChunk(items, result, None)
        for items, result in results
    ]


def _battery_chunks(records: pd.DataFrame, most: int) -> Iterator[pd.DataFrame]:
    """The records split by battery into the fewest chunks of at most `most` batteries, of even sizes
    (500 batteries in chunks of at most 250 are 2 × 250; 300 are 2 × 150, not 250 + 50)."""
    battery, batteries = pd.factorize(records[BATTERY_ID], use_na_sentinel=False)
    size = math.ceil(len(batteries) / max(1, math.ceil(len(batteries) / most)))
    chunk = battery // size
    for number in range(int(chunk.max()) + 1):
        yield records[chunk == number]


def rescore_parked(services: Services) -> AlertBatch:
    """Score the requests parked while the endpoint was down or refused them; their alerts for the queue.

    Requests are tried in turn: fewest attempts first, then oldest, so one that keeps failing goes to the
    back and cannot hold up the others. A request scored is deleted from the parking container. One that
    fails keeps its place with one more attempt and the new reason; a *refusal* (the endpoint refused it,
    `ScoringRejected`, or was unavailable for it in a run where it scored another) counts towards
    `MAX_PARKED_REFUSALS`, after which the request moves to the dead-letter container, so a request the
    endpoint will never take is recorded instead of retried for ever. When the endpoint is unavailable
    the run stops there: the others would only wait out the client's retries against the same endpoint.
    """
    container = ensure_container(services.blobs, PARKED_CONTAINER)
    names = _parked_in_turn(container)
    alerts: list[dict] = []
    summary: dict[str, Any] = {"parked": len(names), "rescored": 0, "dead_lettered": 0, "alerts": 0,
                               "scoring_errors": 0}  # fmt: skip
    for name in names:
        data = download_bytes(container, name)
        if data is None:  # another run (or an operator) removed it since the listing
            continue
        now = services.clock()
        parked, unreadable = _read_parked(data)
        if unreadable is not None:
            _dead_letter_parked(services, container, name, {"body": data.decode("utf-8", "replace")}, unreadable, now)
            summary["dead_lettered"] += 1
            continue
        try:
            scores = score_items(services, parked["items"])
        except ScoringError as error:
            refused = isinstance(error, ScoringRejected) or summary["rescored"] > 0
            parked |= {"attempts": parked.get("attempts", 0) + 1, "refusals": parked.get("refusals", 0) + refused,
                       "reason": _reason(error), "last_attempt_at": now.isoformat()}  # fmt: skip
            if parked["refusals"] >= MAX_PARKED_REFUSALS:
                reason = f"refused {parked['refusals']} times, the last: {_reason(error)}"
                _dead_letter_parked(services, container, name, parked, reason, now)
                summary["dead_lettered"] += 1
            else:
                _store_parked(container, name, parked)
            if isinstance(error, ScoringUnavailable):
                summary["reason"] = _reason(error)
                break
            continue
        batch_alerts, errors = alerts_from_scored(services, parked["batch_id"], parked["items"], scores, now)
        container.delete_blob(name)
        alerts += batch_alerts
        summary["rescored"] += 1
        summary["scoring_errors"] += errors
    summary["still_parked"] = summary["parked"] - summary["rescored"] - summary["dead_lettered"]
    summary["alerts"] = len(alerts)
    return AlertBatch(alerts, summary)


def _parked_in_turn(container: ContainerClient) -> list[str]:
    """The parked requests' blob names in the order `rescore_parked` tries them: fewest attempts first
    (the count is kept in each blob's metadata, so ordering them reads no request), then oldest."""
    blobs = container.list_blobs(name_starts_with=PARKED_PREFIX, include=["metadata"])
    attempts = {blob.name: (blob.metadata or {}).get("attempts", "0") for blob in blobs}
    return sorted(attempts, key=lambda name: (int(attempts[name]) if attempts[name].isdigit() else 0, name))


def _read_parked(data: bytes) -> tuple[dict, None] | tuple[None, str]:
    """A parked request, or why it cannot be one (an operator's edit, a truncated write)."""
    try:
        parked = json.loads(data)
    except ValueError as error:
        return None, f"unreadable parked request: {error}"
    if not (isinstance(parked, dict) and isinstance(parked.get("batch_id"), str) and parked.get("items")
            and isinstance(parked["items"], list)):  # fmt: skip
        return None, "unreadable parked request: no batch_id and items"
    return parked, None


def _store_parked(container: ContainerClient, name: str, parked: dict) -> None:
    upload_json(container, name, parked, metadata={"attempts": str(parked["attempts"])})


def _dead_letter_parked(
    services: Services, container: ContainerClient, name: str, parked: dict, reason: str, now: datetime
) -> str:
    """Move a parked request to `deadletter/parked/…` with why; returns the dead letter's blob name."""
    dead_name = f"{PARKED_DEADLETTER_PREFIX}date={now:%Y-%m-%d}/{name.rsplit('/', 1)[-1]}"
    document = parked | {"dead_lettered_at": now.isoformat(), "reason": reason, "parked_as": name}
    upload_json(ensure_container(services.blobs, DEADLETTER_CONTAINER), dead_name, document)
    container.delete_blob(name)
    log.warning("dead-lettered parked request %s: %s", name, reason)
    return dead_name


def score_items(services: Services, items: Sequence[dict]) -> pd.DataFrame:
    """One scoring call for a request's items: a scores table (shared.core.alerts.SCORE_COLUMNS, plus
    model_version, error and, when the endpoint gives them, reasons), row i for item i.

    Each prediction is joined with its item's newest history day, by position: the contract keeps the
    request's order, and this checks it did, since a shifted row would alert the wrong car.
    Raises `ScoringUnavailable` or `ScoringRejected` (a response that breaks the contract included).
    """
    frame = pd.DataFrame(list(services.scoring.score(items)))
    sent = [str(item[BATTERY_ID]) for item in items]
    if frame.get(BATTERY_ID, pd.Series(dtype=object)).astype(str).tolist() != sent:
        raise ScoringRejected(f"{services.scoring.scoring_uri} answered predictions that do not follow the "
                              "request's batteries in order", status=200, reason="response outside the contract",
                              attempts=1)  # fmt: skip
    latest = [item["history"][-1] for item in items]
    frame[CAR_ID] = [item[CAR_ID] for item in items]
    frame[RATED_CYCLES] = pd.Series([item[RATED_CYCLES] for item in items], dtype="float64")
    frame[LIFETIME_CYCLES] = pd.Series([row[LIFETIME_CYCLES] for row in latest], dtype="float64")
    frame[AS_OF] = [row[DATE] for row in latest]
    error = frame["error"] if "error" in frame else pd.Series(None, index=frame.index, dtype=object)
    frame["error"] = error.astype(object).where(error.notna(), None)
    observability.count_scored(int(error.isna().sum()))
    frame[MODEL_VERSION] = frame[MODEL_VERSION].astype(object).fillna(UNKNOWN_MODEL)
    if REASONS in frame:
        frame[REASONS] = frame[REASONS].astype(object)
    return frame


def alerts_from_scored(
    services: Services, batch: str, items: Sequence[dict], scores: pd.DataFrame, now: datetime
) -> tuple[list[dict], int]:
    """The alerts of a scored request, and how many of its items the endpoint could not score.

    Each battery's alert is about its newest day in the request (As_Of): the day the streaming path
    saw, which is also the day the nightly batch scores, so both name the same alert. Items with an
    `error` are recorded in the dead-letter container with the endpoint's reason, never alerted.
    """
    failed = scores["error"].notna().to_numpy(bool)
    if failed.any():
        record_scoring_errors(services, batch, [items[i] for i in np.flatnonzero(failed)],
                              scores.loc[failed, "error"].astype(str).tolist(), now)  # fmt: skip
    return alerts_of_scores(services, scores[~failed], now), int(failed.sum())


def park_request(services: Services, batch: str, items: list[dict], error: ScoringError, now: datetime) -> str:
    """Keep a scoring request the endpoint could not score, with why, for `rescore_parked`; its blob name."""
    container = ensure_container(services.blobs, PARKED_CONTAINER)
    name = f"{PARKED_PREFIX}date={now:%Y-%m-%d}/{batch}.json"
    document = {"batch_id": batch, "parked_at": now.isoformat(), "attempts": 1,
                "refusals": int(isinstance(error, ScoringRejected)), "reason": _reason(error),
                "last_attempt_at": now.isoformat(), "items": items}  # fmt: skip
    _store_parked(container, name, document)
    log.warning("parked %d batteries of batch %s: %s", len(items), batch, document["reason"])
    return f"{PARKED_CONTAINER}/{name}"


def record_scoring_errors(services: Services, batch: str, items: list[dict], reasons: list[str], now: datetime) -> str:
    """Keep the items the endpoint answered with an `error` (and the error) in the dead-letter container.

    Named by batch, so a re-run of the batch overwrites its own record. Returns the blob name.
    """
    container = ensure_container(services.blobs, DEADLETTER_CONTAINER)
    name = f"{SCORING_ERRORS_PREFIX}date={now:%Y-%m-%d}/{batch}.json"
    errors = [{"reason": reason, "item": item} for reason, item in zip(reasons, items, strict=True)]
    document = {"written_at": now.isoformat(), "batch_id": batch, "count": len(items), "errors": errors}
    upload_json(container, name, document)
    return name


def batch_id(bodies: Sequence[bytes], metadata: Sequence[dict]) -> str:
    """A name for an Event Hub batch that is the same every time the same events are delivered.

    First and last sequence number (for people reading the blob names) and a hash of every event's
    sequence number, partition key and body (so batches of two partitions, whose sequence numbers
    overlap, never share a name).
    """
    digest = hashlib.sha256()
    for body, meta in zip(bodies, metadata, strict=True):
        digest.update(json.dumps([meta.get("sequence_number"), meta.get("partition_key")]).encode())
        digest.update(hashlib.sha256(body).digest())
    sequence = [meta.get("sequence_number") for meta in metadata if meta.get("sequence_number") is not None]
    span = f"{min(sequence)}-{max(sequence)}-" if sequence else ""
    return f"{span}{digest.hexdigest()[:16]}"


def _reason(error: ScoringError) -> str:
    return f"{type(error).__name__}: {error}"
