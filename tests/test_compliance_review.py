"""Learning from the review queue: the worklist of unread words, and the site glossary a reviewer answers with.

A made-up word ("zorkled", "glimmish") stands for a workshop's own word: no lexicon holds it, so the
reader sends its notes to review until a site glossary says what it means.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from shared.cli import main
from shared.compliance.classifier import (
    COMPONENT_ID,
    LABEL,
    NEEDS_REVIEW,
    NON_COMPLIANT,
    REASON,
    TEMPLATE,
    TEXT,
    default_lexicon,
    load_model,
    score_components,
    train_classifier,
)
from shared.compliance.review import WORKLIST_COLUMNS, parse_site_glossary, read_site_glossary, review_worklist
from shared.core.telemetry import CAR_ID, InputError
from shared.devtools.fleet_simulator import simulate_components

SITE = {
    "conditions": {"poor": ["zorkled", "glimmy flump"], "good": ["acceptable"]},
    "materials": {"plastic": ["flexite"]},
}


@pytest.fixture(scope="module")
def components() -> pd.DataFrame:
    return simulate_components(np.array([f"CAR-{k:05d}" for k in range(1, 201)]), seed=3)


@pytest.fixture(scope="module")
def plain(components):
    return train_classifier(components).model


@pytest.fixture(scope="module")
def with_site(components):
    return train_classifier(components, site_glossary=parse_site_glossary(SITE, "site.json")).model


def notes(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({COMPONENT_ID: [f"C{i}" for i in range(len(texts))], CAR_ID: "CAR-1", TEXT: texts})


def test_a_site_word_decides_the_note_and_the_reason_names_the_glossary(plain, with_site):
    texts = ["door hinge, steel, made 2010, zorkled", "bracket, made 2012, good condition, flexite",
             "strut mount, steel, 2011, glimmy flump"]  # fmt: skip
    before = score_components(plain, notes(texts))
    after = score_components(with_site, notes(texts))
    assert before[NEEDS_REVIEW].tolist() == [1, 1, 1]
    assert after[NEEDS_REVIEW].tolist() == [0, 0, 0] and after[NON_COMPLIANT].tolist() == [1, 1, 1]
    assert "(read 'zorkled' as poor: site glossary)" in after[REASON][0]
    assert "(read 'flexite' as plastic: site glossary)" in after[REASON][1]
    assert "(read 'glimmy flump' as poor: site glossary)" in after[REASON][2]


def test_a_site_reading_replaces_the_lexicons_own(plain, with_site):
    assert default_lexicon().conditions["acceptable"].meaning == "fair"  # the glossary's grade for it
    text = ["wheel hub, steel, made 2015, acceptable"]
    assert score_components(plain, notes(text))[NON_COMPLIANT].tolist() == [1]
    site = score_components(with_site, notes(text))
    assert site[NON_COMPLIANT].tolist() == [0] and "as good: site glossary" in site[REASON][0]


def test_the_site_glossary_is_saved_with_the_model_and_in_its_version(plain, with_site, tmp_path):
    with_site.save(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.site_glossary == with_site.site_glossary and loaded.version == with_site.version
    saved = json.loads((tmp_path / "compliance_model.json").read_text())
    assert saved["site_glossary"]["condition"]["zorkled"] == "poor"
    # the training notes hold no site word, so the weights are the same: only the glossary tells the versions apart
    assert np.array_equal(plain.coef, with_site.coef) and plain.version != with_site.version
    assert score_components(loaded, notes(["door hinge, steel, made 2010, zorkled"]))[NON_COMPLIANT].tolist() == [1]


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"conditions": {"poor": ["tatty"]}, "parts": {}}, "'conditions' and/or 'materials'"),
        ({"conditions": {"shabby": ["tatty"]}}, "'shabby'; expected one of excellent, good, fair, poor, unclear"),
        ({"materials": {"wood": ["oak"]}}, "meaning 'wood'"),
        ({"conditions": {"poor": "tatty"}}, "'conditions'/'poor' must be a list of phrases"),
        ({"conditions": {"poor": ["Tatty"], "fair": ["tatty!"]}}, "'tatty' is both poor and fair"),
        ({"conditions": {"poor": ["--"]}}, "a phrase with no words ('--')"),
        ([], "an object with"),
    ],
)
def test_a_bad_site_glossary_is_refused_naming_what_is_wrong(data, named):
    with pytest.raises(InputError, match=r"site\.json: ") as refused:
        parse_site_glossary(data, "site.json")
    assert named in str(refused.value)


def test_an_unreadable_glossary_file_names_the_file(tmp_path):
    path = tmp_path / "site.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match=r"site\.json: not a readable JSON site glossary"):
        read_site_glossary(path)


def test_the_worklist_puts_the_unknown_state_word_first_and_leaves_out_what_the_reader_knows(plain):
    texts = [f"{part}, steel, made 2010, zorkled" for part in ("door hinge", "bracket", "strut", "wiper arm")]
    texts += [f"bracket, steel, made {year}, good" for year in (2011, 2012, 2014)] + ["bracket, 2013, flexite, good"]
    frame = notes(texts)
    results = score_components(plain, frame)
    worklist = review_worklist(frame, results, plain.lexicon)
    assert list(worklist.columns) == WORKLIST_COLUMNS
    first = worklist.iloc[0]
    assert (first["word"], first["review_notes"], first["share_in_review"]) == ("zorkled", 4, 1.0)
    assert (first["lacking_condition"], first["lacking_material"]) == (4, 0)
    assert first["example"] == "door hinge, steel, made 2010, zorkled"
    flexite = worklist.set_index("word").loc["flexite"]
    assert (flexite["lacking_condition"], flexite["lacking_material"]) == (0, 1)
    # a part name mostly in decided notes, the regulation's and the lexicon's words, and years are not listed;
    # a part name only in notes sent to review is (a reviewer skips it), after the word that holds most of them
    assert not {"bracket", "steel", "made", "good", "2010", "2013"} & set(worklist["word"])
    assert set(worklist["review_notes"].iloc[1:]) == {1}
    # notes that all went to review (the review queue alone): most notes first
    queue = frame[results[NEEDS_REVIEW] == 1]
    assert review_worklist(queue, score_components(plain, queue), plain.lexicon)["word"].iloc[0] == "zorkled"


def test_answering_the_worklist_in_a_site_glossary_takes_its_notes_out_of_review(components, plain, tmp_path):
    parts = ("door hinge", "bracket", "strut")
    frame = notes([f"{part}, steel, made 2010, {state}" for part in parts for state in ("zorkled", "good")])
    worklist = review_worklist(frame, score_components(plain, frame), plain.lexicon)
    assert worklist["word"].iloc[0] == "zorkled"
    answered = {"conditions": {"poor": [worklist["word"].iloc[0]]}}
    model = train_classifier(components, site_glossary=parse_site_glossary(answered, "answers")).model
    assert score_components(model, frame)[NEEDS_REVIEW].sum() == 0
    assert review_worklist(frame, score_components(model, frame), model.lexicon).empty


def test_train_with_a_glossary_and_list_the_unread_words_from_the_command_line(components, tmp_path, monkeypatch,
                                                                               capsys):  # fmt: skip
    store = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    data = tmp_path / "components.csv"
    components.head(800)[[COMPONENT_ID, CAR_ID, TEXT, LABEL, TEMPLATE]].to_csv(data, index=False)
    glossary = tmp_path / "site.json"
    glossary.write_text(json.dumps({"conditions": {"poor": ["zorkled"]}}))
    model_dir = tmp_path / "model"
    assert main(["compliance", "train", "--data", str(data), "--model-dir", str(model_dir), "--epochs", "5",
                 "--glossary", str(glossary)]) == 0  # fmt: skip
    trained = load_model(model_dir)
    assert trained.site_glossary == {"condition": {"zorkled": "poor"}}
    run = MlflowClient(tracking_uri=store).get_run(trained.metadata["mlflow_run_id"])
    assert run.data.tags["site_glossary_phrases"] == "1"  # the run says the model reads a site's words

    catalogue = tmp_path / "catalogue.csv"
    notes(["door hinge, steel, made 2010, zorkled", "hub, steel, made 2010, glimmish", "strut, 2012, glimmish, alloy"]
          ).to_csv(catalogue, index=False)  # fmt: skip
    out = tmp_path / "worklist.csv"
    capsys.readouterr()
    assert main(["compliance", "unread", "--data", str(catalogue), "--model-dir", str(model_dir),
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "2 of 3 notes need review" in printed and "'glimmish': 2 notes (100% of those holding it)" in printed
    listed = pd.read_csv(out)
    assert list(listed.columns) == WORKLIST_COLUMNS and listed["word"].tolist()[0] == "glimmish"
    assert "zorkled" not in set(listed["word"])  # the glossary's word is read


def test_a_bad_glossary_stops_training_with_exit_code_2(components, tmp_path, capsys):
    data = tmp_path / "components.csv"
    components.head(50)[[COMPONENT_ID, CAR_ID, TEXT, LABEL]].to_csv(data, index=False)
    glossary = tmp_path / "site.json"
    glossary.write_text(json.dumps({"conditions": {"rotten": ["zorkled"]}}))
    assert main(["compliance", "train", "--data", str(data), "--model-dir", str(tmp_path / "m"),
                 "--glossary", str(glossary)]) == 2  # fmt: skip
    assert "meaning 'rotten'" in capsys.readouterr().err
