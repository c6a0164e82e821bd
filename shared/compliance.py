"""Component compliance: Trey Research's regulation, read out of technicians' notes, and the alerts it raises.

The regulation: a component is out of compliance (label 1) when it was manufactured before 1995, or is in
fair or poor condition, or is made with plastic or iron. Technicians describe every component in a short
free-text note ("Manufactured in 1985 made of steel in fair condition"). Each note is read twice, by two
readers that fail differently, and a verdict is issued only when both agree:

* The reader (rules, transparent): finds the manufacturing year, however it is written (1985, '85,
  nineteen eighty-five), and the condition and material words, tolerating a one-letter typo, then applies
  the regulation to what the note states. Years are its job because a model of words cannot compare a
  year with 1995. It also decides whether the note says enough to apply the regulation at all: a note
  that is empty, gibberish, or silent on what would decide it cannot be decided.
* The classifier (learned): logistic regression, trained by SGD, on word and character n-grams of the
  note, with each year the reader found replaced by one of two tokens (before 1995 / 1995 or later). It
  reads the wording with no vocabulary of its own, so it is not fooled the way the reader is (a "door"
  hinge is not "poor"), and it explains each prediction by the words that pushed it.
* The verdict: when the reader cannot decide, or the two disagree, the note is "needs review" with the
  reason, neither alerted nor guessed nor dropped.

Scoring is vectorised over the catalogue; the only Python loops run over distinct words (typo matching,
a few thousand) and over year expressions, never over components. Model files are JSON + NumPy arrays
(no pickle), so a model directory can be read by anyone and loaded safely.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss
from sklearn.model_selection import GroupShuffleSplit
from sklearn.preprocessing import normalize

from shared.alerts import DAYS_TO_RATED_LIFE, HIGH, MODEL_VERSION, PROBABILITY, REASONS
from shared.telemetry import CAR_ID, InputError, read_csv_text

# --- the regulation and its vocabulary ------------------------------------------------------------------

CUTOFF_YEAR = 1995  # manufactured before this year: out of compliance
CONDITIONS = ("excellent", "good", "fair", "poor")
MATERIALS = ("steel", "aluminum", "carbon fiber", "titanium", "copper", "plastic", "iron")
NON_COMPLIANT_CONDITIONS = ("fair", "poor")
NON_COMPLIANT_MATERIALS = ("plastic", "iron")

# How notes spell each material (the simulator writes these, the reader recognises them).
MATERIAL_SPELLINGS: dict[str, tuple[str, ...]] = {
    "steel": ("steel", "stainless steel"),
    "aluminum": ("aluminum", "aluminium"),
    "carbon fiber": ("carbon fiber", "carbon fibre", "carbon-fiber"),
    "titanium": ("titanium",),
    "copper": ("copper",),
    "plastic": ("plastic", "ABS plastic"),
    "iron": ("iron", "cast iron"),
}
CONDITION_SPELLINGS: dict[str, tuple[str, ...]] = {condition: (condition,) for condition in CONDITIONS}

# Number words for years written out ("nineteen eighty-five", "two thousand and ten", "twenty twelve").
UNITS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen")  # fmt: skip
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
APOSTROPHES = "'’‘`"
TWO_DIGIT_CENTURY_PIVOT = 30  # '29 is 2029, '30 is 1930

# --- files ------------------------------------------------------------------------------------------------

COMPONENT_ID = "Component_ID"
TEXT = "text"
LABEL = "label"  # 1 non-compliant, 0 compliant, empty: the note cannot be decided (needs review)
TEMPLATE = "template"  # optional: the phrasing a note was written from, to hold phrasings out of training
COMPONENT_COLUMNS = [COMPONENT_ID, CAR_ID, TEXT, LABEL]  # components.csv (fixed)
SCORE_INPUT_COLUMNS = [COMPONENT_ID, CAR_ID, TEXT]
NON_COMPLIANT = "non_compliant"
NEEDS_REVIEW = "needs_review"
REASON = "reason"
RESULT_COLUMNS = [COMPONENT_ID, CAR_ID, NON_COMPLIANT, "probability", NEEDS_REVIEW, REASON]  # fixed

MODEL_FILE = "compliance_model.json"
WEIGHTS_FILE = "compliance_weights.npz"
MODEL_KIND = "component_compliance"
EXPERIMENT = "component-compliance"

COMPONENT_COMPLIANCE = "component_compliance"  # the alert type
COMPLIANCE_TITLE = "Component replacement required"
WORDS = "; words: "  # separates a reason's finding from the words that drove the classifier
TOP_WORDS = 3
DECISION_PROBABILITY = 0.5
YEAR_BEFORE_TOKEN = f"yrlt{CUTOFF_YEAR}"  # the classifier sees these instead of the year itself
YEAR_FROM_TOKEN = f"yrge{CUTOFF_YEAR}"


def violates_regulation(year: pd.Series, condition: pd.Series, material: pd.Series) -> pd.Series:
    """The regulation applied to what is known: 1 if anything known disqualifies, 0 if all three are known
    and none does, <NA> if what is known complies but something is unknown (Int64)."""
    known_year = pd.to_numeric(year, errors="coerce").astype("Float64")
    disqualified = (
        (known_year < CUTOFF_YEAR).fillna(False)
        | condition.isin(NON_COMPLIANT_CONDITIONS)
        | material.isin(NON_COMPLIANT_MATERIALS)
    )
    complete = known_year.notna() & condition.notna() & material.notna()
    verdict = pd.Series(pd.NA, index=year.index, dtype="Int64")
    verdict[complete] = 0
    verdict[disqualified] = 1
    return verdict


# --- the reader ---------------------------------------------------------------------------------------------

_SEP = r"[\s-]+"
_UNIT = f"(?:{'|'.join(UNITS)})"
_TWO_DIGITS = rf"(?:(?:{'|'.join(TENS)})(?:{_SEP}{_UNIT})?|{'|'.join(TEENS)}|oh{_SEP}{_UNIT})"
_SPELLED_YEAR = (
    rf"\b(?:nineteen{_SEP}{_TWO_DIGITS}"
    rf"|two{_SEP}thousand(?:{_SEP}and)?(?:{_SEP}(?:{_TWO_DIGITS}|{_UNIT}))?"
    rf"|twenty{_SEP}{_TWO_DIGITS})\b"
)
YEAR_PATTERN = re.compile(
    rf"(?<![\w/-])(?:19|20)\d\d(?![\w/-])"  # 1985, not part of a date (2016-03-04) or a part number
    rf"|(?<!\w)[{APOSTROPHES}]\d\d(?!\w)"  # '85
    rf"|{_SPELLED_YEAR}"
)
_NUMBER_VALUES = {
    "oh": 0,
    **{word: value for value, word in enumerate(UNITS, 1)},
    **{word: value for value, word in enumerate(TEENS, 10)},
    **{word: value for value, word in zip(range(20, 100, 10), TENS, strict=True)},
}
# Bare condition/material words; a note word one edit away from exactly one of them is read as it.
_VOCABULARY = {
    word
    for spellings in (*MATERIAL_SPELLINGS.values(), *CONDITION_SPELLINGS.values())
    for spelling in spellings
    for word in re.split(r"[\W_]+", spelling.lower())
}
_MIN_TYPO_LENGTH = 4  # shorter words are too often other words ("far" is not "fair")


def year_value(expression: str) -> int:
    """The year an expression matched by YEAR_PATTERN stands for: '85 → 1985, "twenty ten" → 2010."""
    text = expression.strip().lower()
    if text[0] in APOSTROPHES:
        two_digits = int(text[1:])
        return (1900 if two_digits >= TWO_DIGIT_CENTURY_PIVOT else 2000) + two_digits
    if text.isdigit():
        return int(text)
    words = [word for word in re.split(_SEP, text) if word != "and"]
    if words[:2] == ["two", "thousand"]:
        return 2000 + sum(_NUMBER_VALUES[word] for word in words[2:])
    century = 1900 if words[0] == "nineteen" else 2000
    return century + sum(_NUMBER_VALUES[word] for word in words[1:])


def read_notes(texts: pd.Series) -> pd.DataFrame:
    """What each note states, as the reader reads it; one row per note, same index.

    Columns: normalized (the classifier's input: lower case, words and numbers only, years as tokens),
    year (Int64, <NA> unless exactly one year is stated), year_text (as written), years (all distinct
    years stated, comma-separated), condition and material (the regulation's words, <NA> when not
    stated; a disqualifying one wins when several are), verdict (`violates_regulation` of those).
    """
    lowered = texts.astype("string").fillna("").str.lower()
    matches = lowered.str.extractall(f"({YEAR_PATTERN.pattern})")[0]
    values = matches.map(year_value)
    distinct = values.groupby(level=0).unique()
    years = distinct.map(lambda found: ", ".join(str(y) for y in sorted(found))).reindex(texts.index)
    single = distinct[distinct.map(len) == 1].map(lambda found: found[0])
    year = single.reindex(texts.index).astype("Int64")
    year_text = matches.groupby(level=0).first().reindex(texts.index).where(year.notna())

    with_tokens = lowered.str.replace(YEAR_PATTERN, _year_token, regex=True)
    normalized = with_tokens.str.replace(r"[\W_]+", " ", regex=True).str.strip()
    corrected = _correct_typos(normalized)
    condition = _stated(normalized, corrected, CONDITION_SPELLINGS, NON_COMPLIANT_CONDITIONS)
    material = _stated(normalized, corrected, MATERIAL_SPELLINGS, NON_COMPLIANT_MATERIALS)
    return pd.DataFrame({
        "normalized": normalized.astype(object),
        "year": year,
        "year_text": year_text.astype(object),
        "years": years.astype(object),
        "condition": condition,
        "material": material,
        "verdict": violates_regulation(year, condition, material),
    })


def _year_token(match: re.Match) -> str:
    return f" {YEAR_BEFORE_TOKEN if year_value(match.group(0)) < CUTOFF_YEAR else YEAR_FROM_TOKEN} "


def _stated(
    normalized: pd.Series, corrected: pd.Series, spellings: Mapping[str, tuple[str, ...]], disqualifying: tuple
) -> pd.Series:
    """The regulation word each note states (exact spellings first, typo-corrected ones only if none)."""
    meaning = {
        re.sub(r"[\W_]+", " ", spelling.lower()): word for word, forms in spellings.items() for spelling in forms
    }
    pattern = r"\b(" + "|".join(re.escape(s) for s in sorted(meaning, key=len, reverse=True)) + r")\b"

    def first_stated(text: pd.Series) -> pd.Series:
        found = text.str.extractall(pattern)[0].map(meaning).rename("word").reset_index()
        found["clean"] = ~found["word"].isin(disqualifying)
        picked = found.sort_values(["level_0", "clean", "match"]).drop_duplicates("level_0")
        return picked.set_index("level_0")["word"].reindex(text.index)

    exact = first_stated(normalized)
    return exact.combine_first(first_stated(corrected)).astype(object).where(lambda s: s.notna(), None)


def _correct_typos(normalized: pd.Series) -> pd.Series:
    """The notes with each word one edit away from exactly one vocabulary word replaced by it."""
    words = pd.Series(normalized.str.split().explode().dropna().unique(), dtype=object)
    unknown = words[words.str.isalpha() & (words.str.len() >= _MIN_TYPO_LENGTH) & ~words.isin(_VOCABULARY)]
    corrections = {}
    for word in unknown:  # distinct words, not notes
        near = [known for known in _VOCABULARY if len(known) >= _MIN_TYPO_LENGTH and _one_edit_apart(word, known)]
        if len(near) == 1:
            corrections[word] = near[0]
    if not corrections:
        return normalized
    pattern = r"\b(" + "|".join(sorted(corrections, key=len, reverse=True)) + r")\b"
    return normalized.str.replace(pattern, lambda m: corrections[m.group(0)], regex=True)


def _one_edit_apart(a: str, b: str) -> bool:
    """One substitution, insertion, deletion or swap of neighbours turns `a` into `b` (and a != b)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        swapped = len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        return len(diff) == 1 or swapped
    shorter, longer = sorted((a, b), key=len)
    i = next((i for i, (x, y) in enumerate(zip(shorter, longer, strict=False)) if x != y), len(shorter))
    return shorter[i:] == longer[i + 1 :]


# --- the classifier ---------------------------------------------------------------------------------------

CHAR_NGRAMS = (2, 5)


@dataclass(frozen=True)
class TrainingParams:
    """How the classifier is trained (all logged to MLflow)."""

    learning_rate: float = 0.05  # SGD step size (constant schedule)
    alpha: float = 1e-5  # L2 regularisation strength
    epochs: int = 30
    validation_share: float = 0.25  # of templates (phrasings) held out to evaluate
    seed: int = 0


@dataclass(frozen=True, eq=False)
class ComplianceModel:
    """Logistic regression over tf-idf word unigrams and character 2-5-grams (within words) of a note.

    Every feature belongs to one word of the note, so the logit splits exactly into per-word
    contributions (`word_contributions`): those are the explanation.
    """

    word_vocabulary: np.ndarray
    word_idf: np.ndarray
    char_vocabulary: np.ndarray
    char_idf: np.ndarray
    coef: np.ndarray  # word features, then char features
    intercept: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """A digest of the weights: the same training data and parameters give the same version."""
        digest = hashlib.sha256()
        for array in (self.word_vocabulary, self.char_vocabulary, self.coef, np.array([self.intercept])):
            digest.update(np.ascontiguousarray(array).tobytes())
        return "cmp-" + digest.hexdigest()[:12]

    def probability(self, normalized: pd.Series) -> np.ndarray:
        """P(non-compliant) for notes as `read_notes` normalises them."""
        return 1.0 / (1.0 + np.exp(-self.logit(normalized)))

    def logit(self, normalized: pd.Series) -> np.ndarray:
        return self.features(normalized) @ self.coef + self.intercept

    def features(self, normalized: pd.Series) -> sparse.csr_matrix:
        word, char = self._weighted_counts(normalized)
        return sparse.hstack([normalize(word), normalize(char)], format="csr")

    def word_contributions(self, normalized: pd.Series) -> pd.DataFrame:
        """Each word's share of each note's logit (row, word, contribution); with the intercept they sum
        to the logit. A word's share is its unigram's and its character n-grams' coef × tf-idf value."""
        word_part, char_part = self._weighted_counts(normalized)
        word_norm = sparse.linalg.norm(word_part, axis=1)
        char_norm = sparse.linalg.norm(char_part, axis=1)
        words = normalized.reset_index(drop=True).str.split().explode().dropna()
        distinct = pd.Index(words.unique())
        word_raw, char_raw = self._weighted_counts(pd.Series(distinct, dtype=object))
        n_words = len(self.word_vocabulary)
        own_word = pd.Series(word_raw @ self.coef[:n_words], index=distinct)
        own_chars = pd.Series(char_raw @ self.coef[n_words:], index=distinct)
        rows = words.index.to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            contribution = (
                np.nan_to_num(own_word[words].to_numpy() / word_norm[rows])
                + np.nan_to_num(own_chars[words].to_numpy() / char_norm[rows])
            )
        return pd.DataFrame({"row": rows, "word": words.to_numpy(), "contribution": contribution})

    def _weighted_counts(self, normalized: pd.Series) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        text = normalized.astype(object).fillna("")
        word = self._word_counter.transform(text).multiply(self.word_idf).tocsr()
        char = self._char_counter.transform(text).multiply(self.char_idf).tocsr()
        return word, char

    @cached_property
    def _word_counter(self) -> CountVectorizer:
        return CountVectorizer(vocabulary=_index(self.word_vocabulary), **_WORD_ANALYZER)

    @cached_property
    def _char_counter(self) -> CountVectorizer:
        return CountVectorizer(vocabulary=_index(self.char_vocabulary), **_CHAR_ANALYZER)

    def with_metadata(self, **entries: Any) -> ComplianceModel:
        return replace(self, metadata={**self.metadata, **entries})

    def save(self, model_dir: str | Path) -> Path:
        """Write compliance_model.json (version, parameters, metrics) and compliance_weights.npz."""
        folder = Path(model_dir)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            folder / WEIGHTS_FILE,
            word_vocabulary=self.word_vocabulary, word_idf=self.word_idf,
            char_vocabulary=self.char_vocabulary, char_idf=self.char_idf,
            coef=self.coef, intercept=np.array([self.intercept]),
        )  # fmt: skip
        metadata = {"kind": MODEL_KIND, "version": self.version, **self.metadata}
        (folder / MODEL_FILE).write_text(json.dumps(metadata, indent=2, default=str))
        return folder


_WORD_ANALYZER = {"analyzer": "word", "token_pattern": r"\S+", "lowercase": False}
_CHAR_ANALYZER = {"analyzer": "char_wb", "ngram_range": CHAR_NGRAMS, "lowercase": False}


def _index(vocabulary: np.ndarray) -> dict[str, int]:
    return {term: position for position, term in enumerate(vocabulary.tolist())}


def load_model(model_dir: str | Path) -> ComplianceModel:
    """The classifier saved in `model_dir`, or `InputError` naming what is missing."""
    folder = Path(model_dir)
    missing = [name for name in (MODEL_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: not a compliance model directory (missing {', '.join(missing)})")
    metadata = json.loads((folder / MODEL_FILE).read_text())
    if metadata.pop("kind", None) != MODEL_KIND:
        raise InputError(f"{folder / MODEL_FILE}: not a {MODEL_KIND} model")
    saved_version = metadata.pop("version", None)
    with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as weights:
        model = ComplianceModel(
            word_vocabulary=weights["word_vocabulary"], word_idf=weights["word_idf"],
            char_vocabulary=weights["char_vocabulary"], char_idf=weights["char_idf"],
            coef=weights["coef"], intercept=float(weights["intercept"][0]), metadata=metadata,
        )  # fmt: skip
    if model.version != saved_version:
        raise InputError(f"{folder}: weights do not match the recorded version {saved_version}")
    return model


@dataclass(frozen=True)
class TrainingResult:
    """model: fitted on every labelled note. curves: per epoch, train/validation loss and accuracy of the
    fit on the training templates only. metrics: of that fit, on the held-out templates."""

    model: ComplianceModel
    curves: pd.DataFrame
    metrics: dict[str, float]


def train_classifier(components: pd.DataFrame, params: TrainingParams = TrainingParams()) -> TrainingResult:
    """Hold out a share of the phrasings, fit and evaluate on them, then refit on every labelled note.

    Notes without a label (undecidable ones) are left out and counted. Phrasings are the `template`
    column when there is one; without it the held-out share is of notes, and `split` says so.
    """
    labelled = components[components[LABEL].notna()].reset_index(drop=True)
    if labelled[LABEL].nunique() < 2:
        raise InputError(f"{LABEL}: training needs both compliant (0) and non-compliant (1) notes")
    notes = read_notes(labelled[TEXT])
    y = labelled[LABEL].astype("int64").to_numpy()
    by_template = TEMPLATE in labelled.columns
    groups = labelled[TEMPLATE].astype(str) if by_template else labelled.index.astype(str)
    splitter = GroupShuffleSplit(n_splits=1, test_size=params.validation_share, random_state=params.seed)
    train, held_out = next(splitter.split(labelled, y, groups))

    model, curves = _fit(notes["normalized"].iloc[train], y[train], params,
                         validation=(notes["normalized"].iloc[held_out], y[held_out]))  # fmt: skip
    results = score_components(model, labelled.iloc[held_out])
    decided = results[NEEDS_REVIEW].to_numpy() == 0
    right = decided & (results[NON_COMPLIANT].fillna(-1).to_numpy() == y[held_out])
    positive = y[held_out] == 1
    probability = results["probability"].to_numpy()
    metrics = {
        "eval_loss": float(log_loss(y[held_out], probability, labels=[0, 1])),
        "eval_accuracy": float(right.mean()),  # a labelled note sent to review counts as wrong
        "eval_recall_non_compliant": float(right[positive].mean()),
        "eval_review_rate": float(1.0 - decided.mean()),
        "eval_classifier_accuracy": float(((probability >= DECISION_PROBABILITY) == y[held_out]).mean()),
        "eval_notes": float(len(held_out)),
        "train_notes": float(len(train)),
        "unlabelled_notes_skipped": float(len(components) - len(labelled)),
    }
    final, _ = _fit(notes["normalized"], y, params)
    split = {"split": "template" if by_template else "note", "held_out_groups": sorted(set(groups.iloc[held_out]))}
    final = final.with_metadata(
        params=asdict(params), metrics=metrics, **split, trained_at=datetime.now(UTC).isoformat(timespec="seconds")
    )
    return TrainingResult(model=final, curves=curves, metrics=metrics)


def _fit(
    text: pd.Series, y: np.ndarray, params: TrainingParams, validation: tuple[pd.Series, np.ndarray] | None = None
) -> tuple[ComplianceModel, pd.DataFrame]:
    """Learn the vocabularies and idf on `text`, then SGD epochs of logistic loss, recording the curves."""
    word = TfidfVectorizer(**_WORD_ANALYZER).fit(text)
    char = TfidfVectorizer(**_CHAR_ANALYZER).fit(text)
    untrained = ComplianceModel(
        word_vocabulary=np.array(word.get_feature_names_out(), dtype=str), word_idf=word.idf_,
        char_vocabulary=np.array(char.get_feature_names_out(), dtype=str), char_idf=char.idf_,
        coef=np.zeros(len(word.idf_) + len(char.idf_)), intercept=0.0,
    )  # fmt: skip
    x = untrained.features(text)
    sets = {"train": (x, y)}
    if validation is not None:
        sets["validation"] = (untrained.features(validation[0]), validation[1])
    sgd = SGDClassifier(loss="log_loss", alpha=params.alpha, learning_rate="constant", eta0=params.learning_rate,
                        random_state=params.seed)  # fmt: skip
    curves = []
    for epoch in range(1, params.epochs + 1):
        sgd.partial_fit(x, y, classes=np.array([0, 1]))
        point = {"epoch": epoch}
        for name, (features, truth) in sets.items():
            probability = sgd.predict_proba(features)[:, 1]
            point[f"{name}_loss"] = log_loss(truth, probability, labels=[0, 1])
            point[f"{name}_accuracy"] = float(((probability >= DECISION_PROBABILITY) == truth).mean())
        curves.append(point)
    model = replace(untrained, coef=sgd.coef_[0].copy(), intercept=float(sgd.intercept_[0]))
    return model, pd.DataFrame(curves).set_index("epoch")


# --- scoring ------------------------------------------------------------------------------------------------


def score_components(model: ComplianceModel, components: pd.DataFrame) -> pd.DataFrame:
    """Component_ID, Car_ID, non_compliant, probability, needs_review, reason for each component.

    non_compliant is 1/0 where the reader's regulation verdict and the classifier agree, <NA> (Int64)
    where the note needs review; needs_review is 1/0; probability is the classifier's P(non-compliant),
    shown for every note (a reviewer's hint, not a verdict). The reason states the finding and the
    words that drove the classifier, or why the note needs review.
    """
    missing = [column for column in SCORE_INPUT_COLUMNS if column not in components.columns]
    if missing:
        raise InputError(f"components: missing column(s): {', '.join(missing)}")
    components = components.reset_index(drop=True)
    notes = read_notes(components[TEXT])
    probability = model.probability(notes["normalized"])
    classifier_says = pd.Series((probability >= DECISION_PROBABILITY).astype("int64"))
    verdict = notes["verdict"]
    agreed = (verdict == classifier_says).fillna(False).astype(bool)
    words = _top_words(model, notes, classifier_says)
    finding = _finding(notes)
    reason = np.select(
        [agreed, verdict.isna().to_numpy()],
        [finding, _undecided_reason(notes, components[TEXT])],
        default="needs review: the classifier (p=" + pd.Series(probability).round(2).astype(str)
        + ") disagrees with the reading '" + finding + "'",
    )  # fmt: skip
    reason = pd.Series(reason, dtype=object).where(words == "", reason + WORDS + words)
    return pd.DataFrame({
        COMPONENT_ID: components[COMPONENT_ID].astype(object),
        CAR_ID: components[CAR_ID].astype(object),
        NON_COMPLIANT: verdict.where(agreed).astype("Int64"),
        "probability": np.round(probability, 4),
        NEEDS_REVIEW: (~agreed).astype("int64"),
        REASON: reason,
    })[RESULT_COLUMNS]


def _finding(notes: pd.DataFrame) -> pd.Series:
    """What the reader found, in words: the disqualifying facts, or every fact when all of them comply."""
    old = (notes["year"] < CUTOFF_YEAR).fillna(False).to_numpy()
    facts = pd.DataFrame({
        "year": "made " + notes["year"].astype("string")
        + np.where(old, f" (before {CUTOFF_YEAR})", f" ({CUTOFF_YEAR} or later)"),
        "condition": notes["condition"].astype("string") + " condition",
        "material": notes["material"].astype("string"),
    })
    disqualifying = np.column_stack([
        old, notes["condition"].isin(NON_COMPLIANT_CONDITIONS), notes["material"].isin(NON_COMPLIANT_MATERIALS)
    ])
    non_compliant = (notes["verdict"] == 1).fillna(False).to_numpy()
    shown = _joined(facts.where(disqualifying | ~non_compliant[:, None]))
    return pd.Series(np.where(non_compliant, "non-compliant: ", "compliant: "), index=notes.index) + shown


def _undecided_reason(notes: pd.DataFrame, texts: pd.Series) -> pd.Series:
    """Why the regulation cannot be applied to a note."""
    unstated = pd.DataFrame({
        "manufacturing year": notes["year"].isna(), "condition": notes["condition"].isna(),
        "material": notes["material"].isna(),
    })  # fmt: skip
    unstated_names = _joined(unstated.apply(lambda column: column.map({True: column.name, False: pd.NA})))
    empty = texts.astype("string").fillna("").str.strip() == ""
    reason = np.select(
        [empty.to_numpy(), unstated.all(axis=1).to_numpy() & notes["years"].isna().to_numpy(),
         notes["years"].str.contains(",", regex=False).fillna(False).to_numpy(dtype=bool)],
        ["needs review: the note is empty",
         "needs review: the note states no manufacturing year, condition or material",
         "needs review: several years stated (" + notes["years"].fillna("") + ") and nothing else disqualifies it"],
        default="needs review: no " + unstated_names + " stated, and what is stated complies",
    )  # fmt: skip
    return pd.Series(reason, index=notes.index, dtype=object)


def _top_words(model: ComplianceModel, notes: pd.DataFrame, classifier_says: pd.Series) -> pd.Series:
    """Per note, the words that pushed the classifier hardest towards its answer: "plastic (+1.84), ..."."""
    parts = model.word_contributions(notes["normalized"])
    parts = parts.groupby(["row", "word"], as_index=False, sort=False)["contribution"].sum()
    towards = np.where(classifier_says.to_numpy()[parts["row"]] == 1, 1.0, -1.0) * parts["contribution"]
    top = parts[towards > 0].assign(push=towards).sort_values(["row", "push"], ascending=[True, False])
    top = top.groupby("row").head(TOP_WORDS)
    year_text = notes["year_text"].fillna("year").to_numpy(dtype=object)[top["row"]]
    shown = np.select(
        [top["word"] == YEAR_BEFORE_TOKEN, top["word"] == YEAR_FROM_TOKEN],
        [year_text + f" (before {CUTOFF_YEAR})", year_text + f" ({CUTOFF_YEAR} or later)"],
        default=top["word"].to_numpy(dtype=object),
    )
    labelled = shown + " (" + top["contribution"].map("{:+.2f}".format).to_numpy(dtype=object) + ")"
    joined = pd.Series(labelled, index=top["row"].to_numpy()).groupby(level=0).agg(", ".join)
    return joined.reindex(range(len(notes)), fill_value="").set_axis(notes.index).astype(object)


def _joined(frame: pd.DataFrame) -> pd.Series:
    """Each row's non-missing cells joined with ", " ("" when none)."""
    stacked = frame.astype(object).stack().dropna()
    return stacked.groupby(level=0).agg(", ".join).reindex(frame.index, fill_value="").astype(object)


# --- alerts -------------------------------------------------------------------------------------------------


def compliance_alert_content(results: pd.DataFrame, day: date | str, model_version: str) -> pd.DataFrame:
    """One alert's content per car with non-compliant parts, for `shared.alerts.build_alerts(content,
    COMPONENT_COMPLIANCE, created_at, action_url)`. Notes that need review are not alerted.

    battery_id (the contract's required id) carries the car's non-compliant Component_IDs, comma-separated,
    so the alert id changes when the set of parts does; failure_probability_30d carries the classifier's
    highest P(non-compliant) among them; days_to_rated_life is null; reasons list each part and why.
    """
    missing = [column for column in RESULT_COLUMNS if column not in results.columns]
    if missing:
        raise InputError(f"compliance results: missing column(s): {', '.join(missing)}")
    flagged = results[(results[NON_COMPLIANT] == 1).fillna(False) & (results[NEEDS_REVIEW] == 0)]
    finding = flagged[REASON].str.partition(WORDS)[0].str.removeprefix("non-compliant: ")
    flagged = flagged.assign(part=flagged[COMPONENT_ID].astype(str) + ": " + finding).sort_values(
        [CAR_ID, COMPONENT_ID]
    )
    by_car = flagged.groupby(CAR_ID, sort=True)
    parts = by_car["part"].agg(list)
    count = parts.map(len)
    return pd.DataFrame({
        "car_id": parts.index.astype(object),
        "battery_id": by_car[COMPONENT_ID].agg(lambda ids: ",".join(map(str, ids))).to_numpy(),
        "day": day if isinstance(day, str) else day.strftime("%Y-%m-%d"),
        "severity": HIGH,
        PROBABILITY: by_car["probability"].max().round(4).to_numpy(),
        DAYS_TO_RATED_LIFE: np.nan,
        "title": COMPLIANCE_TITLE,
        "message": np.where(
            count == 1,
            "1 part of your car does not meet the component regulation. Please book a service to replace it.",
            count.astype(str) + " parts of your car do not meet the component regulation. "
            "Please book a service to replace them.",
        ),
        REASONS: parts.to_numpy(),
        MODEL_VERSION: model_version,
    })


# --- files and jobs -----------------------------------------------------------------------------------------

Progress = Callable[[str], None]


def read_components_csv(path: str | Path, *, labelled: bool = False) -> pd.DataFrame:
    """Component_ID, Car_ID, text (and label, 0/1/empty, when `labelled`; template if present), or
    `InputError` naming the file, the column and the lines. An empty note is kept: it needs review."""
    raw = read_csv_text(path)
    required = COMPONENT_COLUMNS if labelled else SCORE_INPUT_COLUMNS
    missing = [column for column in required if column not in raw.columns]
    if missing:
        raise InputError(f"{path}: missing column(s): {', '.join(missing)}")
    frame = raw[[c for c in (*required, TEMPLATE) if c in raw.columns]].copy()
    for column in (COMPONENT_ID, CAR_ID):
        frame[column] = frame[column].astype("string").str.strip()
        _refuse(path, column, frame[column].isna() | (frame[column] == ""), "empty id")
    _refuse(path, COMPONENT_ID, frame[COMPONENT_ID].duplicated(), "duplicate component")
    frame[TEXT] = frame[TEXT].astype("string").fillna("").astype(object)
    if labelled:
        label = frame[LABEL].astype("string").str.strip()
        _refuse(path, LABEL, label.notna() & ~label.isin(["0", "1"]), "not 0, 1 or empty")
        frame[LABEL] = pd.to_numeric(label).astype("Int64")
    return frame.astype({COMPONENT_ID: object, CAR_ID: object})


def _refuse(path: str | Path, column: str, bad: pd.Series, reason: str) -> None:
    if bad.any():
        lines = [str(i + 2) for i in bad.index[bad.to_numpy(dtype=bool)]]
        more = f" and {len(lines) - 5} more" if len(lines) > 5 else ""
        raise InputError(f"{path}: column {column}: {reason} on line(s) {', '.join(lines[:5])}{more}")


def train_from_csv(
    data_path: str | Path, model_dir: str | Path, *, tracking_uri: str, params: TrainingParams = TrainingParams(),
    progress: Progress = lambda message: None,
) -> ComplianceModel:
    """Train on a labelled components CSV, track the run in MLflow, write the model directory."""
    from shared.tracking import start_training_run

    components = read_components_csv(data_path, labelled=True)
    progress(f"training the compliance classifier on {components[LABEL].notna().sum():,} labelled notes")
    tags = {"model_kind": MODEL_KIND, "data": Path(data_path).name}
    with start_training_run(EXPERIMENT, asdict(params), tags, uri=tracking_uri) as run:
        result = train_classifier(components, params)
        run.log_metrics(result.metrics)
        run.log_training_curves(result.curves)
        model = result.model.with_metadata(mlflow_run_id=run.run_id)
        model.save(model_dir)
        run.log_model_dir(model_dir)
    progress(f"model {model.version} written to {model_dir} (MLflow run {run.run_id})")
    return model


def score_from_csv(data_path: str | Path, model_dir: str | Path, out_path: str | Path) -> pd.DataFrame:
    """Score a components CSV with the model in `model_dir`; write and return the results."""
    components = read_components_csv(data_path)
    results = score_components(load_model(model_dir), components)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(out_path, index=False)
    return results
