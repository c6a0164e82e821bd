"""Model registry: every trained forecaster version in Blob storage, and which one is champion.

Layout of the container (`models`, on Azurite locally):

    <version>/metadata.json, <version>/<model files...>   one folder per published version, written once
    _promotions/<version>.json                             the promotion decision about that version
    champion.json                                          the pointer: version, promoted_at, rule, metrics,
                                                           mlflow_run_id (the training's MLflow run, or null)
    shadow.json                                            the shadow: a candidate that lost the backtest,
                                                           scored beside the champion (never alerting) until
                                                           it wins on matured outcomes or is replaced
    decisions.jsonl                                        append-only log of every promotion decision

A version is immutable once published (its metadata.json is written last and only if absent, and nothing
under `<version>/` is written again: the decision about it has a blob of its own), so a version name is a
cache key: `download` keeps a local copy per version and repeats for free, byte-equal to what was published.
A candidate becomes champion only if the serving environment can load its kind (every package its
kind declares in `shared.models.loader.KINDS` is in requirements.txt or scoring/requirements.txt) and
its backtest beats the champion's under `ChampionRule`; the pointer is moved with an ETag condition,
so two promotions racing each other cannot silently overwrite one another: the loser re-decides
against the new champion.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from packaging.requirements import InvalidRequirement, Requirement

from shared.adapters.storage import (
    download_bytes,
    download_file,
    download_json,
    ensure_container,
    list_blob_names,
    upload_file,
    upload_json,
)
from shared.config.names import MODELS_CONTAINER
from shared.core.telemetry import InputError
from shared.models.champion import (
    DEFAULT_RULE,
    METADATA_FILE,
    VERSION_PATTERN,
    ChampionRule,
    PromotionDecision,
    model_metrics,
    read_model_metadata,
)

CHAMPION_BLOB = "champion.json"
SHADOW_BLOB = "shadow.json"
DECISIONS_BLOB = "decisions.jsonl"
PROMOTIONS_PREFIX = "_promotions/"  # not a version folder: a version starts with a letter or digit
# A version names a blob folder and a local cache folder: no slashes, no dot-only names.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Where a champion is loaded: the Function App (nightly batch score) and the scoring endpoint. Read from the
# files, not from the running interpreter, whose venv (the tests', a developer's) may hold more.
SERVING_REQUIREMENTS = (PROJECT_ROOT / "requirements.txt", PROJECT_ROOT / "scoring" / "requirements.txt")
# How often a promotion re-decides when another promotion moved the pointer first.
PROMOTION_ATTEMPTS = 3


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (unknown version, version already published, ...)."""


class ChampionConflictError(RegistryError):
    """The champion pointer changed between reading it and moving it: another promotion won the race."""


@dataclass(frozen=True)
class Champion:
    """The champion pointer as read: its record (champion.json) and the ETag that guards moving it."""

    version: str
    record: dict
    etag: str


class ModelRegistry:
    """Published model versions and the champion pointer, in one Blob container."""

    def __init__(
        self,
        blob_service: BlobServiceClient,
        container: str = MODELS_CONTAINER,
        rule: ChampionRule = DEFAULT_RULE,
        serving_requirements: tuple[Path, ...] = SERVING_REQUIREMENTS,
    ) -> None:
        self.container_name = container
        self._service = blob_service
        self._blobs = blob_service.get_container_client(container)
        self.rule = rule
        self.serving_requirements = serving_requirements

    # --- versions -----------------------------------------------------------------------------------

    def publish(self, model_dir: str | Path) -> str:
        """Upload a model directory as `<version>/...` and return the version (from its metadata.json).

        The model files go first and metadata.json last, written only if absent: a version is visible
        (in `versions()`, to `download`) only when complete, and a published version is never replaced.
        """
        model_dir = Path(model_dir)
        version = read_model_metadata(model_dir)["version"]
        container = ensure_container(self._service, self.container_name)
        metadata_blob = f"{version}/{METADATA_FILE}"
        if container.get_blob_client(metadata_blob).exists():
            raise RegistryError(f"model version {version!r} is already published; versions are immutable")
        for path in sorted(model_dir.rglob("*")):
            relative = path.relative_to(model_dir).as_posix()
            if path.is_file() and relative != METADATA_FILE:
                upload_file(container, f"{version}/{relative}", path)
        try:
            upload_file(container, metadata_blob, model_dir / METADATA_FILE, overwrite=False)
        except ResourceExistsError:
            raise RegistryError(f"model version {version!r} was published by another run meanwhile") from None
        return version

    def versions(self) -> list[str]:
        """Every completely published version, in name order."""
        suffix = f"/{METADATA_FILE}"
        return sorted(
            name.removesuffix(suffix)
            for name in list_blob_names(self._blobs)
            if name.endswith(suffix) and name.count("/") == 1
        )

    def metadata(self, version: str) -> dict:
        """The stored metadata.json of a published version, with its "promotion" record once decided."""
        metadata = download_json(self._blobs, f"{_checked_version(version)}/{METADATA_FILE}")
        if metadata is None:
            raise self._not_published(version)
        promotion = download_json(self._blobs, _promotion_blob(version))
        return metadata if promotion is None else {**metadata, "promotion": promotion}

    def download(self, version: str, dest_dir: str | Path) -> Path:
        """The version's files in `dest_dir/<version>/`, downloaded only if that folder is not there yet.

        Files land in a staging folder that is renamed into place when complete, so a folder named after
        a version is always a whole copy, even with several workers sharing one cache directory.
        """
        target = Path(dest_dir) / _checked_version(version)
        if target.is_dir():
            return target
        names = list_blob_names(self._blobs, prefix=f"{version}/")
        if f"{version}/{METADATA_FILE}" not in names:
            raise self._not_published(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
        try:
            for name in names:
                path = staging / name.removeprefix(f"{version}/")
                path.parent.mkdir(parents=True, exist_ok=True)
                download_file(self._blobs, name, path)
            try:
                staging.rename(target)
            except OSError:
                if not target.is_dir():  # not another worker finishing first: a real failure
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    # --- champion -----------------------------------------------------------------------------------

    def champion(self) -> Champion | None:
        """The champion pointer with its ETag, or None when no model has been promoted yet."""
        blob = self._blobs.get_blob_client(CHAMPION_BLOB)
        try:
            download = blob.download_blob()
        except ResourceNotFoundError:
            return None
        record = json.loads(download.readall())
        return Champion(version=record["version"], record=record, etag=download.properties.etag)

    def champion_version(self) -> str | None:
        """The champion's version, or None when there is none."""
        champion = self.champion()
        return None if champion is None else champion.version

    def champion_metadata(self) -> dict | None:
        """The champion's stored metadata.json, or None when there is no champion."""
        champion = self.champion()
        return None if champion is None else self.metadata(champion.version)

    def download_champion(self, dest_dir: str | Path) -> Path | None:
        """The champion's files in `dest_dir/<version>/` (cached per version), or None without a champion."""
        champion = self.champion()
        return None if champion is None else self.download(champion.version, dest_dir)

    def move_champion(self, record: dict, expected: Champion | None) -> None:
        """Point champion.json at `record["version"]`, only if the pointer is still `expected`.

        `expected=None` means "there is no champion yet" (If-None-Match: *); otherwise the write carries
        If-Match with the ETag read. Either way a pointer moved by someone else in between raises
        `ChampionConflictError` instead of being overwritten.
        """
        data = json.dumps(record, indent=2).encode()
        blob = self._blobs.get_blob_client(CHAMPION_BLOB)
        try:
            if expected is None:
                blob.upload_blob(data, overwrite=False)
            else:
                condition = MatchConditions.IfNotModified
                blob.upload_blob(data, overwrite=True, etag=expected.etag, match_condition=condition)
        except (ResourceExistsError, ResourceModifiedError):
            was = "no champion" if expected is None else f"champion {expected.version!r}"
            raise ChampionConflictError(
                f"cannot make {record['version']!r} champion: the pointer changed since it was read ({was}); "
                "another promotion moved it"
            ) from None

    # --- shadow -------------------------------------------------------------------------------------

    def keep_shadow(self, version: str, reason: str) -> None:
        """Make a published version the shadow (replacing the previous one): scored nightly, judged on matured
        outcomes against the champion (shared/handlers/monitoring.py)."""
        self.metadata(version)  # a published version only
        upload_json(self._blobs, SHADOW_BLOB, {"version": version, "kept_at": _utc_now(), "reason": reason})

    def shadow_version(self) -> str | None:
        """The shadow's version, or None when there is none (or it has become the champion)."""
        record = download_json(self._blobs, SHADOW_BLOB)
        version = None if record is None else record["version"]
        return None if version is None or version == self.champion_version() else version

    def download_shadow(self, dest_dir: str | Path) -> Path | None:
        """The shadow's files in `dest_dir/<version>/` (cached per version), or None without a shadow."""
        version = self.shadow_version()
        return None if version is None else self.download(version, dest_dir)

    def promote_shadow_if_better(self, shadow_matured: dict, champion_matured: dict) -> PromotionDecision:
        """The champion rule on matured outcomes: the shadow replaces the champion if its figures over the same
        matured days beat the champion's. The pointer carries the shadow's own backtest metrics (what later
        candidates' backtests are compared with) and the matured figures that decided; the decision is logged
        as every promotion is. A pointer moved meanwhile leaves it unpromoted (the next night decides again)."""
        champion, version = self.champion(), self.shadow_version()
        if champion is None or version is None:
            raise RegistryError("a matured comparison needs both a champion and a shadow")
        promoted, reason = self.rule.decide(shadow_matured, champion_matured)
        reason = f"on matured outcomes: {reason}"
        metadata = self.metadata(version)
        if promoted:
            pointer = {"version": version, "promoted_at": _utc_now(), "rule": self.rule.describe(), "reason": reason,
                       "previous_champion": champion.version, "metrics": model_metrics(metadata, version),
                       "matured_metrics": shadow_matured, "mlflow_run_id": metadata.get("mlflow_run_id")}  # fmt: skip
            try:
                self.move_champion(pointer, champion)
            except ChampionConflictError as error:
                promoted, reason = False, str(error)
        self._append_decision({"version": version, "decided_at": _utc_now(), "promoted": promoted, "reason": reason,
                               "basis": "matured", "rule": self.rule.describe(), "previous_champion": champion.version,
                               "candidate_metrics": shadow_matured, "champion_metrics": champion_matured})  # fmt: skip
        return PromotionDecision(version, promoted, reason, champion.version, self.rule.describe())

    def promote_if_better(self, model_dir: str | Path) -> PromotionDecision:
        """Publish the model, decide against the current champion, and move the pointer if it wins.

        The decision (rule, reason, both metric sets, time) is stored as `_promotions/<version>.json` (read
        back by `metadata` under "promotion"; the version's own files are never rewritten), written into the
        local metadata.json under "promotion" and appended to decisions.jsonl, promoted or not. If another
        promotion moves the pointer between our read and our write, the ETag check fails and we decide
        again against the new champion; after PROMOTION_ATTEMPTS lost races the model is recorded as not
        promoted, with that reason. A model whose kind needs a package the serving environment lacks is
        published but never promoted, whatever its backtest: the reason names the packages.
        """
        from shared.models.loader import kind_of, missing_packages  # lightgbm: only when a model is promoted

        model_dir = Path(model_dir)
        metadata = read_model_metadata(model_dir)
        candidate = model_metrics(metadata, str(model_dir / METADATA_FILE))
        missing = missing_packages(metadata, requirement_names(self.serving_requirements))
        version = self.publish(model_dir)
        for _ in range(PROMOTION_ATTEMPTS):
            champion = self.champion()
            champion_metrics = None if champion is None else champion.record["metrics"]
            if missing:
                promoted, reason = (
                    False,
                    (
                        f"model kind {kind_of(metadata)!r} needs {', '.join(missing)}, which the serving environment "
                        f"({', '.join(_shown(path) for path in self.serving_requirements)}) does not install"
                    ),
                )
            else:
                promoted, reason = self.rule.decide(candidate, champion_metrics)
            promotion = {
                "decided_at": _utc_now(),
                "promoted": promoted,
                "reason": reason,
                "rule": self.rule.describe(),
                "previous_champion": None if champion is None else champion.version,
                "candidate_metrics": candidate,
                "champion_metrics": champion_metrics,
            }
            # Stored before the pointer moves, so the new champion's decision can always be read.
            upload_json(self._blobs, _promotion_blob(version), promotion)
            if not promoted:
                break
            pointer = {"version": version, "promoted_at": promotion["decided_at"], "rule": promotion["rule"],
                       "reason": reason, "previous_champion": promotion["previous_champion"],
                       "metrics": candidate, "mlflow_run_id": metadata.get("mlflow_run_id")}  # fmt: skip
            try:
                self.move_champion(pointer, champion)
                break
            except ChampionConflictError:
                continue
        else:
            reason = f"not promoted: other promotions moved the champion pointer {PROMOTION_ATTEMPTS} times"
            promotion = {**promotion, "promoted": False, "reason": reason}
            upload_json(self._blobs, _promotion_blob(version), promotion)
        (model_dir / METADATA_FILE).write_text(json.dumps({**metadata, "promotion": promotion}, indent=2))
        self._append_decision({"version": version, **promotion})
        return PromotionDecision(version, promotion["promoted"], promotion["reason"],
                                 promotion["previous_champion"], promotion["rule"])  # fmt: skip

    def decisions(self) -> list[dict]:
        """Every promotion decision ever made, oldest first (the decisions.jsonl log)."""
        log = download_bytes(self._blobs, DECISIONS_BLOB) or b""
        return [json.loads(line) for line in log.decode().splitlines() if line]

    def _not_published(self, version: str) -> RegistryError:
        return RegistryError(f"model version {version!r} is not in container {self.container_name!r}")

    def _append_decision(self, entry: dict) -> None:
        """Append one JSON line; an append blob takes concurrent appends without losing any."""
        blob = self._blobs.get_blob_client(DECISIONS_BLOB)
        line = (json.dumps(entry) + "\n").encode()
        try:
            blob.append_block(line)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):  # another promotion created it first
                blob.create_append_blob(match_condition=MatchConditions.IfMissing)
            blob.append_block(line)


def _promotion_blob(version: str) -> str:
    return f"{PROMOTIONS_PREFIX}{version}.json"


def requirement_names(paths: tuple[Path, ...]) -> set[str]:
    """The distribution names the requirement files install (their own lines; options such as -r skipped)."""
    names = set()
    for path in paths:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            try:
                names.add(Requirement(line).name)
            except InvalidRequirement:
                raise InputError(f"{path}: cannot read requirement {line!r}") from None
    return names


def _shown(path: Path) -> str:
    return path.relative_to(PROJECT_ROOT).as_posix() if path.is_relative_to(PROJECT_ROOT) else str(path)


def _checked_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise InputError(f"not a model version: {version!r}")
    return version


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
