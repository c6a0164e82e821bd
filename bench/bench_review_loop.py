"""Benchmark: how fast answering the review worklist takes a workshop's notes out of review.

A workshop whose words the lexicon lacks: each vocabulary (tests/compliance_vocabulary_*.json) with every
one of its phrases held out of the lexicon (`Lexicon.without`), or, with --as-shipped, the lexicon as it
is (on the blind holdouts: a workshop nobody fixed the reader for). Its first month of notes (seed 17) is
scored and its worklist made (`shared.compliance.review.review_worklist`); a reviewer goes down the list
and, for each word, reads its example note and writes down the phrase of the slot the note lacks that holds
the word, with the meaning the vocabulary's author gave it (a word in no such phrase, a part or template
word, is skipped: it has no answer). The answers, as a site glossary over the same lexicon, read the next
month's notes (seed 18: the same workshop's words, other notes). Per vocabulary and number of worklist
words looked at, the next month's accuracy, review rate, accuracy of decided notes and share of the notes a
person could not decide that were decided, as `bench_compliance.py` prints them.

    .venv/bin/python bench/bench_review_loop.py [--vocabularies dev,test,fresh1,...] [--looked-at 10,25,50]
        [--as-shipped]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.compliance.classifier import (
    SITE_GLOSSARY,
    TEXT,
    default_lexicon,
    evaluate_unseen_vocabulary,
    score_components,
    train_classifier,
)
from shared.compliance.lexicon import phrase_of
from shared.compliance.review import SECTIONS, review_worklist
from shared.devtools.fleet_simulator import simulate_components, simulate_vocabulary_notes

VOCABULARIES = Path(__file__).resolve().parents[1] / "tests"
DEVELOPMENT = "dev,test,fresh1,fresh2,fresh3,fresh4,fresh5,fresh6,fresh7,fresh8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabularies", default=DEVELOPMENT)
    parser.add_argument("--looked-at", default="10,25,50", help="worklist words the reviewer looks at")
    parser.add_argument("--as-shipped", action="store_true",
                        help="read with the lexicon as shipped (no phrase held out of it)")  # fmt: skip
    args = parser.parse_args()
    model = train_classifier(simulate_components(np.array([f"CAR-{k:05d}" for k in range(1, 601)]), seed=7)).model
    print("| vocabulary | worklist words looked at | answers | accuracy | review rate | accuracy of decided | "
          "undecidable decided |\n| --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for name in args.vocabularies.split(","):
        vocabulary = json.loads((VOCABULARIES / f"compliance_vocabulary_{name}.json").read_text())
        meaning = {(SECTIONS[section], phrase): grade for section in SECTIONS
                   for grade, phrases in vocabulary[section].items() for phrase in phrases}  # fmt: skip
        workshop = default_lexicon() if args.as_shipped else default_lexicon().without([p for _, p in meaning])
        this_month = simulate_vocabulary_notes(vocabulary, seed=17)
        next_month = simulate_vocabulary_notes(vocabulary, seed=18)
        cpu = time.process_time()
        worklist = review_worklist(this_month, score_components(model, this_month, workshop), workshop)
        listed = time.process_time() - cpu
        steps = sorted({0, *(min(int(k), len(worklist)) for k in args.looked_at.split(",")), len(worklist)})
        for looked_at in steps:
            answers = _answers(worklist.head(looked_at), this_month, meaning)
            reader = workshop.with_entries(answers, SITE_GLOSSARY)
            m = evaluate_unseen_vocabulary(model, next_month, hold_out_seeds=False, lexicon=reader)[0]
            print(f"| {name} ({m['notes']:.0f} notes, {len(worklist)} words listed in {listed:.1f} CPU s) | "
                  f"{looked_at} | {sum(map(len, answers.values()))} | {m['accuracy']:.3f} | {m['review_rate']:.1%} | "
                  f"{m['decided_accuracy']:.4f} | {m['undecidable_decided']:.1%} |")  # fmt: skip


def _answers(worklist: pd.DataFrame, notes: pd.DataFrame, meaning: dict[tuple[str, str], str]) -> dict:
    """What the reviewer writes for each word (kind → phrase → meaning): the example note's phrase that holds
    it, with the vocabulary's meaning (the simulated notes keep the phrase each slot was written from)."""
    answers: dict[str, dict[str, str]] = {}
    for row in worklist.itertuples(index=False):
        note = notes[notes[TEXT] == row.example].iloc[0]
        for kind in SECTIONS.values():
            phrase = note[f"{kind}_phrase"]
            if row.word in phrase_of(phrase).split() and (kind, phrase) in meaning:
                answers.setdefault(kind, {})[phrase_of(phrase)] = meaning[kind, phrase]
    return answers


if __name__ == "__main__":
    main()
