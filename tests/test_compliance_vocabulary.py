"""Component compliance in ordinary words (issue 17, point 4): the lexicon (WordNet and the workshop
glossary), its grammar (inflections, negation, affixes, designations, coatings), the reasons that name the
words read, the builder on a tiny WordNet, and the evaluation on vocabulary the simulator never writes: the
development vocabularies (dev, test, fresh1-8: looked at while the reader was built) and the blind holdouts
(tests/compliance_vocabulary_holdout*.json, written by others and never looked at; the targets are asserted
on them)."""

from __future__ import annotations

import gc
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.compliance.classifier import (
    COMPONENT_ID,
    CONDITIONS,
    MATERIAL_SPELLINGS,
    MATERIALS,
    NEEDS_REVIEW,
    NON_COMPLIANT,
    REASON,
    TEXT,
    evaluate_unseen_vocabulary,
    read_notes,
    score_components,
    train_classifier,
)
from shared.compliance.lexicon import Lexicon, Reading, default_lexicon, lexicon_data, read_phrases, seeds_in
from shared.core.telemetry import CAR_ID
from shared.devtools.fleet_simulator import (
    COMPONENT_TEMPLATES,
    MADE_WORDS,
    PART_NAMES,
    simulate_components,
    simulate_vocabulary_notes,
)

ROOT = Path(__file__).resolve().parent.parent
REGULATION_WORDS = {*CONDITIONS, *MATERIALS}

pytestmark = pytest.mark.slow  # trains the classifier and scores a few thousand notes


def vocabulary(which: str) -> dict:
    return json.loads((Path(__file__).with_name(f"compliance_vocabulary_{which}.json")).read_text())


def phrases(which: str) -> set[str]:
    words = vocabulary(which)
    return {_norm(p) for kind in ("conditions", "materials") for group in words[kind].values() for p in group}


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


@pytest.fixture(scope="module")
def model():
    return train_classifier(simulate_components(np.array([f"CAR-{k:05d}" for k in range(1, 601)]), seed=7)).model


def score_texts(model, texts: list[str], lexicon: Lexicon | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({COMPONENT_ID: [f"C{i}" for i in range(len(texts))], CAR_ID: "CAR-1", TEXT: texts})
    return score_components(model, frame, lexicon)


# --- the evaluation vocabularies are unseen -------------------------------------------------------------------


def test_the_evaluation_vocabularies_use_no_word_of_the_simulator_and_none_of_each_other():
    simulator = {_norm(w) for forms in MATERIAL_SPELLINGS.values() for w in forms} | set(CONDITIONS)
    simulator |= {_norm(w) for w in (*MADE_WORDS, *PART_NAMES)}
    dev, test, holdout, holdout2 = phrases("dev"), phrases("test"), phrases("holdout"), phrases("holdout2")
    holdout3, holdout4 = phrases("holdout3"), phrases("holdout4")
    fresh = set().union(*(phrases(f"fresh{k}") for k in range(1, 9)))
    assert not dev & test and not holdout & (dev | test)
    assert not holdout2 & (dev | test | holdout | fresh)
    assert not holdout3 & (dev | test | holdout | holdout2 | fresh)
    assert not holdout4 & (dev | test | holdout | holdout2 | holdout3 | fresh)
    assert not (dev | test | holdout | holdout2 | holdout3 | holdout4) & simulator
    for which in ("dev", "test", "holdout", "holdout2", "holdout3", "holdout4"):
        words = vocabulary(which)
        assert not set(words["templates"]) & set(COMPONENT_TEMPLATES.values())
        assert not {_norm(p) for p in words["parts"]} & {_norm(p) for p in PART_NAMES}


# --- the measured figures -------------------------------------------------------------------------------------

TARGETS = {"accuracy": 0.99, "recall_non_compliant": 0.99, "review_rate": 0.02}
EMPTY = Lexicon(conditions={}, materials={}, typo_exceptions=frozenset())


def evaluate(model, which: str, lexicon: Lexicon | None = None) -> dict[str, float]:
    """The reader as deployed (every seed and the glossary) on a vocabulary's notes; `EMPTY`: the
    regulation's words only (the reader before issue 17)."""
    notes = simulate_vocabulary_notes(vocabulary(which), seed=17)
    return evaluate_unseen_vocabulary(model, notes, hold_out_seeds=False, lexicon=lexicon)[0]


@pytest.mark.parametrize("which", ["dev", "test"])
def test_on_the_development_vocabularies_the_targets_are_met_and_undecidable_notes_stay_undecided(model, which):
    """Development figures (the glossary was written after both had been looked at, so they say what the
    reader can do, not how it generalises: that is the holdout's). Figures: README, Component compliance."""
    before, after = evaluate(model, which, EMPTY), evaluate(model, which)
    assert before["review_rate"] > 0.5
    assert after["accuracy"] >= TARGETS["accuracy"] and after["recall_non_compliant"] >= TARGETS["recall_non_compliant"]
    assert after["review_rate"] <= TARGETS["review_rate"]
    assert after["decided_accuracy"] >= 0.995 and after["undecidable_decided"] <= 0.05


# Measured on the reader as merged (README, Component compliance): (accuracy, recall, review rate, decided
# accuracy, undecidable decided) on each blind holdout, and the review rate of the regulation's words only.
HOLDOUT_FIGURES = {
    "holdout": ((0.964, 0.973, 0.028, 0.992, 0.116), 0.753),
    "holdout2": ((0.926, 0.965, 0.072, 0.998, 0.084), 0.645),
    "holdout3": ((0.944, 0.985, 0.052, 0.996, 0.030), 0.698),
    "holdout4": ((0.935, 0.951, 0.063, 0.998, 0.179), 0.652),
}


@pytest.mark.xfail(
    strict=True,
    reason="issue 17.4 targets not met on the blind holdouts: accuracy 0.964, 0.926, 0.944 and 0.935, recall 0.973, "
    "0.965, 0.985 and 0.951, review 2.8 %, 7.2 %, 5.2 % and 6.3 % (what it decides, 99.2-99.8 % right); see README, "
    "Component compliance",
)
@pytest.mark.parametrize("which", HOLDOUT_FIGURES)
def test_issue_17_targets_on_the_blind_holdouts(model, which):
    """Issue 17.4's targets on phrasings nobody building the reader has seen (same format as
    compliance_vocabulary_test.json; holdout2, holdout3 and holdout4 were written by people who never opened
    the reader at all)."""
    metrics = evaluate(model, which)
    assert metrics["accuracy"] >= TARGETS["accuracy"], metrics
    assert metrics["recall_non_compliant"] >= TARGETS["recall_non_compliant"], metrics
    assert metrics["review_rate"] <= TARGETS["review_rate"], metrics


@pytest.mark.parametrize("which", HOLDOUT_FIGURES)
def test_on_the_blind_holdouts_the_reader_decides_far_more_and_what_it_decides_is_right(model, which):
    """A floor just under the measured figures, so a reader that gets worse fails."""
    (accuracy, recall, review, decided, undecidable_decided), review_before = HOLDOUT_FIGURES[which]
    before, after = evaluate(model, which, EMPTY), evaluate(model, which)
    assert before["review_rate"] >= review_before - 0.01 and after["review_rate"] <= review + 0.01
    assert after["accuracy"] >= accuracy - 0.01 and after["recall_non_compliant"] >= recall - 0.01
    assert after["decided_accuracy"] >= decided - 0.005 and after["undecidable_decided"] <= undecidable_decided + 0.02


# --- reading ordinary words -------------------------------------------------------------------------------------


def test_the_reason_names_each_word_read_and_what_it_was_read_as(model):
    results = score_texts(model, ["Shabby PVC housing, built 2010", "Brass bushing from 2012, no visible wear"])
    shabby, brass = results.to_dict("records")
    assert shabby[NEEDS_REVIEW] == 0 and shabby[NON_COMPLIANT] == 1
    assert "poor condition (read 'shabby' as poor: WordNet: a kind of worn)" in shabby[REASON]
    assert "plastic (read 'pvc' as plastic: glossary: polymer)" in shabby[REASON]
    assert brass[NEEDS_REVIEW] == 0 and brass[NON_COMPLIANT] == 0
    assert "good condition (read 'no visible wear' as good: negated:" in brass[REASON]
    assert "(read 'brass' as not plastic or iron: glossary: non-ferrous metals)" in brass[REASON]


@pytest.mark.parametrize(
    ("text", "condition"),
    [("steel bracket 2010, free of corrosion", "good"), ("steel bracket 2010, rust-free", "good"),
     ("steel bracket 2010, without damage", "good"), ("steel bracket 2010, corroded", "poor"),
     ("steel bracket 2010. no issues. corroded", "poor")],
)  # fmt: skip
def test_a_negated_fault_is_read_as_good_within_its_clause(text, condition):
    assert read_notes(pd.Series([text]))["condition"].tolist() == [condition]


def test_words_that_do_not_decide_go_to_review_and_say_why(model):
    results = score_texts(model, ["steel bracket 2010, not perfect", "metal bracket, 2010, excellent",
                                  "ferrous bracket, 2010, excellent", "metal bracket, 2010, shabby"])  # fmt: skip
    perfect, metal, ferrous, shabby = results.to_dict("records")
    assert "the condition 'not perfect' is unclear" in perfect[REASON] and perfect[NEEDS_REVIEW] == 1
    assert "the material 'metal' is unclear (glossary: unclear metals and mixtures)" in metal[REASON]
    assert metal[NEEDS_REVIEW] == 1 and pd.isna(metal[NON_COMPLIANT])
    assert "the material 'ferrous' is unclear" in ferrous[REASON] and ferrous[NEEDS_REVIEW] == 1  # steel or iron
    assert shabby[NEEDS_REVIEW] == 0 and shabby[NON_COMPLIANT] == 1  # the condition decides it anyway


def test_a_coating_is_not_the_material_and_poly_names_a_polymer():
    notes = read_notes(pd.Series(["chrome-plated steel trim 2010 good", "chrome-plated trim 2010 good",
                                  "polycarbonate lens 2010 good"]))  # fmt: skip
    assert notes["material"].tolist() == ["steel", None, "plastic"]


def test_a_real_word_is_not_taken_for_a_typo():
    texts = ["door hinge, steel, 2010, excellent", "wood trim, steel, 2010", "mfd 2010 steel, fiar"]
    notes = read_notes(pd.Series(texts))
    assert notes["condition"].tolist() == ["excellent", None, "fair"]


def read(texts: list[str], slot: str) -> list:
    return read_notes(pd.Series(texts))[slot].tolist()


def test_an_inflected_word_is_read_as_the_lexicon_word_it_inflects():
    texts = ["steel bracket 2010, corrodes", "steel bracket 2010, snapping", "steel bracket 2010, discoloured",
             "steel bracket 2010, solidly made", "steel bracket 2010, buckles"]  # fmt: skip
    assert read(texts, "condition") == ["poor", "poor", "fair", "good", "poor"]
    assert read(["bracket 2010 good, steels"], "material") == ["steel"]


def test_only_an_inflected_word_and_a_participle_only_as_a_participle():
    """'exhaust' (a pipe) is not 'exhausted', 'cleaned' (what was done) not 'clean'; and no part name or
    phrasing of the simulator or of either vocabulary is read as a condition or a material."""
    assert read(["exhaust hanger, 2010, steel", "clamp cleaned and refitted, steel, 2010"], "condition") == [None, None]
    names = {*PART_NAMES, *vocabulary("dev")["parts"], *vocabulary("test")["parts"]}
    frames = {re.sub(r"\{\w+\}", " ", t) for t in (*COMPONENT_TEMPLATES.values(), *vocabulary("dev")["templates"],
                                                  *vocabulary("test")["templates"])}  # fmt: skip
    notes = read_notes(pd.Series(sorted(names | frames)))
    assert notes["condition"].isna().all() and notes["material"].isna().all(), notes[notes["condition"].notna()]


def test_a_word_no_list_holds_is_read_through_a_derivation_of_a_condition_word():
    """With the words themselves out of the lexicon, what reads them is their derivation from a word it keeps
    ("corrosion", "rust", "deformation"); a noun is not its "-y" adjective, a battery not battered, a
    replacement (a part) not a need to replace."""
    held_out = ["corroded", "rusty", "deformed", "deteriorated", "nonconforming", "discoloured"]
    lexicon = default_lexicon().without(held_out)
    texts = [f"steel bracket 2010, {word}" for word in held_out]
    assert read_notes(pd.Series(texts), lexicon)["condition"].tolist() == ["poor"] * 5 + ["fair"]
    assert "notchy" in lexicon.conditions and "battered" in lexicon.conditions and "replace" in lexicon.conditions
    texts = ["steel notch bracket 2010", "battery tray, steel, 2010", "replacement bracket, steel, 2010"]
    assert read_notes(pd.Series(texts), lexicon)["condition"].isna().all()


def test_a_british_spelling_and_a_phrase_written_as_one_word_are_read_as_the_lexicon_has_them():
    """A lexicon that holds only the American spellings and the phrases in two words still reads the British
    ones and the joined ones, and says how."""
    conditions = {"lackluster": Reading("fair", "test"), "totaled": Reading("poor", "test"),
                  "worn out": Reading("poor", "test"), "beat up": Reading("poor", "test")}  # fmt: skip
    lexicon = Lexicon(conditions, {"duraluminum": Reading("aluminum", "test")}, frozenset())
    texts = ["steel bracket 2010, lacklustre", "steel bracket 2010, totalled", "steel bracket 2010, wornout",
             "steel bracket 2010, beatup", "bracket 2010 good, duraluminium"]  # fmt: skip
    notes = read_notes(pd.Series(texts), lexicon)
    assert notes["condition"].tolist() == ["fair", "poor", "poor", "poor", "good"]
    assert notes["material"].tolist()[-1] == "aluminum"
    assert notes["condition_via"].iloc[2] == "written as one word (worn out): test"


def test_a_hedge_makes_a_fault_fair_and_an_intensifier_a_blemish_poor():
    """The lexicon reads "bent", "worn", "rust" as poor and "pitted", "flaking" fair; words of degree around
    them grade them, a hedge winning, and a negated fault stays good."""
    texts = ["steel bracket 2010, slightly bent", "steel bracket 2010, a touch worn", "steel bracket 2010, bent",
             "steel bracket 2010, minor paint damage", "steel bracket 2010, severely pitted",
             "steel bracket 2010, flaking badly", "steel bracket 2010, very slightly bent",
             "steel bracket 2010, no rust", "steel bracket 2010, pitted"]  # fmt: skip
    notes = read_notes(pd.Series(texts), default_lexicon().without(["slightly bent", "severely pitted"]))
    assert notes["condition"].tolist() == ["fair", "fair", "poor", "fair", "poor", "poor", "fair", "good", "fair"]
    assert notes["condition_via"].iloc[0].startswith("hedged: ")


def test_a_word_of_doubt_makes_a_reading_unclear_and_the_note_goes_to_review():
    texts = ["steel bracket 2010, mixed wear", "steel bracket 2010, possible crack", "bracket 2010 good, possibly inox",
             "steel bracket 2010, cracked", "bracket 2010 good, inox"]  # fmt: skip
    notes = read_notes(pd.Series(texts))
    assert notes["condition_unclear"].tolist() == [True, True, False, False, False]
    assert notes["material_unclear"].tolist() == [False, False, True, False, False]
    assert notes["verdict"].tolist()[:3] == [pd.NA] * 3 and notes["verdict"].tolist()[3:] == [1, 0]


def test_a_phrase_no_list_holds_is_read_as_a_new_combination_of_the_slots_of_one_frame():
    """With the phrases themselves held out, the glossary's frames still read them from their parts ("needs …"
    and "… renewing" are slots of the remedy-needed frame), before the single words they hold ("working" alone
    is unclear); and the reason names two phrases of the frame."""
    held_out = ["needs renewing", "replacement urgently needed", "must be renewed", "working well", "will not work"]
    lexicon = default_lexicon().without(held_out)
    notes = read_notes(pd.Series([f"steel bracket 2010, {phrase}" for phrase in held_out]), lexicon)
    assert notes["condition"].tolist() == ["poor", "poor", "poor", "good", "poor"]
    assert notes["condition_written"].tolist() == held_out
    assert re.fullmatch(r"read from its parts, as in 'needs \w+' and '[\w ]+ renewing': glossary: remedy needed",
                        notes["condition_via"].iloc[0])  # fmt: skip


def test_a_phrase_is_read_from_its_parts_only_when_they_are_one_frames_and_carry_a_meaning():
    """ "top …" (top notch) and "… made" (newly made) are slots of two concepts, not one frame's; "in …" and
    "… condition" read every grade ("in condition" is a template without its slot); a regulation word is the
    rules' ("stainless steel"), and a word of degree the grammar's ("very slight corrosion" stays fair)."""
    texts = [
        "strut top made from steel, 2010",
        "steel bracket in condition, 2010",
        "steel bracket found in state, 2010",
    ]
    assert read(texts, "condition") == [None, None, None]
    lexicon = default_lexicon()
    assert "top notch" in lexicon.conditions and "newly made" in lexicon.conditions
    spelled = read_phrases(pd.Series(["bracket of stainless steel"]), lexicon, ("fair", "poor"), ("stainless", "steel"))
    assert spelled["material"].tolist() == ["steel"] and spelled["material_via"].iloc[0].startswith("glossary: ")
    notes = read_notes(pd.Series(["steel bracket 2010, very slight corrosion"]))
    assert notes["condition"].tolist() == ["fair"] and notes["normalized"].iloc[0].split()[-2:] == ["slight", "fair"]


def test_the_resin_beside_a_carbon_fibre_is_its_matrix():
    """A fibre laid in a resin ("epoxy/CF", "CF/PEEK") is carbon fibre, as "carbon-fibre reinforced plastic" is;
    a plastic named apart from it still disqualifies."""
    texts = ["bracket 2010 good, epoxy/CF", "bracket 2010 good, CF/PEEK", "bracket 2010 good, CF and epoxy"]
    lexicon = default_lexicon().without(["epoxy/CF", "CF/PEEK"])
    assert read_notes(pd.Series(texts), lexicon)["material"].tolist() == ["carbon fiber", "carbon fiber", "plastic"]


def test_a_derivation_in_ance_or_ant_reads_its_family():
    lexicon = default_lexicon().without(["conforming", "conforms", "conformed"])
    assert "conformant" in lexicon.conditions and "conforming" not in lexicon.conditions
    notes = read_notes(pd.Series(["steel bracket 2010, conforming"]), lexicon)
    assert notes["condition"].tolist() == ["good"]


def test_a_word_of_doubt_before_the_regulations_own_word_makes_it_unclear():
    """The rules read "plastic" or "poor" wherever they are written; after a word of doubt the writer could not
    say, and the note goes to review unless something else decides it."""
    texts = ["possibly plastic bracket, 2010, good", "mixed metal/plastic bracket, 2010, good",
             "steel bracket, 2010, possibly poor", "mixed metal/plastic bracket, 1985, good",
             "plastic bracket, 2010, good"]  # fmt: skip
    notes = read_notes(pd.Series(texts))
    assert notes["material_unclear"].tolist() == [True, True, False, True, False]
    assert notes["condition_unclear"].tolist() == [False, False, True, False, False]
    assert notes["verdict"].tolist() == [pd.NA, pd.NA, pd.NA, 1, 1]


def test_a_negating_affix_or_a_word_own_negation_decides():
    texts = ["steel bracket 2010, uncorroded", "steel bracket 2010, unserviceable", "steel bracket 2010, scratchless",
             "steel bracket 2010, never used", "steel bracket 2010, not working", "steel bracket 2010, working",
             "steel bracket 2010, free from defects", "steel bracket 2010, doesn't function"]  # fmt: skip
    assert read(texts, "condition") == ["good", "poor", "good", "excellent", "poor", None, "good", "poor"]


def test_a_condition_word_that_names_a_property_or_a_part_is_not_a_state():
    texts = ["wear sensor bracket, steel, 2010, excellent", "corrosion-resistant steel bracket 2010, good",
             "split pin, steel, 2010, pristine", "anti-rust coated steel bracket 2010, mint"]  # fmt: skip
    assert read(texts, "condition") == ["excellent", "good", "excellent", "excellent"]


def test_a_designation_is_read_by_its_standards_pattern():
    texts = [f"bracket 2010 good, {m}" for m in ("316L", "GGG40", "AlMg3", "Ti6Al4V", "C11000", "AZ91D", "S355JR")]
    assert read(texts, "material") == ["steel", "iron", "aluminum", "titanium", "copper", "other", "steel"]


def test_a_regulation_word_inside_a_longer_phrase_is_the_phrases_and_a_disqualifying_reading_wins():
    texts = ["bracket 2010 good, carbon-fibre reinforced plastic", "bracket 2010 good, weathering steel",
             "bracket 2010 good, inox housing, acetal bush", "bracket 2010 good, glass-filled nylon",
             "bracket 2010 good, CF/epoxy"]  # fmt: skip
    notes = read_notes(pd.Series(texts))
    assert notes["material"].tolist() == ["carbon fiber", "steel", "plastic", "plastic", "carbon fiber"]
    assert notes["condition"].tolist() == ["good"] * 5  # "weathering" is part of the steel's name here


def test_the_classifier_sees_one_reading_per_slot_and_nothing_for_a_word_read_as_no_regulation_word():
    """Two merits ("mint, no marks") outweighed plastic for the classifier, and the char n-grams of "zinc"
    are nothing it was trained on: it sees the slot's reading once, and no word for "other"."""
    (normalized,) = read(["zinc bracket, 2010, mint, no marks"], "normalized")
    assert normalized.split() == ["bracket", "yrge1995", "excellent", "no"]


def test_idioms_and_frames_a_technician_writes_are_decided(model):
    texts = ["steel bracket 2010, seen better days", "steel bracket 2010, needs to be replaced",
             "steel bracket 2010, fit for service", "steel bracket 2010, beyond repair",
             "steel bracket 2010, works as intended", "steel bracket 2010, showing signs of wear",
             "steel bracket 2010, needs a new one", "steel bracket 2010, not good"]  # fmt: skip
    results = score_texts(model, texts)
    assert results[NEEDS_REVIEW].tolist() == [0] * 8
    assert results[NON_COMPLIANT].tolist() == [1, 1, 0, 1, 0, 1, 1, 1]  # "a new one" is needed, not had
    assert "(read 'needs to be replaced' as poor: glossary: remedy to be done)" in results[REASON][1]


@pytest.mark.parametrize(
    ("written", "condition"),
    [("knackered out", "poor"), ("on its way out", "poor"), ("in a right state", "poor"), ("like a bought one", "good"),
     ("in good nick", "good"), ("like the day it left the factory", "excellent"), ("surface bloom", "fair"),
     ("gritty", "poor"), ("play in it", "poor"), ("worn but serviceable", "fair"), ("no relevant indications", "good"),
     ("ncr raised", "poor"), ("not satisfactory", "poor"), ("gd cond", "good"), ("brkn", "poor"), ("tbr", "poor"),
     ("do not reuse", "poor")],
)  # fmt: skip
def test_each_register_of_the_glossary_is_read(written, condition):
    """Slang and idioms, what a technician sees, an inspector's language, shorthand (README: the glossary)."""
    assert read([f"steel bracket 2010, {written}"], "condition") == [condition]


@pytest.mark.parametrize(
    ("written", "material"),
    [("Hytrel", "plastic"), ("Ultramid", "plastic"), ("faux leather", "plastic"), ("polyisoprene", "other"),
     ("Kalrez", "other"), ("SCM440", "steel"), ("Q235", "steel"), ("H13 tool steel", "steel"), ("FC250", "iron"),
     ("QT450-10", "iron"), ("EN-GJS-400-15", "iron"), ("G3000", "iron"), ("ADC12", "aluminum"),
     ("Birmabright", "aluminum"), ("TC4", "titanium"), ("CW004A", "copper"), ("CuZn39Pb3", "other"),
     ("Torayca", "carbon fiber"), ("graphite/epoxy", "carbon fiber"), ("FR4", None), ("pot metal", "other")],
)  # fmt: skip
def test_materials_are_read_by_trade_name_and_designation(written, material):
    assert read([f"bracket 2010, good, {written}"], "material") == [material]


def test_designations_of_other_standards_are_read_by_their_patterns():
    """SAE/AISI, EN, UNS, JIS, GB and BS 970 grades the glossary does not list (README: the grammar)."""
    grades = {"SAE4140": "steel", "S690QL": "steel", "S31603": "steel", "SNCM630": "steel", "Q390C": "steel",
              "722M24": "steel", "HC340LA": "steel", "FCD550": "iron", "HT225": "iron", "A5454": "aluminum",
              "AC8B": "aluminum", "C17510": "copper", "CW710R": "other", "CuAl10Ni5": "other", "N06690": "other",
              "R58640": "titanium", "4140HT": "steel", "6061T6": "aluminum", "ZA35": "other",
              "ZK51": "other"}  # fmt: skip
    assert read([f"bracket 2010 good, {grade}" for grade in grades], "material") == list(grades.values())


@pytest.mark.parametrize(
    ("text", "condition"),
    [("steel bracket 2010, corrosion: none", "good"), ("steel bracket 2010, cracks not found", "good"),
     ("steel bracket 2010, defects - none seen", "good"), ("steel bracket 2010, leaks: no", "good"),
     ("steel bracket 2010, rust. none of the bolts", "poor"), ("steel bracket 2010, corrosion", "poor"),
     ("steel bracket 2010, minor wear within limits", "fair"), ("steel bracket 2010: new, zero findings", "excellent"),
     ("steel bracket 2010: rust, zero", "good")],
)  # fmt: skip
def test_a_checklist_answer_after_a_fault_denies_it(text, condition):
    assert read([text], "condition") == [condition]


def test_dotted_abbreviations_and_werkstoff_numbers_are_one_word():
    texts = ["bracket 2010 good, C.I.", "bracket 2010 good, EN 1.4301", "bracket 2010 good, W.Nr. 0.6025",
             "bracket 2010 good, steel, N.A.D.", "bracket 2010 good, runout 0.6250 in"]  # fmt: skip
    assert read(texts, "material") == ["iron", "steel", "iron", "steel", None]
    assert read(texts[3:4], "condition") == ["good"]


def test_a_zero_or_w_o_denies_a_fault_and_w_is_with():
    texts = ["steel bracket 2010, fresh install, 0 wear", "steel bracket 2010, w/o damage",
             "steel bracket 2010, still w/ stickers on", "steel bracket 2010, 0 leaks"]  # fmt: skip
    assert read(texts, "condition") == ["excellent", "good", "excellent", "good"]


def test_little_before_an_adjective_or_bit_is_a_hedge_not_scarcity():
    """ "very little wear" denies the wear; "little rusty", "is little bit worn" (a little) grade it fair."""
    texts = ["steel bracket 2010, is little bit worn", "steel bracket 2010, little rusty here and there",
             "steel bracket 2010, very little wear", "steel bracket 2010, little play"]  # fmt: skip
    assert read(texts, "condition") == ["fair", "fair", "good", "good"]


def test_an_adverb_is_read_as_an_adjective_never_as_a_participle():
    """ "totally" is not "totalled" (poor): "is totally new" is new; "solidly" is still "solid"."""
    assert read(["steel bracket 2010, is totally new", "steel bracket 2010, solidly built"], "condition") == [
        "excellent",
        "good",
    ]


def test_one_material_or_another_is_unclear():
    texts = ["bracket 2010, good, iron or steel", "bracket 2010, good, GRP or carbon",
             "bracket 2010, good, carbon fibre or GRP", "bracket 2010, good, steel",
             "steel bracket 2010, spares or repairs"]  # fmt: skip
    notes = read_notes(pd.Series(texts))
    assert notes["material"].tolist() == [None, None, None, "steel", "steel"]
    assert notes["material_unclear"].tolist() == [True, True, True, False, False]
    assert notes["material_via"].iloc[0] == "one material or another" and notes["condition"].iloc[-1] == "poor"
    # the doubt stays in its own note: the next note's first clause is another clause
    assert read(["bracket 2010, good, iron or steel", "aluminium bracket 2010 good"], "material") == [None, "aluminum"]


def test_a_disqualifying_material_beside_the_regulations_own_word_wins():
    """Among several materials a disqualifying one wins, whichever source read it: "carbon fibre and ABS"."""
    texts = ["bracket 2010, good, carbon fibre and ABS", "bracket 2010, good, carbon fibre"]
    assert read(texts, "material") == ["plastic", "carbon fiber"]


def test_the_regulations_grade_before_a_phrase_says_what_it_is(model):
    """ "used condition" is fair, "good used condition" good: the reader and the classifier both see "good"."""
    texts = ["Salvage stock: radiator, polished titanium, off a 2008 donor. Graded good used condition.",
             "radiator, titanium, 2008, used condition"]  # fmt: skip
    good, used = score_texts(model, texts).to_dict("records")
    assert good[NEEDS_REVIEW] == 0 and good[NON_COMPLIANT] == 0
    assert used[NEEDS_REVIEW] == 0 and used[NON_COMPLIANT] == 1


def test_a_fault_of_the_car_a_part_came_from_is_not_the_parts_and_had_it_done_is_not_had_it():
    texts = ["copper radiator, 2010, removed from a written-off car",
             "copper radiator, 2010, pulled off a brand-new car",
             "copper radiator, 2010, I had it replaced new last month",
             "copper radiator, 2010, it has had it"]  # fmt: skip
    assert read(texts, "condition") == [None, "excellent", "excellent", "poor"]


def test_a_dotted_word_of_degree_or_doubt_is_still_the_next_words():
    texts = ["steel bracket 2010, sl. worn", "steel bracket 2010, poss. cracked", "steel bracket 2010, worn. slightly"]
    notes = read_notes(pd.Series(texts), default_lexicon().without(["sl worn"]))
    assert notes["condition"].tolist() == ["fair", None, "poor"] and notes["condition_unclear"].iloc[1]


def test_a_jis_aluminium_grade_is_read_only_for_a_known_aa_number_and_a_temper_alone_is_no_material():
    texts = ["bracket 2010 good, A5052", "bracket 2010 good, A1234", "bracket 2010 good, T6 screws",
             "bracket 2010 good, 6061 T6", "bracket 2010 good, 6005A"]  # fmt: skip
    assert read(texts, "material") == ["aluminum", None, None, "aluminum", "aluminum"]


def test_solid_before_a_material_says_what_it_is_made_of_not_its_state():
    texts = ["roof bars, solid brass, 2010", "radiator, titanium, 2020, solid", "radiator, solid cu, 2020"]
    assert read(texts, "condition") == [None, "good", None]


@pytest.mark.parametrize(
    ("written", "condition"),
    [("still plenty of wear left", "good"), ("loads of meat on it", "good"), ("about half its life left", "fair"),
     ("0 life left", "poor"), ("high mileage, still working", "fair"), ("low mileage", "good"),
     ("grade B used", "fair"), ("grade A used", "good"), ("green on vhc", "good"), ("red on vhc", "poor"),
     ("10 outta 10", "excellent"), ("will do for now", "fair"), ("keep an eye on it", "fair"),
     ("never gave me any trouble", "good"), ("only fitted last week", "excellent"),
     ("never been on a car", "excellent"),
     ("starting to make noise", "fair"), ("not so good", "poor"), ("cannot use anymore", "poor"),
     ("ready to bolt on", "good"), ("needs doing soon", "poor"), ("tested and working", "good"),
     ("no issue found", "good"), ("as supplied by the factory", "excellent"), ("it fell off", "poor"),
     ("above average", "good"), ("below average", "poor"), ("ageing", "fair"), ("fail", "poor"), ("mid-life", "fair"),
     ("can be reused", "good"), ("lightly used", "good"), ("replaced last week", "excellent")],
)  # fmt: skip
def test_the_registers_of_a_parts_dealer_and_a_fleet_office_are_read(written, condition):
    """Round 5's glossary (README: Component compliance): remaining life, mileage, dealer grades, a health check's
    lights, ratings, "for now", trouble, recent fitting, and frames grown by a slot."""
    assert read([f"steel bracket 2010, {written}"], "condition") == [condition]


def test_a_part_not_assessed_says_nothing_of_its_state():
    """ "untested" had been WordNet's kind of new, "inspection incomplete" the fracture "incomplete"."""
    notes = read_notes(pd.Series(["steel bracket 2010, untested", "steel bracket 2010, inspection incomplete"]))
    assert notes["condition"].tolist() == [None, None] and notes["condition_unclear"].all()


@pytest.mark.parametrize(
    ("written", "material"),
    [("Kunststoff", "plastic"), ("Grauguss", "iron"), ("Messing", "other"), ("V2A", "steel"),
     ("Kohlefaser", "carbon fiber"), ("T409", "steel"), ("Zoltek", "carbon fiber"), ("c-fiber", "carbon fiber")],
)  # fmt: skip
def test_workshop_german_shorthand_and_type_numbers_are_read(written, material):
    assert read([f"bracket 2010, good, {written}"], "material") == [material]


# --- the lexicon --------------------------------------------------------------------------------------------------


def test_holding_a_seed_out_removes_only_what_it_alone_gave():
    full, without_worn = Lexicon.from_data(lexicon_data()), Lexicon.from_data(lexicon_data(), held_out={"worn"})
    assert full.conditions["shabby"].meaning == "poor" and "shabby" not in without_worn.conditions
    assert without_worn.conditions["corroded"].meaning == "poor"  # also a kind of unsound, and from rust
    assert seeds_in(["badly worn"], REGULATION_WORDS) == {"worn"}
    assert seeds_in(["very good", "mild steel"], REGULATION_WORDS) == set()


def test_holding_phrases_out_drops_them_and_their_inflections_only():
    full = Lexicon.from_data(lexicon_data())
    held = full.without(["cracked", "PVC"])
    assert {"cracked", "crack", "pvc"} <= {*full.conditions, *full.materials}
    assert not {"cracked", "crack"} & set(held.conditions) and "pvc" not in held.materials
    assert held.conditions["corroded"] == full.conditions["corroded"] and len(held.materials) == len(full.materials) - 1


def test_no_single_letter_or_function_word_is_a_lexicon_phrase():
    """ "a+" once became the phrase "a", read as excellent in every note with an "a"."""
    lexicon = Lexicon.from_data(lexicon_data())
    phrases = {*lexicon.conditions, *lexicon.materials}
    assert not {p for p in phrases if len(p) == 1} | (
        phrases & {"the", "an", "and", "or", "of", "in", "on", "to", "is"}
    )


def test_loading_the_lexicon_leaves_the_garbage_collector_as_it_was():
    """The load pauses the collector (README: cost) and must give it back as it found it, on or off."""
    was = gc.isenabled()
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            lexicon_data.cache_clear()
            default_lexicon.cache_clear()
            assert default_lexicon().conditions and gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


def test_the_lexicon_is_loaded_on_first_use_not_on_import():
    code = ("import sys, shared.handlers.compliance, shared.compliance.lexicon as lexicon; "
            "print(lexicon.lexicon_data.cache_info().currsize, 'nltk' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "False"]


def _load_builder():
    path = ROOT / "tools" / "build_compliance_lexicon.py"
    spec = importlib.util.spec_from_file_location("build_compliance_lexicon", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _tiny_wordnet(folder: Path) -> None:
    """Five synsets in WordNet 3.0's database format: worn (head) with satellite shabby and antonym unworn;
    plastic with a kind, polypropylene; alloy with a kind, brass. And the noun door (a real word)."""
    adj = ["00000001 00 a 01 worn 0 002 & 00000002 a 0000 ! 00000003 a 0101 | affected by wear",
           "00000002 00 s 01 shabby 0 001 & 00000001 a 0000 | showing signs of wear",
           "00000003 00 a 01 unworn 0 001 ! 00000001 a 0101 | not worn"]  # fmt: skip
    noun = ["00000010 27 n 01 plastic 0 001 ~ 00000011 n 0000 | generic name for certain synthetic materials",
            "00000011 27 n 01 polypropylene 0 001 @ 00000010 n 0000 | a plastic",
            "00000020 27 n 02 alloy 0 metal 0 001 ~ 00000021 n 0000 | a mixture containing metallic elements",
            "00000021 27 n 01 brass 0 001 @ 00000020 n 0000 | an alloy of copper and zinc",
            "00000030 06 n 01 door 0 000 | a swinging barrier"]  # fmt: skip
    index_adj = ["worn a 1 0 1 0 00000001", "shabby a 1 0 1 0 00000002", "unworn a 1 0 1 0 00000003"]
    index_noun = ["plastic n 1 0 1 0 00000010", "polypropylene n 1 0 1 0 00000011", "alloy n 1 0 1 0 00000020",
                  "metal n 1 0 1 0 00000020", "brass n 1 0 1 0 00000021", "door n 1 0 1 0 00000030"]  # fmt: skip
    files = {"data.adj": adj, "data.noun": noun, "data.verb": [], "data.adv": [], "index.adj": index_adj,
             "index.noun": index_noun, "index.verb": [], "index.adv": [], "verb.exc": []}  # fmt: skip
    for name, lines in files.items():
        (folder / name).write_text("".join(line + "\n" for line in ["  licence header"] * bool(lines) + lines))


def test_the_builder_grows_seeds_through_wordnet_and_records_where_each_word_came_from(tmp_path):
    builder = _load_builder()
    _tiny_wordnet(tmp_path)
    seeds = {
        "conditions": [{"lemma": "worn", "pos": "a", "gloss": "affected by wear", "grade": "poor"}],
        "materials": [{"lemma": "plastic", "pos": "n", "gloss": "generic name", "material": "plastic"},
                      {"lemma": "alloy", "pos": "n", "gloss": "a mixture", "material": "other"}],
        "not_states": [],
    }  # fmt: skip
    lexicon = builder.build(builder.WordNet(tmp_path), seeds)
    assert lexicon["conditions"]["shabby"]["roots"] == {"worn": ["poor", "WordNet: a kind of worn"]}
    assert lexicon["conditions"]["unworn"]["roots"] == {"worn": ["good", "WordNet: the opposite of worn"]}
    assert lexicon["materials"]["polypropylene"]["roots"] == {"plastic": ["plastic", "WordNet: a kind of plastic"]}
    assert lexicon["materials"]["brass"]["roots"]["alloy"][0] == "other"
    assert lexicon["materials"]["metal"]["roots"]["alloy"][0] == "unclear"  # "metal" itself could be iron
    assert "plastic" not in lexicon["materials"]  # the regulation's own spelling is the rules' job
    assert "door" in lexicon["typo_exceptions"]
    assert builder.verb_forms(builder.WordNet(tmp_path), "corrode") == ["corroded", "corroding"]


def test_the_builder_adds_the_glossary_in_every_form_and_drops_what_the_rules_read_anyway(tmp_path):
    """A glossary verb in every participle, a frame as every combination of its parts, a word's own
    negation kept; a phrase whose regulation word already says what it means ("good condition", "carbon
    steel" when "carbon" reads nothing) is left to the rules, unless another of its words reads something."""
    builder = _load_builder()
    _tiny_wordnet(tmp_path)
    seeds = {"conditions": [], "materials": [], "not_states": []}
    glossary = {
        "conditions": {
            "fracture": {"grade": "poor", "words": ["hairline crack"], "verbs": ["crack"]},
            "remedy": {"grade": "poor", "frames": [["needs", "requires"], ["replacing", "repair"]]},
            "sound": {"grade": "good", "words": ["good condition"]},
            "new": {"grade": "excellent", "words": ["good as new"]},
            "usage": {"grade": "unclear", "negated": "excellent", "words": ["used"]},
            "surface": {"grade": "fair", "words": ["weathering"]},
        },
        "materials": {"steels": {"material": "steel", "words": ["weathering steel", "carbon steel"]}},
    }
    lexicon = builder.build(builder.WordNet(tmp_path), seeds, glossary)
    conditions, materials = lexicon["conditions"], lexicon["materials"]
    assert conditions["cracked"]["roots"] == {"fracture": ["poor", "glossary: fracture"]} and "cracking" in conditions
    assert {"needs replacing", "needs repair", "requires replacing", "requires repair"} <= set(conditions)
    assert conditions["used"]["roots"] == {"usage": ["unclear", "glossary: usage", "excellent"]}
    assert "good condition" not in conditions and "good as new" in conditions
    assert "weathering steel" in materials and "carbon steel" not in materials
    assert "" not in conditions
