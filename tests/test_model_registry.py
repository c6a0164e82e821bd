"""Model registry on a real Azurite: publish/download, the champion rule, the ETag-guarded pointer, CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from shared.adapters.registry import DECISIONS_BLOB, ChampionConflictError, ModelRegistry, RegistryError
from shared.adapters.storage import blob_service
from shared.cli import main
from shared.core.telemetry import InputError
from shared.models.champion import ChampionRule


def metrics(brier: float, nrmse: float) -> dict:
    return {"nrmse": nrmse, "mae": 0.01, "brier": brier, "average_precision": 0.7,
            "recall_at_threshold": 0.6, "precision_at_threshold": 0.8}  # fmt: skip


def model_dir(root: Path, version: str, brier: float = 0.10, nrmse: float = 0.30) -> Path:
    """A hand-made model directory: metadata.json with backtest metrics, plus opaque model files."""
    path = root / version
    (path / "booster").mkdir(parents=True)
    baseline = metrics(brier * 2, nrmse * 2)
    metadata = {"version": version, "backtest": {"metrics": {
        "model": metrics(brier, nrmse), "seasonal_naive": baseline, "recent_mean": baseline}}}  # fmt: skip
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
    champion_copy = registry.download_champion(tmp_path / "cache")
    assert json.loads((champion_copy / "metadata.json").read_text())["promotion"]["promoted"] is True


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


class ReadsAStaleChampion(ModelRegistry):
    """A registry whose first `stale_reads` looks at the pointer predate a concurrent promotion."""

    def __init__(self, *args, stale, stale_reads: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._stale_reads = [stale] * stale_reads

    def champion(self):
        return self._stale_reads.pop() if self._stale_reads else super().champion()


def test_the_loser_of_a_race_re_decides_against_the_new_champion(registry, service, tmp_path):
    registry.promote_if_better(model_dir(tmp_path, "v1", brier=0.10))
    stale = registry.champion()
    registry.promote_if_better(model_dir(tmp_path, "v2", brier=0.05))  # the concurrent winner

    racer = ReadsAStaleChampion(service, container=registry.container_name, stale=stale, stale_reads=1)
    decision = racer.promote_if_better(model_dir(tmp_path, "v3", brier=0.07))  # beats v1, not v2
    assert not decision.promoted and decision.previous_champion == "v2"
    assert registry.champion_version() == "v2"
    assert registry.metadata("v3")["promotion"]["previous_champion"] == "v2"


def test_a_promotion_that_keeps_losing_races_is_recorded_as_not_promoted(registry, service, tmp_path):
    registry.promote_if_better(model_dir(tmp_path, "v1", brier=0.10))
    stale = registry.champion()
    registry.promote_if_better(model_dir(tmp_path, "v2", brier=0.05))

    racer = ReadsAStaleChampion(service, container=registry.container_name, stale=stale, stale_reads=99)
    decision = racer.promote_if_better(model_dir(tmp_path, "v3", brier=0.07))
    assert not decision.promoted and "moved the champion pointer 3 times" in decision.reason
    assert registry.champion_version() == "v2"
    assert registry.metadata("v3")["promotion"]["promoted"] is False
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
