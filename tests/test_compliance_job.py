"""The nightly compliance timer: the real function_app on Azurite, a classifier trained here, a small
catalogue, push_alert draining the queue into the head-unit simulator; and the same on local files."""

from __future__ import annotations

import contextlib
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from _services import app_harness
from azure.core.exceptions import ResourceNotFoundError

from shared.adapters.storage import download_bytes, ensure_container, upload_bytes
from shared.cli import main
from shared.compliance.classifier import COMPONENT_COMPLIANCE, TrainingParams, train_classifier
from shared.config.settings import SettingsError, load_settings
from shared.core.alerts import validate_alert
from shared.core.telemetry import InputError
from shared.devtools.azurite import free_port
from shared.devtools.fleet_simulator import simulate_components
from shared.handlers.compliance import MODELS_CONTAINER, RESULTS_CONTAINER, publish_model

DAY = "2016-03-11"  # the harness clock's day (NIGHT)
CATALOGUE = pd.DataFrame(
    [
        ("P-1", "CAR-A", "Plastic housing, excellent condition, built in 2012"),
        ("P-2", "CAR-A", "Good condition carbon fiber component manufactured in 2010"),
        ("P-3", "CAR-B", "Manufactured in 1985 made of steel in fair condition"),
        ("P-4", "CAR-B", "Cast iron bracket made in 2003, good condition"),
        ("P-5", "CAR-C", "Steel bolt in good condition made in 1995"),
        ("P-6", "CAR-C", "Copper wiring in excellent condition made 2015"),
        ("P-7", "CAR-D", "aluminum, good condition, mfd 2008"),
        ("P-8", "CAR-D", ""),
        ("P-9", "CAR-D", "asdf qwerty zxcv"),
    ],
    columns=["Component_ID", "Car_ID", "text"],
)
NON_COMPLIANT_PARTS = {"CAR-A": "P-1", "CAR-B": "P-3,P-4"}
NEEDS_REVIEW_PARTS = ["P-8", "P-9"]
JOB_CONTAINERS = ("components", MODELS_CONTAINER, RESULTS_CONTAINER)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small classifier trained on simulated notes (a couple of seconds)."""
    components = simulate_components(np.array([f"CAR-{k:05d}" for k in range(1, 201)]), seed=3)
    folder = tmp_path_factory.mktemp("compliance-model")
    train_classifier(components, TrainingParams(epochs=10)).model.save(folder)
    return folder


@pytest.fixture
def app(storage_connection, monkeypatch, tmp_path):
    """function_app on empty storage; the compliance path never calls the scoring endpoint (none runs)."""
    with app_harness(storage_connection, f"http://127.0.0.1:{free_port()}/score", monkeypatch, tmp_path) as harness:
        for container in JOB_CONTAINERS:
            with contextlib.suppress(ResourceNotFoundError):
                harness.services.blobs.delete_container(container)
        harness.configure(COMPLIANCE_SCHEDULE="0 30 3 * * *", COMPONENT_CATALOG_BLOB="components/catalog.csv")
        yield harness


def upload_catalogue(harness, catalogue: pd.DataFrame | str = CATALOGUE) -> None:
    data = catalogue if isinstance(catalogue, str) else catalogue.to_csv(index=False)
    upload_bytes(ensure_container(harness.services.blobs, "components"), "catalog.csv", data.encode())


def results_blob(harness) -> pd.DataFrame:
    data = download_bytes(harness.services.blobs.get_container_client(RESULTS_CONTAINER), f"date={DAY}/results.csv")
    return pd.read_csv(pd.io.common.BytesIO(data), dtype={"Component_ID": str, "Car_ID": str}, keep_default_na=False)


def test_the_timer_alerts_each_affected_car_once_and_keeps_needs_review_parts_out_of_alerts(app, model_dir):
    version = publish_model(app.services.blobs, model_dir)
    upload_catalogue(app)

    run = app.host.fire_timer("nightly_compliance_score_timer")
    drain = app.host.drain_queue("push_alert")

    assert run.succeeded
    assert (drain.succeeded, drain.failed_attempts, drain.poisoned) == (2, 0, 0)
    for car, parts in NON_COMPLIANT_PARTS.items():
        [alert] = app.simulator.received(car)  # signature verified by the simulator
        validate_alert(alert)
        assert (alert["type"], alert["battery_id"], alert["model_version"]) == (COMPONENT_COMPLIANCE, parts, version)
        assert [reason.split(":")[0] for reason in alert["reasons"]] == parts.split(",")
    assert "plastic" in app.simulator.received("CAR-A")[0]["reasons"][0]
    reasons_b = " ".join(app.simulator.received("CAR-B")[0]["reasons"])
    assert "1985 (before 1995)" in reasons_b and "fair condition" in reasons_b and "iron" in reasons_b
    assert app.simulator.received("CAR-C") == [] and app.simulator.received("CAR-D") == []

    results = results_blob(app)
    assert list(results["Component_ID"]) == list(CATALOGUE["Component_ID"])  # every part, none dropped
    review = results[results["needs_review"] == 1]
    assert list(review["Component_ID"]) == NEEDS_REVIEW_PARTS
    assert review["reason"].str.startswith("needs review:").all()
    assert set(results.loc[results["non_compliant"] == "1", "Component_ID"]) == {"P-1", "P-3", "P-4"}

    again = app.host.fire_timer("nightly_compliance_score_timer")  # the same day: the same alert ids
    app.host.drain_queue("push_alert")
    assert again.succeeded
    assert len(app.simulator.attempts) == 2  # nothing new reached the gateway


def test_the_summary_counts_what_was_scored_flagged_and_sent_to_review(app, model_dir):
    from shared.handlers.compliance import nightly_compliance_score

    publish_model(app.services.blobs, model_dir)
    upload_catalogue(app)

    batch = nightly_compliance_score(app.services)

    assert {key: batch.summary[key] for key in ("day", "scored", "non_compliant", "needs_review", "cars_affected",
                                                 "alerts", "catalogue", "results_blob", "review_worklist_blob",
                                                 "review_words")} == {
        "day": DAY, "scored": 9, "non_compliant": 3, "needs_review": 2, "cars_affected": 2, "alerts": 2,
        "catalogue": "components/catalog.csv", "results_blob": f"{RESULTS_CONTAINER}/date={DAY}/results.csv",
        "review_worklist_blob": f"{RESULTS_CONTAINER}/date={DAY}/review_worklist.csv", "review_words": 3,
    }  # fmt: skip


def test_a_workshop_word_is_listed_tonight_and_read_after_the_answer_is_published(app, tmp_path):
    """The review loop through the timer: tonight's worklist names the word that kept three parts in review; a
    classifier trained with a site glossary answering it, once published, decides them the next night."""
    components = simulate_components(np.array([f"CAR-{k:05d}" for k in range(1, 201)]), seed=3)
    params = TrainingParams(epochs=10)
    publish_model(app.services.blobs, train_classifier(components, params).model.save(tmp_path / "plain"))
    workshop = [
        ("W-1", "CAR-E", "Steel bracket made in 2011, zorkled"),
        ("W-2", "CAR-E", "zorkled steel hub, 2014"),
        ("W-3", "CAR-F", "2009 steel strut, zorkled"),
        ("W-4", "CAR-F", "steel bracket, 2012, good"),
    ]
    upload_catalogue(app, pd.concat([CATALOGUE, pd.DataFrame(workshop, columns=CATALOGUE.columns)]))

    assert app.host.fire_timer("nightly_compliance_score_timer").succeeded
    data = download_bytes(app.services.blobs.get_container_client(RESULTS_CONTAINER), f"date={DAY}/review_worklist.csv")
    worklist = pd.read_csv(pd.io.common.BytesIO(data))
    assert worklist.iloc[0][["word", "review_notes", "lacking_condition"]].tolist() == ["zorkled", 3, 3]
    assert results_blob(app).set_index("Component_ID").loc[["W-1", "W-2", "W-3"], "needs_review"].tolist() == [1] * 3

    answered = {"condition": {"zorkled": "poor"}}  # the reviewer's site glossary
    publish_model(app.services.blobs, train_classifier(components, params, answered).model.save(tmp_path / "site"))
    assert app.host.fire_timer("nightly_compliance_score_timer").succeeded
    results = results_blob(app).set_index("Component_ID")
    assert results.loc[["W-1", "W-2", "W-3"], "non_compliant"].tolist() == ["1"] * 3
    assert results.loc["W-1", "reason"].startswith(
        "non-compliant: poor condition (read 'zorkled' as poor: site glossary)"
    )
    app.host.drain_queue("push_alert")
    assert {alert["battery_id"] for car in ("CAR-E", "CAR-F") for alert in app.simulator.received(car)} == {
        "W-1,W-2", "W-3"}  # fmt: skip


def test_without_a_model_or_a_catalogue_the_timer_queues_nothing_and_says_why(app, model_dir):
    from shared.handlers.compliance import nightly_compliance_score

    assert "no compliance model published" in nightly_compliance_score(app.services).summary["reason"]
    publish_model(app.services.blobs, model_dir)
    without_catalogue = nightly_compliance_score(app.services).summary["reason"]
    assert without_catalogue == "no component catalogue at components/catalog.csv"
    assert app.queued() == []


def test_a_malformed_catalogue_fails_the_run_naming_the_blob_column_and_line(app, model_dir):
    from shared.handlers.compliance import nightly_compliance_score

    publish_model(app.services.blobs, model_dir)
    upload_catalogue(app, "Component_ID,Car_ID,text\nP-1,CAR-A,Plastic part made 2001\nP-1,CAR-B,Steel\n")

    with pytest.raises(InputError, match=r"blob components/catalog.csv: column Component_ID: duplicate component "
                                         r"on line\(s\) 3"):  # fmt: skip
        nightly_compliance_score(app.services)
    run = app.host.fire_timer("nightly_compliance_score_timer")
    assert not run.succeeded and app.queued() == []


def test_the_catalogue_can_come_from_a_database(app, model_dir, tmp_path):
    from shared.handlers.compliance import nightly_compliance_score

    database = tmp_path / "catalogue.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:
        CATALOGUE.to_sql("components", connection, index=False)
    publish_model(app.services.blobs, model_dir)
    services = app.configure(COMPONENT_CATALOG_DSN=f"sqlite:///{database}")

    batch = nightly_compliance_score(services)

    assert (batch.summary["catalogue"], batch.summary["scored"], batch.summary["needs_review"]) == ("database", 9, 2)
    assert sorted(alert["car_id"] for alert in batch.alerts) == ["CAR-A", "CAR-B"]
    assert str(database) not in json.dumps(batch.summary)  # a DSN may hold a password: never in the log


def test_the_cli_does_the_same_on_local_files(model_dir, tmp_path, capsys):
    data, out, alerts_out = tmp_path / "components.csv", tmp_path / "results.csv", tmp_path / "alerts.jsonl"
    CATALOGUE.to_csv(data, index=False)

    code = main(["compliance", "alerts", "--data", str(data), "--model-dir", str(model_dir), "--out", str(out),
                 "--alerts-out", str(alerts_out)])  # fmt: skip

    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["scored"], summary["needs_review"], summary["alerts"]) == (9, 2, 2)
    alerts = [json.loads(line) for line in alerts_out.read_text().splitlines()]
    assert {alert["car_id"]: alert["battery_id"] for alert in alerts} == NON_COMPLIANT_PARTS
    assert len(pd.read_csv(out)) == len(CATALOGUE)


@pytest.mark.parametrize(
    ("name", "value"), [("COMPLIANCE_SCHEDULE", "30 3 * * *"), ("COMPONENT_CATALOG_BLOB", "catalog.csv")]
)
def test_a_bad_compliance_setting_is_refused_by_name(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})
