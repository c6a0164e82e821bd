"""Component compliance: the regulation's boundaries, phrasings never seen in training, notes that cannot be
decided, explanations, the CSV commands and the alert content."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.model_selection import GroupKFold

from shared.adapters.tracking import TRAINING_RESULTS_PNG
from shared.cli import main
from shared.compliance.classifier import (
    COMPONENT_COMPLIANCE,
    COMPONENT_ID,
    CONDITIONS,
    LABEL,
    MATERIAL_SPELLINGS,
    MATERIALS,
    NEEDS_REVIEW,
    NON_COMPLIANT,
    REASON,
    RESULT_COLUMNS,
    TEMPLATE,
    TEXT,
    TrainingParams,
    compliance_alert_content,
    fit_classifier,
    load_model,
    read_notes,
    score_components,
    train_classifier,
    violates_regulation,
    year_value,
)
from shared.core.alerts import build_alerts, validate_alert
from shared.core.telemetry import CAR_ID, InputError
from shared.devtools.fleet_simulator import COMPONENT_TEMPLATES, UNDECIDABLE_NOTES, simulate_components

N_CARS = 600


@pytest.fixture(scope="module")
def components() -> pd.DataFrame:
    return simulate_components(np.array([f"CAR-{k:05d}" for k in range(1, N_CARS + 1)]), seed=7)


@pytest.fixture(scope="module")
def trained(components):
    return train_classifier(components)


@pytest.fixture(scope="module")
def model(trained):
    return trained.model


@pytest.fixture(scope="module")
def results(model, components):
    return score_components(model, components)


def score_texts(model, texts: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({COMPONENT_ID: [f"C{i}" for i in range(len(texts))], CAR_ID: "CAR-1", TEXT: texts})
    return score_components(model, frame)


# --- the regulation -----------------------------------------------------------------------------------------

BOUNDARIES = (
    [(year, "good", "steel", int(year < 1995)) for year in (1994, 1995, 1996)]
    + [(2010, condition, "steel", int(condition in ("fair", "poor"))) for condition in CONDITIONS]
    + [(2010, "good", material, int(material in ("plastic", "iron"))) for material in MATERIALS]
)


@pytest.mark.parametrize(("year", "condition", "material", "expected"), BOUNDARIES)
def test_the_regulation_at_its_boundaries(model, year, condition, material, expected):
    verdict = violates_regulation(pd.Series([year]), pd.Series([condition]), pd.Series([material]))
    assert verdict.tolist() == [expected]
    notes = [
        f"Manufactured in {year}, made of {material}, in {condition} condition",
        f"{condition.upper()} condition {material} component mfd '{year % 100:02d}",
        f"{material} bracket, built {year}, condition: {condition}",
    ]
    results = score_texts(model, notes)
    assert results[NEEDS_REVIEW].tolist() == [0, 0, 0], results[REASON].tolist()
    assert results[NON_COMPLIANT].tolist() == [expected] * 3


@pytest.mark.parametrize(
    ("written", "year"),
    [("1994", 1994), ("'95", 1995), ("’96", 1996), ("nineteen ninety-four", 1994), ("nineteen ninety five", 1995),
     ("Nineteen-Ninety-Six", 1996), ("two thousand", 2000), ("two thousand and five", 2005),
     ("twenty ten", 2010), ("twenty twenty-three", 2023), ("nineteen oh five", 1905), ("'29", 2029)],
)  # fmt: skip
def test_years_are_read_however_they_are_written(written, year):
    notes = read_notes(pd.Series([f"steel panel mfd {written}, good condition"]))
    assert notes["year"].tolist() == [year]
    assert year_value(written) == year


@pytest.mark.parametrize("text", ["inspected 2016-03-04: steel, good", "part 19876, steel, good", "1994-1996 steel"])
def test_dates_and_part_numbers_are_not_years(text):
    assert read_notes(pd.Series([text]))["year"].isna().all()


def test_a_typo_in_a_regulation_word_is_still_read():
    notes = read_notes(pd.Series(["mfd 2010, plastc housing, good condition", "built 2001, steel, fiar condition",
                                  "made 2003 of alumiium, excellent"]))  # fmt: skip
    assert notes["material"].tolist() == ["plastic", "steel", "aluminum"]
    assert notes["condition"].tolist() == ["good", "fair", "excellent"]
    assert notes["verdict"].tolist() == [1, 1, 0]


# --- the simulated notes ------------------------------------------------------------------------------------


def test_simulated_notes_have_the_variety_of_real_ones(components):
    text = components[TEXT].str.lower()
    assert set(components["Stated_Condition"].dropna()) == set(CONDITIONS)
    assert set(components["Stated_Material"].dropna()) == set(MATERIALS)
    assert {1994, 1995, 1996} <= set(components["Stated_Year"].dropna())
    for word in ("mfd", "built", "produced", "manufactured", "aluminium", "carbon fibre", "nineteen", "two thousand",
                 "'9", "per customer request"):  # fmt: skip
        assert text.str.contains(word, regex=False).any(), word
    assert (components[TEXT] == components[TEXT].str.upper()).mean() > 0.1
    assert set(components[TEMPLATE]) == {*COMPONENT_TEMPLATES, *UNDECIDABLE_NOTES}
    undecidable = components[TEMPLATE].isin(UNDECIDABLE_NOTES)
    assert components.loc[undecidable, LABEL].isna().all() and 0.03 < undecidable.mean() < 0.08


def test_the_reader_reads_what_each_simulated_note_states(components):
    notes = read_notes(components[TEXT])
    stated = components[["Stated_Year", "Stated_Condition", "Stated_Material"]].astype("string").fillna("-")
    read = notes[["year", "condition", "material"]].astype("string").fillna("-")
    assert (read.to_numpy() == stated.to_numpy()).all(axis=1).mean() >= 0.999
    assert (notes["verdict"].fillna(-1) == components[LABEL].fillna(-1)).mean() >= 0.999


# --- the classifier on phrasings it never saw ------------------------------------------------------------------


def test_phrasings_held_out_of_training_meet_the_target(components):
    labelled = components[components[LABEL].notna()].reset_index(drop=True)
    y = labelled[LABEL].astype(int).to_numpy()
    normalized = read_notes(labelled[TEXT])["normalized"]
    right, positive = [], []
    for train, test in GroupKFold(n_splits=4).split(labelled, y, labelled[TEMPLATE]):
        assert not set(labelled[TEMPLATE].iloc[train]) & set(labelled[TEMPLATE].iloc[test])
        fold_model, _ = fit_classifier(normalized.iloc[train], y[train], TrainingParams())
        results = score_components(fold_model, labelled.iloc[test])
        correct = (results[NEEDS_REVIEW] == 0) & (results[NON_COMPLIANT] == y[test]).fillna(False)
        right.append(correct.to_numpy())
        positive.append(y[test] == 1)
        assert correct.mean() >= 0.99
    right, positive = np.concatenate(right), np.concatenate(positive)
    assert right.mean() >= 0.99, "accuracy"
    assert right[positive].mean() >= 0.99, "recall of non-compliant parts"


def test_training_reports_the_held_out_metrics_and_curves(trained):
    metrics = trained.metrics
    assert metrics["eval_accuracy"] >= 0.99 and metrics["eval_recall_non_compliant"] >= 0.99
    assert 0 < metrics["eval_loss"] < 0.2
    assert metrics["unlabelled_notes_skipped"] > 0
    assert trained.model.metadata["split"] == "template"
    curves = trained.curves
    assert list(curves.columns) == ["train_loss", "train_accuracy", "validation_loss", "validation_accuracy"]
    assert curves["validation_loss"].iloc[-1] < curves["validation_loss"].iloc[0] / 2


def test_without_a_template_column_the_held_out_share_is_of_notes(components):
    result = train_classifier(components.drop(columns=TEMPLATE).head(800), TrainingParams(epochs=3))
    assert result.model.metadata["split"] == "note"
    assert result.metrics["eval_notes"] > 0.2 * result.metrics["train_notes"]


# --- notes that cannot be decided -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "the note is empty"),
        ("   ", "the note is empty"),
        ("xkqvtr bnmwz", "states no manufacturing year, condition or material"),
        ("???", "states no manufacturing year, condition or material"),
        ("Part checked during service.", "states no manufacturing year, condition or material"),
        ("Steel bracket in good condition", "no manufacturing year stated"),
        ("Built 2010, good condition", "no material stated"),
        ("Titanium strut made 2012", "no condition stated"),
        ("Steel, good condition, mfd 1998, refurbished 2004", "several years stated (1998, 2004)"),
    ],
)
def test_a_note_that_cannot_be_decided_needs_review_and_is_not_guessed(model, text, why):
    [result] = score_texts(model, [text]).to_dict("records")
    assert result[NEEDS_REVIEW] == 1
    assert pd.isna(result[NON_COMPLIANT])
    assert result[REASON].startswith("needs review: ") and why in result[REASON]


def test_a_note_silent_on_some_facts_is_decided_when_what_it_states_disqualifies(model):
    results = score_texts(model, ["Plastic housing", "Poor condition clamp, copper", "mfd '82, bushing"])
    assert results[NEEDS_REVIEW].tolist() == [0, 0, 0]
    assert results[NON_COMPLIANT].tolist() == [1, 1, 1]


def test_every_simulated_undecidable_note_is_sent_to_review(components, results):
    undecidable = components[LABEL].isna().to_numpy()
    assert (results.loc[undecidable, NEEDS_REVIEW] == 1).all()
    assert results.loc[undecidable, NON_COMPLIANT].isna().all()
    assert len(results) == len(components)  # nothing dropped


def test_when_the_classifier_and_the_reader_disagree_the_note_goes_to_review(model):
    always_compliant = replace(model, intercept=-50.0)
    [result] = score_texts(always_compliant, ["Made of plastic, mfd 2010, good condition"]).to_dict("records")
    assert result[NEEDS_REVIEW] == 1 and pd.isna(result[NON_COMPLIANT])
    assert "disagrees with the reading 'non-compliant: plastic'" in result[REASON]


# --- explanations -------------------------------------------------------------------------------------------


def test_word_contributions_add_up_to_the_logit(model, components):
    normalized = read_notes(components[TEXT].head(200))["normalized"]
    probability, contributions = model.explain(normalized)
    logit = np.log(probability / (1 - probability))
    summed = contributions.groupby("row")["contribution"].sum().reindex(range(200), fill_value=0.0)
    np.testing.assert_allclose(summed.to_numpy() + model.intercept, logit, atol=1e-9)
    np.testing.assert_allclose(model.probability(normalized), probability)


def test_the_reason_names_the_finding_and_the_words_that_drove_it(model):
    results = score_texts(model, ["Plastic housing mfd 2010 in good condition", "Steel panel, '85, excellent",
                                  "Good condition steel part manufactured in 2010"])  # fmt: skip
    plastic, old, fine = results[REASON]
    assert plastic.startswith("non-compliant: plastic; words: plastic (+")
    assert old.startswith("non-compliant: made 1985 (before 1995); words: '85 (before 1995) (+")
    assert fine.startswith("compliant: made 2010 (1995 or later), good condition, steel; words: ")
    assert "good (-" in fine


# --- model files and the CSV commands ------------------------------------------------------------------------


def test_a_saved_model_loads_back_to_the_same_predictions(model, components, results, tmp_path):
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.version == model.version
    pd.testing.assert_frame_equal(score_components(loaded, components.head(500)), results.head(500))
    with pytest.raises(InputError, match="not a compliance model directory"):
        load_model(tmp_path)


def test_train_then_score_from_the_command_line(components, tmp_path, monkeypatch, capsys):
    store = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    data = tmp_path / "components.csv"
    components = components.head(1500)  # every template, fewer notes: quicker
    components[[COMPONENT_ID, CAR_ID, TEXT, LABEL, TEMPLATE]].to_csv(data, index=False)
    assert main(["compliance", "train", "--data", str(data), "--model-dir", str(tmp_path / "model"),
                 "--learning-rate", "0.1", "--epochs", "12"]) == 0  # fmt: skip
    run_id = load_model(tmp_path / "model").metadata["mlflow_run_id"]

    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {"learning_rate": "0.1", "alpha": "1e-05", "epochs": "12"}.items() <= run.data.params.items()
    assert run.data.metrics["eval_accuracy"] >= 0.99 and 0 < run.data.metrics["eval_loss"] < 0.3
    assert len(client.get_metric_history(run_id, "curve_validation_loss")) == 12
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {TRAINING_RESULTS_PNG, "model"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "model")} == {
        "model/compliance_model.json",
        "model/compliance_weights.npz",
    }

    catalogue = tmp_path / "catalogue.csv"
    components[[COMPONENT_ID, CAR_ID, TEXT]].to_csv(catalogue, index=False)  # scoring needs no label
    out = tmp_path / "out" / "results.csv"
    assert main(["compliance", "score", "--data", str(catalogue), "--model-dir", str(tmp_path / "model"),
                 "--out", str(out)]) == 0  # fmt: skip
    results = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert list(results.columns) == RESULT_COLUMNS
    assert results[COMPONENT_ID].tolist() == components[COMPONENT_ID].tolist()
    assert set(results[NEEDS_REVIEW]) == {"0", "1"}
    assert set(results.loc[results[NEEDS_REVIEW] == "1", NON_COMPLIANT]) == {""}
    assert set(results.loc[results[NEEDS_REVIEW] == "0", NON_COMPLIANT]) == {"0", "1"}
    assert "need review" in capsys.readouterr().out


HEADER = "Component_ID,Car_ID,text,label"


@pytest.mark.parametrize(
    ("action", "text", "expected"),
    [
        ("score", "", "the file is empty"),
        ("score", "Component_ID,Car_ID\nC1,CAR-1\n", "missing column(s): text"),
        ("score", f"{HEADER}\nC1,CAR-1,steel,0\n,CAR-1,iron,1\n", "column Component_ID: empty id on line(s) 3"),
        ("score", f"{HEADER}\nC1,CAR-1,steel,0\nC2,,iron,1\n", "column Car_ID: empty id on line(s) 3"),
        ("score", f"{HEADER}\nC1,CAR-1,steel,0\nC1,CAR-2,iron,1\n", "Component_ID: duplicate component on line(s) 3"),
        ("train", "Component_ID,Car_ID,text\nC1,CAR-1,steel\n", "missing column(s): label"),
        ("train", f"{HEADER}\nC1,CAR-1,steel,0\nC2,CAR-1,iron,yes\n", "column label: not 0, 1 or empty on line(s) 3"),
    ],
)  # fmt: skip
def test_a_bad_csv_stops_with_exit_code_2_naming_file_column_and_lines(tmp_path, capsys, action, text, expected):
    data = tmp_path / "components.csv"
    data.write_text(text)
    outputs = ["--out", str(tmp_path / "results.csv")] if action == "score" else []
    code = main(["compliance", action, "--data", str(data), "--model-dir", str(tmp_path / "model"), *outputs])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {data}: ") and expected in error


# --- alerts -------------------------------------------------------------------------------------------------


def test_one_alert_per_car_with_non_compliant_parts_listing_them_and_why(model):
    frame = pd.DataFrame({
        COMPONENT_ID: ["C1", "C2", "C3", "C4", "C5", "C6"],
        CAR_ID: ["CAR-A", "CAR-A", "CAR-B", "CAR-B", "CAR-C", "CAR-A"],
        TEXT: ["Plastic housing mfd 2010 in good condition", "Steel panel, '85, excellent",
               "Good condition steel part manufactured in 2010", "???",
               "Iron clamp, built 2001, fair condition", "Titanium strut, 2015, excellent"],
    })  # fmt: skip
    results = score_components(model, frame)
    content = compliance_alert_content(results, "2017-03-20", model.version)
    assert content["car_id"].tolist() == ["CAR-A", "CAR-C"]  # CAR-B: one compliant part, one to review
    assert content["battery_id"].tolist() == ["C1,C2", "C5"]
    assert content["reasons"].tolist() == [
        ["C1: plastic", "C2: made 1985 (before 1995)"],
        ["C5: fair condition, iron"],
    ]
    assert content["message"].iloc[0].startswith("2 parts of your car do not meet the component regulation")

    created_at = datetime(2017, 3, 20, 3, tzinfo=UTC)
    alerts = build_alerts(content, COMPONENT_COMPLIANCE, created_at, "https://service.example.com/book")
    for alert in alerts:
        validate_alert(alert)
    assert [a["type"] for a in alerts] == [COMPONENT_COMPLIANCE] * 2
    assert alerts[0]["days_to_rated_life"] is None and 0.5 < alerts[0]["failure_probability_30d"] <= 1
    again = build_alerts(compliance_alert_content(results, "2017-03-20", model.version), COMPONENT_COMPLIANCE,
                         created_at, "https://service.example.com/book")  # fmt: skip
    assert [a["alert_id"] for a in again] == [a["alert_id"] for a in alerts]  # a re-run is the same alert


def test_material_spellings_are_all_recognised():
    spellings = [spelling for forms in MATERIAL_SPELLINGS.values() for spelling in forms]
    notes = read_notes(pd.Series([f"{spelling} part" for spelling in spellings]))
    expected = [material for material, forms in MATERIAL_SPELLINGS.items() for _ in forms]
    assert notes["material"].tolist() == expected
