"""Benchmark: the component-compliance classifier against the alternatives, on phrasings it never saw.

Simulates the notes of --cars cars, splits the labelled notes into --folds folds BY TEMPLATE (every
phrasing is held out once, never seen in training), and prints, per candidate, the accuracy and the
recall of non-compliant notes over the held-out folds (mean and worst fold). A note the candidate
sends to review counts as wrong. Candidates:

  chosen         the reader (years, typo-tolerant condition/material words, the regulation) and the
                 classifier must agree; otherwise review (`shared.compliance.classifier.score_components`)
  classifier     the same classifier alone, on the reader's normalised text (years as tokens)
  raw-text LR    the same logistic regression on the raw words (no reader): the plain text classifier
  raw-text NB    multinomial naive Bayes on word + char n-gram counts of the raw words
  rules          the reader's regulation verdict alone (undecidable → review)

Then the time to train the chosen model on all notes and to score them (CPU seconds: the steadier
figure on a shared machine), and the reader on words the simulator never writes (issue 17): accuracy,
recall of non-compliant notes and review rate on the development vocabularies (dev, test and fresh1-8:
all looked at while the reader was built) or those named by --vocabularies (the blind holdouts, the figures
that count, only when named: `--vocabularies holdout,holdout2,holdout3,holdout4`) (tests/compliance_vocabulary_*.json),
with the regulation's words only (an empty lexicon), with the lexicon (WordNet + workshop glossary) and its grammar,
with it less each phrase's own WordNet seeds, and with every phrase of the vocabulary held out of the
lexicon (what the grammar and the rest still read); and the lexicon's size and load time.

    .venv/bin/python bench/bench_compliance.py [--cars 1000] [--folds 5] [--seed 11] [--no-folds]
        [--vocabularies dev,test,fresh1,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.model_selection import GroupKFold
from sklearn.naive_bayes import MultinomialNB

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.compliance.classifier import (
    LABEL,
    NEEDS_REVIEW,
    NON_COMPLIANT,
    TEMPLATE,
    TEXT,
    TrainingParams,
    evaluate_unseen_vocabulary,
    fit_classifier,
    read_notes,
    score_components,
)
from shared.compliance.lexicon import LEXICON_FILE, Lexicon, default_lexicon, lexicon_data
from shared.devtools.fleet_simulator import simulate_components, simulate_vocabulary_notes

VOCABULARIES = Path(__file__).resolve().parent.parent / "tests"
DEVELOPMENT_VOCABULARIES = ("dev", "test", *(f"fresh{k}" for k in range(1, 9)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cars", type=int, default=1000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--vocabularies",
        default=",".join(DEVELOPMENT_VOCABULARIES),
        help="comma-separated vocabularies to measure (tests/compliance_vocabulary_<name>.json); the blind holdouts "
        "only when named (`--vocabularies holdout,holdout2,holdout3,holdout4`), so a development run never prints them",
    )
    parser.add_argument("--no-folds", action="store_true", help="skip the by-template folds (the vocabulary rows only)")
    args = parser.parse_args()

    components = simulate_components(np.array([f"CAR-{k:05d}" for k in range(1, args.cars + 1)]), args.seed)
    labelled = components[components[LABEL].notna()].reset_index(drop=True)
    y = labelled[LABEL].astype("int64").to_numpy()
    notes = read_notes(labelled[TEXT])
    raw = labelled[TEXT].str.lower().str.replace(r"[\W_]+", " ", regex=True).str.strip()
    print(f"{len(components):,} notes ({len(labelled):,} labelled, {y.mean():.0%} non-compliant), "
          f"{labelled[TEMPLATE].nunique()} templates, {args.folds} folds by template\n")  # fmt: skip

    params = TrainingParams()
    if not args.no_folds:
        _folds(labelled, y, notes, raw, params, args.folds)

    cpu = time.process_time()
    model, _ = fit_classifier(notes["normalized"], y, params)
    trained = time.process_time() - cpu
    cpu = time.process_time()
    score_components(model, components)
    scored = time.process_time() - cpu
    print(f"\ntrain on {len(labelled):,} notes: {trained:.2f} CPU s ({params.epochs} epochs, "
          f"{len(model.word_vocabulary):,} word + {len(model.char_vocabulary):,} char features); "
          f"score {len(components):,} notes: {scored:.2f} CPU s ({len(components) / scored:,.0f} notes/s)")  # fmt: skip
    _vocabulary(model, args.vocabularies.split(","))


def _folds(
    labelled: pd.DataFrame, y: np.ndarray, notes: pd.DataFrame, raw: pd.Series, params: TrainingParams, folds: int
) -> None:
    """The candidates' accuracy and recall over folds split by template (phrasings never seen in training)."""
    scores: dict[str, list[tuple[float, float]]] = {}
    for train, test in GroupKFold(n_splits=folds).split(labelled, y, labelled[TEMPLATE]):
        model, _ = fit_classifier(notes["normalized"].iloc[train], y[train], params)
        results = score_components(model, labelled.iloc[test])
        chosen = np.where(results[NEEDS_REVIEW] == 1, -1, results[NON_COMPLIANT].fillna(-1).astype(int))
        raw_model, _ = fit_classifier(raw.iloc[train], y[train], params)
        predictions = {
            "chosen (reader + classifier agree)": chosen,
            "classifier alone (reader-normalised)": (model.probability(notes["normalized"].iloc[test]) >= 0.5) * 1,
            "raw-text LR (no reader)": (raw_model.probability(raw.iloc[test]) >= 0.5) * 1,
            "raw-text naive Bayes": _naive_bayes(raw.iloc[train], y[train], raw.iloc[test]),
            "rules alone (reader verdict)": notes["verdict"].iloc[test].fillna(-1).astype(int).to_numpy(),
        }
        for name, predicted in predictions.items():
            truth = y[test]
            scores.setdefault(name, []).append(((predicted == truth).mean(), (predicted[truth == 1] == 1).mean()))

    print("| candidate | accuracy (mean / worst fold) | recall non-compliant (mean / worst fold) |")
    print("| --- | --- | --- |")
    for name, folds in scores.items():
        accuracy, recall = np.array(folds).T
        print(f"| {name} | {accuracy.mean():.4f} / {accuracy.min():.4f} | {recall.mean():.4f} / {recall.min():.4f} |")


def _vocabulary(model, names: list[str]) -> None:
    lexicon_data.cache_clear()  # time the first use, as a cold Function App sees it
    default_lexicon.cache_clear()
    start = time.perf_counter()
    lexicon = default_lexicon()
    loaded = time.perf_counter() - start
    print(f"\nlexicon {LEXICON_FILE.name}: {LEXICON_FILE.stat().st_size / 1024:.0f} KB, {len(lexicon.conditions)} "
          f"condition and {len(lexicon.materials)} material phrases, loaded in {loaded * 1000:.0f} ms\n")  # fmt: skip
    print(
        "| vocabulary | reader | accuracy | recall non-compliant | review rate | accuracy of decided | "
        "undecidable decided |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    empty = Lexicon(conditions={}, materials={}, typo_exceptions=frozenset())
    for which in names:
        path = VOCABULARIES / f"compliance_vocabulary_{which}.json"
        notes = simulate_vocabulary_notes(vocabulary := json.loads(path.read_text()), seed=17)
        own = [
            phrase for kind in ("conditions", "materials") for group in vocabulary[kind].values() for phrase in group
        ]
        rows = {
            "regulation words only": evaluate_unseen_vocabulary(model, notes, lexicon=empty)[0],
            "lexicon (WordNet + glossary) and grammar": evaluate_unseen_vocabulary(model, notes, hold_out_seeds=False)[
                0
            ],
            "the same, the phrase's WordNet seeds held out": evaluate_unseen_vocabulary(model, notes)[0],
            "the same, every phrase of the vocabulary held out of the lexicon": evaluate_unseen_vocabulary(
                model, notes, lexicon=lexicon.without(own)
            )[0],
        }
        for reader, m in rows.items():
            print(f"| {which} ({m['notes']:.0f} notes) | {reader} | {m['accuracy']:.3f} "
                  f"| {m['recall_non_compliant']:.3f} | {m['review_rate']:.1%} | {m['decided_accuracy']:.4f} "
                  f"| {m['undecidable_decided']:.1%} |")  # fmt: skip


def _naive_bayes(train_text: pd.Series, y: np.ndarray, test_text: pd.Series) -> np.ndarray:
    word = CountVectorizer(token_pattern=r"\S+").fit(train_text)
    char = CountVectorizer(analyzer="char_wb", ngram_range=(2, 5)).fit(train_text)

    def counts(text: pd.Series) -> sparse.csr_matrix:
        return sparse.hstack([word.transform(text), char.transform(text)], format="csr")

    return MultinomialNB().fit(counts(train_text), y).predict(counts(test_text))


if __name__ == "__main__":
    main()
