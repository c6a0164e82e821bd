"""Model registry on a real Azurite: publish/download, the champion rule, the ETag-guarded pointer, CLI."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from azure.storage.blob import BlobServiceClient

from shared.adapters.registry import (
    CHAMPION_BLOB,
    DECISIONS_BLOB,
    ChampionConflictError,
    ModelRegistry,
    RegistryError,
)
from shared.adapters.storage import blob_service
from shared.cli import main
from shared.core.telemetry import InputError
from shared.models.champion import ChampionRule


def metrics(brier: float, nrmse: float) -> dict:
    return {"nrmse": nrmse, "mae": 0.01, "brier": brier, "average_precision": 0.7,
            "recall_at_threshold": 0.6, "precision_at_threshold": 0.8}  # fmt: skip


def model_dir(root: Path, version: str, brier: float = 0.10, nrmse: float = 0.30, **kind: str) -> Path:
    """A hand-made model directory: metadata.json with backtest metrics (and `model_kind=` if given), plus
    opaque model files."""
    path = root / version
    (path / "booster").mkdir(parents=True)
    baseline = metrics(brier * 2, nrmse * 2)
    metadata = {"version": version, "backtest": {"metrics": {
        "model": metrics(brier, nrmse), "seasonal_naive": baseline, "recent_mean": baseline}}, **kind}  # fmt: skip
    (path / "metadata.json").write_text(json.dumps(metadata))
    (path / "model.txt").write_bytes(f"weights of {version}".encode() + bytes(range(256)))
    (path / "booster" / "part-0.bin").write_bytes(b"\x00" * 1000 + version.encode())
    return path


@pytest.fixture
def service(storage_connection):
    return blob_service(storage_connection)


@pytest.fixture
def registry(service) -> ModelRegistry:
    """A registry in a container of its own, so tests never see each other's champions."""
    return ModelRegistry(service, container=f"models-{uuid.uuid4().hex[:10]}")


# --- publish and download ------------------------------------------------------------------------------


def test_publish_download_round_trip_is_byte_equal(registry, tmp_path):
    source = model_dir(tmp_path / "src", "v1")
    assert registry.publish(source) == "v1"
    copy = registry.download("v1", tmp_path / "cache")
    assert copy == tmp_path / "cache" / "v1"
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert files == ["booster/part-0.bin", "metadata.json", "model.txt"]
    for name in files:
        assert (copy / name).read_bytes() == (source / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["v1"]  # no staging left behind


def test_download_is_cached_per_version(registry, service, tmp_path):
    registry.publish(model_dir(tmp_path / "src", "v1"))
    first = registry.download("v1", tmp_path / "cache")
    service.delete_container(registry.container_name)  # storage gone: only the cache can answer
    assert registry.download("v1", tmp_path / "cache") == first
    assert (first / "model.txt").exists()


def test_versions_are_listed_and_immutable(registry, tmp_path):
    assert registry.versions() == []
    for version in ("2024-02-01", "2024-01-01"):
        registry.publish(model_dir(tmp_path, version))
    assert registry.versions() == ["2024-01-01", "2024-02-01"]
    with pytest.raises(RegistryError, match="already published"):
        registry.publish(tmp_path / "2024-01-01")


def test_a_published_version_is_never_written_again_by_promotions(registry, service, tmp_path):
    """The decision about a version lives beside it: its blobs stay the bytes that were published, with
    the same ETags through later promotions, so a cached download is still a faithful copy."""
    source = model_dir(tmp_path, "v1", brier=0.10)
    published = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    container = service.get_container_client(registry.container_name)

    def stored() -> dict[str, tuple[str, bytes]]:
        return {blob.name.removeprefix("v1/"): (blob.etag, container.download_blob(blob.name).readall())
                for blob in container.list_blobs(name_starts_with="v1/")}  # fmt: skip

    assert registry.promote_if_better(source).promoted
    decided = stored()
    assert {name: content for name, (_, content) in decided.items()} == published
    assert registry.metadata("v1")["promotion"]["promoted"] is True  # read from its own blob
    for version, brier in (("v2", 0.05), ("v3", 0.20)):
        registry.promote_if_better(model_dir(tmp_path, version, brier=brier))
    assert stored() == decided
    copy = registry.download("v1", tmp_path / "cache")
    assert (copy / "metadata.json").read_bytes() == published["metadata.json"]


def test_unknown_version_and_bad_model_dirs_are_named(registry, tmp_path):
    with pytest.raises(RegistryError, match="'nope' is not in container"):
        registry.download("nope", tmp_path / "cache")
    with pytest.raises(InputError, match=r"needs metadata\.json"):
        registry.publish(tmp_path)
    bad = model_dir(tmp_path, "v1")
    (bad / "metadata.json").write_text(json.dumps({"version": "../escape"}))
    with pytest.raises(InputError, match=r'"version" must be'):
        registry.publish(bad)
    (bad / "metadata.json").write_text(json.dumps({"version": "v1"}))
    with pytest.raises(InputError, match="no backtest metrics"):
        registry.promote_if_better(bad)
    assert registry.versions() == []  # nothing half-done was published


def test_no_champion_reads_as_none(registry, tmp_path):
    assert registry.champion_version() is None
    assert registry.champion_metadata() is None
    assert registry.download_champion(tmp_path) is None


# --- promotion -----------------------------------------------------------------------------------------


def test_first_model_becomes_champion_and_the_decision_is_recorded(registry, tmp_path):
    source = model_dir(tmp_path, "v1", brier=0.10)
    decision = registry.promote_if_better(source)
    assert (decision.version, decision.promoted, decision.previous_champion) == ("v1", True, None)
    assert decision.rule == registry.rule.describe()
    assert registry.champion_version() == "v1"

    promotion = registry.metadata("v1")["promotion"]
    assert promotion["rule"] == registry.rule.describe()
    assert promotion["candidate_metrics"]["brier"] == 0.10 and promotion["champion_metrics"] is None
    assert json.loads((source / "metadata.json").read_text())["promotion"] == promotion
    assert registry.champion().record["metrics"]["brier"] == 0.10
    assert registry.champion_metadata()["promotion"] == promotion


def test_a_worse_model_does_not_move_the_pointer_and_a_better_one_does(registry, tmp_path):
    registry.promote_if_better(model_dir(tmp_path, "v1", brier=0.10, nrmse=0.30))
    pointer = registry.champion()

    worse = registry.promote_if_better(model_dir(tmp_path, "v2", brier=0.12, nrmse=0.25))
    assert not worse.promoted and worse.previous_champion == "v1"
    assert "does not beat the champion's 0.1" in worse.reason
    assert registry.champion() == pointer  # same record, same ETag: untouched
    assert registry.metadata("v2")["promotion"]["reason"] == worse.reason
    assert registry.metadata("v2")["promotion"]["champion_metrics"]["brier"] == 0.10

    better = registry.promote_if_better(model_dir(tmp_path, "v3", brier=0.08, nrmse=0.30))
    assert better.promoted and better.previous_champion == "v1"
    assert registry.champion_version() == "v3"
    assert registry.champion_metadata()["promotion"]["previous_champion"] == "v1"

    log = registry.decisions()
    assert [(d["version"], d["promoted"]) for d in log] == [("v1", True), ("v2", False), ("v3", True)]
    assert all(d["rule"] == registry.rule.describe() for d in log)
    assert registry.versions() == ["v1", "v2", "v3"]
    assert DECISIONS_BLOB not in registry.versions()


def test_a_better_model_of_a_kind_the_serving_environment_cannot_load_is_refused(registry, tmp_path):
    """An LSTM needs torch, which neither requirements.txt nor scoring/requirements.txt installs (this test's
    venv has it: the registry reads the files, not the interpreter)."""
    registry.promote_if_better(model_dir(tmp_path, "v1", brier=0.10, nrmse=0.30))
    decision = registry.promote_if_better(model_dir(tmp_path, "lstm-v2", brier=0.05, nrmse=0.20, model_kind="lstm"))
    assert not decision.promoted and registry.champion_version() == "v1"
    assert decision.reason == ("model kind 'lstm' needs torch, which the serving environment "
                               "(requirements.txt, scoring/requirements.txt) does not install")  # fmt: skip
    assert registry.metadata("lstm-v2")["promotion"]["reason"] == decision.reason
    assert registry.decisions()[-1] | {"decided_at": None} == registry.metadata("lstm-v2")["promotion"] | {
        "version": "lstm-v2", "decided_at": None}  # fmt: skip

    with_torch = tmp_path / "requirements-lstm-serving.txt"
    with_torch.write_text("torch==2.5.1  # an endpoint image that serves LSTMs\n")
    serving_lstm = ModelRegistry(registry._service, registry.container_name,
                                 serving_requirements=(*registry.serving_requirements, with_torch))  # fmt: skip
    assert serving_lstm.promote_if_better(model_dir(tmp_path, "lstm-v3", 0.05, 0.20, model_kind="lstm")).promoted


def test_better_primary_with_much_worse_secondary_is_refused(registry, tmp_path):
    registry.promote_if_better(model_dir(tmp_path, "v1", brier=0.10, nrmse=0.30))
    decision = registry.promote_if_better(model_dir(tmp_path, "v2", brier=0.05, nrmse=0.40))
    assert not decision.promoted
    assert "nrmse 0.4 is higher than the allowed 0.306" in decision.reason
    assert registry.champion_version() == "v1"


# --- concurrent promotion ------------------------------------------------------------------------------


def test_stale_pointer_write_is_refused_by_etag(registry, service, tmp_path):
    other = ModelRegistry(service, container=registry.container_name)
    registry.promote_if_better(model_dir(tmp_path, "v1", brier=0.10))
    seen = registry.champion()
    other.promote_if_better(model_dir(tmp_path, "v2", brier=0.05))  # moves the pointer after we read it

    record = {"version": "v3", "metrics": metrics(0.07, 0.3)}
    with pytest.raises(ChampionConflictError, match="pointer changed since it was read \\(champion 'v1'\\)"):
        registry.move_champion(record, expected=seen)
    with pytest.raises(ChampionConflictError, match="\\(no champion\\)"):
        registry.move_champion(record, expected=None)
    assert registry.champion_version() == "v2"


def on_pointer_reads(storage_connection: str, react) -> ModelRegistry:
    """A registry on its own client whose every read of champion.json calls `react(n)` (n = 1, 2, ...) once
    the answer is in, before the registry can act on it: the moment another promotion can slip in between.
    The SDK's own response hook; nothing of the registry is replaced."""
    reads = 0

    def hook(response) -> None:
        nonlocal reads
        request = response.http_request
        if request.method == "GET" and urlsplit(request.url).path.endswith(f"/{CHAMPION_BLOB}"):
            reads += 1
            react(reads)

    return BlobServiceClient.from_connection_string(storage_connection, raw_response_hook=hook)


def test_two_promotions_racing_end_with_the_better_one_and_the_loser_re_decides(registry, storage_connection, tmp_path):
    """Both racers read the pointer (v1) before either writes: a read-then-write without the ETag check
    would let both promote against v1 and the later write win, whichever model it is."""
    registry.promote_if_better(model_dir(tmp_path, "v1", brier=0.10))
    both_read = threading.Barrier(2, timeout=60)

    def first_read_waits_for_the_other(read: int) -> None:
        if read == 1:
            both_read.wait()

    racers = {version: ModelRegistry(on_pointer_reads(storage_connection, first_read_waits_for_the_other),
                                     container=registry.container_name) for version in ("v2", "v3")}  # fmt: skip
    candidates = {"v2": model_dir(tmp_path, "v2", brier=0.05), "v3": model_dir(tmp_path, "v3", brier=0.07)}
    with ThreadPoolExecutor(2) as pool:
        running = {version: pool.submit(racers[version].promote_if_better, candidates[version]) for version in racers}
        decisions = {version: future.result() for version, future in running.items()}

    assert registry.champion_version() == "v2"  # the better model, whichever wrote first
    first_writer = "v2" if decisions["v3"].previous_champion == "v2" else "v3"
    second_writer = "v3" if first_writer == "v2" else "v2"
    assert decisions[first_writer].previous_champion == "v1" and decisions[first_writer].promoted
    assert decisions[second_writer].previous_champion == first_writer  # it decided again, against the winner
    assert decisions[second_writer].promoted == (second_writer == "v2")
    assert sorted(d["version"] for d in registry.decisions()) == ["v1", "v2", "v3"]


def test_a_promotion_that_keeps_losing_races_is_recorded_as_not_promoted(
    registry, service, storage_connection, tmp_path
):
    registry.promote_if_better(model_dir(tmp_path, "v1", brier=0.10))
    other = ModelRegistry(service, container=registry.container_name)

    def another_promotion_moves_the_pointer(read: int) -> None:
        other.promote_if_better(model_dir(tmp_path, f"w{read}", brier=0.10 - 0.01 * read))

    racer = ModelRegistry(on_pointer_reads(storage_connection, another_promotion_moves_the_pointer),
                          container=registry.container_name)  # fmt: skip
    decision = racer.promote_if_better(model_dir(tmp_path, "v9", brier=0.01))  # beats every one of them

    assert not decision.promoted and "moved the champion pointer 3 times" in decision.reason
    assert registry.champion_version() == "w3"
    assert registry.metadata("v9")["promotion"]["promoted"] is False
    assert registry.decisions()[-1]["reason"] == decision.reason


# --- the rule ------------------------------------------------------------------------------------------


def test_rule_decisions_and_errors():
    rule = ChampionRule()
    assert rule.decide(metrics(0.1, 0.3), None) == (True, "no champion yet: the first model becomes champion")
    assert rule.decide(metrics(0.09, 0.306), metrics(0.1, 0.3))[0]  # exactly at the 2% tolerance
    assert not rule.decide(metrics(0.09, 0.3061), metrics(0.1, 0.3))[0]
    assert not rule.decide(metrics(0.1, 0.2), metrics(0.1, 0.3))[0]  # a tie does not beat the champion
    by_precision = ChampionRule(primary="average_precision", secondary="recall_at_threshold")
    assert by_precision.decide({**metrics(0.2, 0.3), "average_precision": 0.8}, metrics(0.1, 0.3))[0]
    assert "average_precision is higher" in by_precision.describe()
    with pytest.raises(InputError, match="candidate's backtest metric 'brier'"):
        rule.decide({"nrmse": 0.3}, None)
    with pytest.raises(InputError, match="champion's backtest metric 'nrmse'"):
        rule.decide(metrics(0.1, 0.3), {"brier": 0.2, "nrmse": float("nan")})
    with pytest.raises(ValueError, match="unknown backtest metric 'auc'"):
        ChampionRule(primary="auc")


# --- CLI -----------------------------------------------------------------------------------------------


def test_cli_promote_list_champion_download(registry, storage_connection, tmp_path, capsys):
    where = ["--connection", storage_connection, "--container", registry.container_name]
    assert main(["registry", "champion", *where]) == 1
    assert main(["registry", "download", *where, "--model-dir", str(tmp_path / "cache")]) == 1
    assert "no champion yet" in capsys.readouterr().err

    assert main(["registry", "promote", *where, "--model-dir", str(model_dir(tmp_path, "v1"))]) == 0
    assert json.loads(capsys.readouterr().out)["promoted"] is True
    assert main(["registry", "publish", *where, "--model-dir", str(model_dir(tmp_path, "v2"))]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": "v2"}
    assert main(["registry", "list", *where]) == 0
    assert capsys.readouterr().out.splitlines() == ["v1\tchampion", "v2"]
    assert main(["registry", "champion", *where]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert main(["registry", "download", *where, "--model-dir", str(tmp_path / "cache")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "v1")
    assert main(["registry", "download", *where, "--model-dir", str(tmp_path / "c"), "--version", "v9"]) == 1
    assert "'v9' is not in container" in capsys.readouterr().err


def test_cli_decisions_prints_every_promotion_decision_oldest_first(registry, storage_connection, tmp_path, capsys):
    where = ["--connection", storage_connection, "--container", registry.container_name]
    assert main(["registry", "promote", *where, "--model-dir", str(model_dir(tmp_path, "v1", brier=0.10))]) == 0
    assert main(["registry", "promote", *where, "--model-dir", str(model_dir(tmp_path, "v2", brier=0.20))]) == 0
    capsys.readouterr()
    assert main(["registry", "decisions", *where]) == 0
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(entry["version"], entry["promoted"]) for entry in logged] == [("v1", True), ("v2", False)]
