"""Component compliance: Trey Research's regulation, read out of technicians' notes, and the alerts it raises.

The regulation: a component is out of compliance (label 1) when it was manufactured before 1995, or is in
fair or poor condition, or is made with plastic or iron. Technicians describe every component in a short
free-text note ("Manufactured in 1985 made of steel in fair condition"). Two deciders look at each note and
a verdict is issued only when they agree:

* The reader (rules, transparent): finds the manufacturing year, however it is written (1985, '85,
  nineteen eighty-five), and the condition and material words: the regulation's own, ordinary ones
  through a lexicon from WordNet and a workshop glossary, with a grammar of inflections, negation,
  affixes and designations ("shabby" → poor, "needs replacing" → poor, "PVC", "316L"; `shared.compliance.lexicon`),
  and a word one letter away from a regulation word as that word (typos, unless it is a real word), and
  applies the regulation to what the note states. Years are its job
  because a model of words cannot compare a year with 1995. It also decides whether the note says enough
  to apply the regulation at all: a note that is empty, gibberish, or silent on what would decide it
  cannot be decided.
* The classifier (learned): logistic regression, trained by SGD, on word and character n-grams of the
  note as the reader normalises it (years replaced by a before-1995 or a 1995-or-later token, typos
  corrected). Its weights come from labelled notes, not from the regulation's wording, so a gap in either
  (a word the rules do not know but the labels show to matter, a rule the labels contradict) shows up as
  a disagreement. It gives the probability and explains each prediction by the words that pushed it.
* The verdict: when the reader cannot decide, or the two disagree, the note is "needs review" with the
  reason, neither alerted nor guessed nor dropped.

Known limits: negation of a material ("no plastic parts") is read as a mention (negated condition words
are handled, the regulation's own through glossary phrases: "not good"); a typo that makes a real word
("goad" for "good") is not read.

Scoring is vectorised over the catalogue; the only Python loops run over distinct words (typo matching)
and over year expressions, never over components. Model files are JSON + NumPy arrays (no pickle), so a
model directory can be read by anyone and loaded safely.
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
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss
from sklearn.model_selection import GroupShuffleSplit
from sklearn.preprocessing import normalize

from shared.compliance.lexicon import (
    ABBREVIATED_GRAMMAR_WORD,
    CLAUSE,
    CLAUSE_BREAK,
    OTHER,
    UNCLEAR,
    Lexicon,
    default_lexicon,
    lexicon_data,
    read_phrases,
    seeds_in,
)
from shared.core.alerts import DAYS_TO_RATED_LIFE, HIGH, MODEL_VERSION, PROBABILITY, REASONS
from shared.core.telemetry import CAR_ID, InputError, read_csv_text

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


def _words(text: str) -> list[str]:
    return re.split(r"[\W_]+", text.lower())


def _spelled_words() -> dict[str, str]:
    """Each word of the condition and material spellings → the word it stands for ("aluminium" → "aluminum",
    "fibre" → "fiber"); the words of a spelling longer than its meaning ("stainless steel") stand for themselves.
    A note word one edit away from words that all stand for the same word is read as that word."""
    vocabulary = {}
    for meaning, spellings in (*MATERIAL_SPELLINGS.items(), *CONDITION_SPELLINGS.items()):
        for spelling in spellings:
            spelled, meant = _words(spelling), _words(meaning)
            vocabulary.update(zip(spelled, meant if len(meant) == len(spelled) else spelled, strict=True))
    return vocabulary


_VOCABULARY = _spelled_words()
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


def read_notes(texts: pd.Series, lexicon: Lexicon | None = None) -> pd.DataFrame:
    """What each note states, as the reader reads it; one row per note, same index.

    Columns: normalized (the classifier's input: lower case, words and numbers only, years as tokens,
    words read through the lexicon replaced by the regulation word they mean, typos corrected),
    year (Int64, <NA> unless exactly one year is stated), year_text (as written), years (all distinct
    years stated, comma-separated), condition and material (the regulation's words, "other" for a material
    the regulation does not name, <NA> when not stated; a disqualifying one wins when several are),
    verdict (`violates_regulation` of those), and for condition and material: *_written and *_via (the
    words read through the lexicon and how, <NA> when the regulation's own word was read), *_unclear (a
    word that could be read either way, with why).

    Where a note states a slot several ways, the regulation's own spelling wins, then the lexicon
    (`shared.compliance.lexicon`, `default_lexicon()` unless one is given), then a typo of the regulation's
    word (a real word such as "door" or "wood" is never taken for a typo of "poor" or "good").
    """
    lexicon = lexicon or default_lexicon()
    index, texts = texts.index, texts.reset_index(drop=True)
    lowered = _joined_designations(texts.astype("string").fillna("").str.lower())
    matches = lowered.str.extractall(f"({YEAR_PATTERN.pattern})")[0].rename("text").reset_index()
    matches["year"] = matches["text"].map(year_value)
    distinct = matches.drop_duplicates(["level_0", "year"]).sort_values(["level_0", "year"])
    several = distinct["level_0"].duplicated(keep=False)
    one = distinct[~several].set_index("level_0")
    year = one["year"].reindex(texts.index).astype("Int64")
    year_text = one["text"].reindex(texts.index)
    years = (
        year.astype("string")
        .combine_first(
            distinct[several].astype({"year": str}).groupby("level_0")["year"].agg(", ".join).astype("string")
        )
        .reindex(texts.index)
    )

    with_tokens = lowered.str.replace(YEAR_PATTERN, _year_token, regex=True)
    clauses = (
        with_tokens.str.replace(ABBREVIATED_GRAMMAR_WORD, r"\1", regex=True)
        .str.replace(CLAUSE_BREAK, f" {CLAUSE} ", regex=True)
        .str.replace(r"[\W_]+", " ", regex=True)
    )
    phrases = read_phrases(
        clauses.str.strip(), lexicon, (*NON_COMPLIANT_CONDITIONS, *NON_COMPLIANT_MATERIALS), tuple(_VOCABULARY)
    )
    corrected = _correct_typos(phrases["text"].astype("string"), lexicon)
    uncovered = phrases["uncovered"].astype("string")  # a regulation word inside a longer phrase is the phrase's
    read = {}
    for slot, spellings, disqualifying in (("condition", CONDITION_SPELLINGS, NON_COMPLIANT_CONDITIONS),
                                           ("material", MATERIAL_SPELLINGS, NON_COMPLIANT_MATERIALS)):  # fmt: skip
        exact, typo = (_stated(text, spellings, disqualifying) for text in (uncovered, corrected))
        by_lexicon = phrases[slot].where(phrases[slot] != UNCLEAR)
        if slot == "material":  # among several materials a disqualifying one wins: "carbon fibre and ABS"
            exact = exact.mask(by_lexicon.isin(disqualifying) & ~exact.isin(disqualifying))
        stated = exact.combine_first(by_lexicon).combine_first(typo)
        through = exact.isna() & by_lexicon.notna()
        unclear = exact.isna() & by_lexicon.isna() & typo.isna() & (phrases[slot] == UNCLEAR)
        read[slot] = stated.astype(object).where(stated.notna(), None)
        read[f"{slot}_written"] = phrases[f"{slot}_written"].where(through | unclear)
        read[f"{slot}_via"] = phrases[f"{slot}_via"].where(through | unclear)
        read[f"{slot}_unclear"] = unclear.to_numpy()
    return pd.DataFrame(
        {
            "normalized": corrected.astype(object),
            "year": year,
            "year_text": year_text.astype(object),
            "years": years.astype(object),
            "condition": read["condition"],
            "material": read["material"],
            "verdict": violates_regulation(year, read["condition"], read["material"]),
            **{
                f"{slot}_{part}": read[f"{slot}_{part}"]
                for slot in ("condition", "material")
                for part in ("written", "via", "unclear")
            },
        }
    ).set_axis(index)


DOTTED_ABBREVIATION = re.compile(r"(?<![\w.])[a-z](?:\.[a-z])+\.?(?!\w)")  # "c.i.", "n.a.d.", "s.s."
# A Werkstoff number (1.4301, 0.6025, 3.3206): 1.4xxx (stainless) anywhere, the others after their standard's name
WERKSTOFF_NUMBER = re.compile(
    r"(?:(?<=\ben )|(?<=\ben-)|(?<=\bdin )|(?<=\bwnr )|(?<=\bwnr\.)|(?<=\bw\.nr\. )|(?<=\bw\.nr\.)|(?<=\bw nr )"
    r"|(?<=\bwerkstoff )|(?<=\bmaterial no )|(?<![\w.])(?=1\.4))([0-3])\.(\d{4})(?![\w.])"
)


WITH_SLASH = re.compile(r"(?<![\w/])w/(o\b)?(?!/)")  # "w/ stickers", "w/o damage": with, without


def _joined_designations(lowered: pd.Series) -> pd.Series:
    """Dotted abbreviations and Werkstoff numbers as one word each, before the dots break clauses: "c.i." is
    "ci", "1.4301" is "wnr14301" (read by `shared.compliance.lexicon.DESIGNATIONS`); and "w/", "w/o" written
    out, so "w/o damage" is negated as "without damage" is."""
    joined = lowered.copy()
    for pattern, replacement, hint in (
        (DOTTED_ABBREVIATION, lambda m: m.group().replace(".", ""), r"\b[a-z]\.[a-z]\b"),
        (WERKSTOFF_NUMBER, r"wnr\1\2", r"\d\.\d{4}"),
        (WITH_SLASH, lambda m: " without " if m.group(1) else " with ", r"\bw/"),
    ):  # a cheap hint first: few notes hold any
        some = joined.str.contains(hint).fillna(False).to_numpy(dtype=bool)
        joined[some] = joined[some].str.replace(pattern, replacement, regex=True)
    return joined


def _year_token(match: re.Match) -> str:
    return f" {YEAR_BEFORE_TOKEN if year_value(match.group(0)) < CUTOFF_YEAR else YEAR_FROM_TOKEN} "


def _stated(text: pd.Series, spellings: Mapping[str, tuple[str, ...]], disqualifying: tuple) -> pd.Series:
    """The regulation word each note spells (a disqualifying one first, then the first), <NA> if none."""
    meaning = {
        re.sub(r"[\W_]+", " ", spelling.lower()): word for word, forms in spellings.items() for spelling in forms
    }
    pattern = r"\b(" + "|".join(re.escape(s) for s in sorted(meaning, key=len, reverse=True)) + r")s?\b"  # steels
    found = text.str.extractall(pattern)[0].map(meaning).rename("word").reset_index()
    found["clean"] = ~found["word"].isin(disqualifying)
    picked = found.sort_values(["level_0", "clean", "match"]).drop_duplicates("level_0")
    return picked.set_index("level_0")["word"].reindex(text.index)


def _correct_typos(normalized: pd.Series, lexicon: Lexicon) -> pd.Series:
    """The notes with each word one edit away from exactly one vocabulary word replaced by it, unless it is
    a real word (`Lexicon.typo_exceptions`, or a word the lexicon reads)."""
    words = pd.Series(normalized.str.split().explode().dropna().unique(), dtype=object)
    real = words.isin([*_VOCABULARY, *lexicon.typo_exceptions, *lexicon.conditions, *lexicon.materials])
    unknown = words[words.str.isalpha() & (words.str.len() >= _MIN_TYPO_LENGTH) & ~real]
    corrections = {}
    for word in unknown:  # distinct words, not notes
        near = {meant for known, meant in _VOCABULARY.items()
                if len(known) >= _MIN_TYPO_LENGTH and one_edit_apart(word, known)}  # fmt: skip
        if len(near) == 1:
            corrections[word] = near.pop()
    if not corrections:
        return normalized
    pattern = r"\b(" + "|".join(sorted(corrections, key=len, reverse=True)) + r")\b"
    return normalized.str.replace(pattern, lambda m: corrections[m.group(0)], regex=True)


def one_edit_apart(a: str, b: str) -> bool:
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

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule}, got {value!r}"
            for name, value, ok, rule in (
                ("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0"),
                ("alpha", self.alpha, self.alpha >= 0, "≥ 0"),
                ("epochs", self.epochs, self.epochs >= 1, "≥ 1"),
                ("validation_share", self.validation_share, 0 < self.validation_share < 1, "in (0, 1)"),
            )
            if not ok
        ]
        if problems:
            raise InputError("; ".join(problems))


@dataclass(frozen=True, eq=False)
class ComplianceModel:
    """Logistic regression over tf-idf word unigrams and character 2-5-grams (within words) of a note.

    Every feature belongs to one word of the note, so the logit splits exactly into per-word
    contributions (`explain`): those are the explanation.
    """

    word_vocabulary: np.ndarray
    word_idf: np.ndarray
    char_vocabulary: np.ndarray
    char_idf: np.ndarray
    coef: np.ndarray  # word features, then char features
    intercept: float
    metadata: dict[str, Any] = field(default_factory=dict)
    site_glossary: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # kind → phrase → meaning

    @property
    def version(self) -> str:
        """A digest of the weights and the site glossary: the same training data, parameters and glossary give
        the same version."""
        digest = hashlib.sha256()
        arrays = (self.word_vocabulary, self.word_idf, self.char_vocabulary, self.char_idf, self.coef)
        for array in (*arrays, np.array([self.intercept])):
            digest.update(np.ascontiguousarray(array).tobytes())
        if self.site_glossary:
            digest.update(json.dumps(self.site_glossary, sort_keys=True).encode())
        return "cmp-" + digest.hexdigest()[:12]

    @cached_property
    def lexicon(self) -> Lexicon:
        """The reader's lexicon: the shipped one, with the site glossary the model was trained with."""
        return site_lexicon(self.site_glossary)

    def probability(self, normalized: pd.Series) -> np.ndarray:
        """P(non-compliant) for notes as `read_notes` normalises them."""
        return _sigmoid(self.features(normalized) @ self.coef + self.intercept)

    def features(self, normalized: pd.Series) -> sparse.csr_matrix:
        return _tfidf(*self._weighted_counts(normalized))

    def explain(self, normalized: pd.Series) -> tuple[np.ndarray, pd.DataFrame]:
        """P(non-compliant) per note, and each word's share of its logit (row, word, contribution).

        A word's share is the coef × tf-idf value of its unigram and of its character n-grams (which lie
        within words): the shares of a note's words plus the intercept are exactly its logit.
        """
        word_part, char_part = self._weighted_counts(normalized)
        logit = _tfidf(word_part, char_part) @ self.coef + self.intercept
        words = normalized.reset_index(drop=True).str.split().explode().dropna()
        distinct = pd.Index(words.unique())
        word_alone, chars_alone = self._weighted_counts(pd.Series(distinct, dtype=object))
        n_words = len(self.word_vocabulary)
        rows = words.index.to_numpy()
        contribution = np.zeros(len(words))
        for alone, part, coef in ((word_alone, word_part, self.coef[:n_words]),
                                  (chars_alone, char_part, self.coef[n_words:])):  # fmt: skip
            own = pd.Series(alone @ coef, index=distinct).reindex(words.to_numpy()).to_numpy()
            norm = np.sqrt(np.asarray(part.multiply(part).sum(axis=1)).ravel())[rows]
            contribution += np.divide(own, norm, out=np.zeros_like(own), where=norm > 0)
        return _sigmoid(logit), pd.DataFrame({"row": rows, "word": words.to_numpy(), "contribution": contribution})

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
        if self.site_glossary:
            metadata[SITE_GLOSSARY_KEY] = self.site_glossary
        (folder / MODEL_FILE).write_text(json.dumps(metadata, indent=2, default=str))
        return folder


_WORD_ANALYZER = {"analyzer": "word", "token_pattern": r"\S+", "lowercase": False}
_CHAR_ANALYZER = {"analyzer": "char_wb", "ngram_range": CHAR_NGRAMS, "lowercase": False}


SITE_GLOSSARY_KEY = "site_glossary"  # compliance_model.json: the site glossary the model was trained with
SITE_GLOSSARY = "site glossary"  # how a reading through it is named in the reason


def site_lexicon(site_glossary: Mapping[str, Mapping[str, str]]) -> Lexicon:
    """The shipped lexicon with a site glossary's entries (kind → phrase → meaning) over it."""
    return default_lexicon().with_entries(site_glossary, SITE_GLOSSARY) if site_glossary else default_lexicon()


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logit))


def _tfidf(word: sparse.spmatrix, char: sparse.spmatrix) -> sparse.csr_matrix:
    """The classifier's features: idf-weighted word and char counts, each block scaled to unit length."""
    return sparse.hstack([normalize(word), normalize(char)], format="csr")


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
    site_glossary = metadata.pop(SITE_GLOSSARY_KEY, {})
    with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as weights:
        model = ComplianceModel(
            word_vocabulary=weights["word_vocabulary"], word_idf=weights["word_idf"],
            char_vocabulary=weights["char_vocabulary"], char_idf=weights["char_idf"],
            coef=weights["coef"], intercept=float(weights["intercept"][0]), metadata=metadata,
            site_glossary=site_glossary,
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


def train_classifier(
    components: pd.DataFrame,
    params: TrainingParams = TrainingParams(),
    site_glossary: Mapping[str, Mapping[str, str]] | None = None,
) -> TrainingResult:
    """Hold out a share of the phrasings, fit and evaluate on them, then refit on every labelled note.

    Notes without a label (undecidable ones) are left out and counted. Phrasings are the `template`
    column when there is one; without it the held-out share is of notes, and `split` says so. A
    `site_glossary` (kind → phrase → meaning: `shared.compliance.review`) is read with the lexicon, and the
    model keeps it, so wherever the model scores, the reader knows the site's words.
    """
    glossary = {kind: dict(entries) for kind, entries in (site_glossary or {}).items() if entries}
    lexicon = site_lexicon(glossary)
    labelled = components[components[LABEL].notna()].reset_index(drop=True)
    if labelled[LABEL].nunique() < 2:
        raise InputError(f"{LABEL}: training needs both compliant (0) and non-compliant (1) notes")
    notes = read_notes(labelled[TEXT], lexicon)
    y = labelled[LABEL].astype("int64").to_numpy()
    by_template = TEMPLATE in labelled.columns
    groups = labelled[TEMPLATE].astype(str) if by_template else pd.Series(labelled.index.astype(str))
    splitter = GroupShuffleSplit(n_splits=1, test_size=params.validation_share, random_state=params.seed)
    train, held_out = next(splitter.split(labelled, y, groups))

    held_out_text = notes["normalized"].iloc[held_out]
    model, curves = fit_classifier(notes["normalized"].iloc[train], y[train], params, (held_out_text, y[held_out]))
    results = score_components(model, labelled.iloc[held_out], lexicon)
    decided = results[NEEDS_REVIEW].to_numpy() == 0
    right = decided & (results[NON_COMPLIANT].fillna(-1).to_numpy() == y[held_out])
    positive = y[held_out] == 1
    probability = model.probability(held_out_text)
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
    final, _ = fit_classifier(notes["normalized"], y, params)
    split = {"split": "note"}
    if by_template:
        split = {"split": "template", "held_out_templates": sorted(set(groups.iloc[held_out]))}
    final = replace(final, site_glossary=glossary).with_metadata(
        params=asdict(params), metrics=metrics, **split, trained_at=datetime.now(UTC).isoformat(timespec="seconds")
    )
    return TrainingResult(model=final, curves=curves, metrics=metrics)


def fit_classifier(
    text: pd.Series, y: np.ndarray, params: TrainingParams, validation: tuple[pd.Series, np.ndarray] | None = None
) -> tuple[ComplianceModel, pd.DataFrame]:
    """Learn the vocabularies and idf on `text` (as `read_notes` normalises notes), then SGD epochs of
    logistic loss; return the model and its per-epoch loss and accuracy on `text` and on `validation`."""
    word, char = CountVectorizer(**_WORD_ANALYZER), CountVectorizer(**_CHAR_ANALYZER)
    word_counts, char_counts = word.fit_transform(text), char.fit_transform(text)
    word_idf, char_idf = (TfidfTransformer().fit(counts).idf_ for counts in (word_counts, char_counts))
    untrained = ComplianceModel(
        word_vocabulary=np.array(word.get_feature_names_out(), dtype=str), word_idf=word_idf,
        char_vocabulary=np.array(char.get_feature_names_out(), dtype=str), char_idf=char_idf,
        coef=np.zeros(len(word_idf) + len(char_idf)), intercept=0.0,
    )  # fmt: skip
    x = _tfidf(word_counts.multiply(word_idf), char_counts.multiply(char_idf))
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


def score_components(model: ComplianceModel, components: pd.DataFrame, lexicon: Lexicon | None = None) -> pd.DataFrame:
    """Component_ID, Car_ID, non_compliant, probability, needs_review, reason for each component.

    non_compliant is 1/0 where the reader's regulation verdict and the classifier agree, <NA> (Int64)
    where the note needs review; needs_review is 1/0; probability is the classifier's P(non-compliant),
    shown for every note (a reviewer's hint, not a verdict). The reason states the finding (naming each
    word read through the lexicon and what it was read as) and the words that drove the classifier, or why
    the note needs review. `lexicon`: the reader's (`read_notes`; by default the model's, `ComplianceModel.lexicon`).
    """
    missing = [column for column in SCORE_INPUT_COLUMNS if column not in components.columns]
    if missing:
        raise InputError(f"components: missing column(s): {', '.join(missing)}")
    components = components.reset_index(drop=True)
    if components.empty:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in RESULT_COLUMNS}).astype(
            {NON_COMPLIANT: "Int64", "probability": "float64", NEEDS_REVIEW: "int64"}
        )
    notes = read_notes(components[TEXT], lexicon or model.lexicon)
    probability, contributions = model.explain(notes["normalized"])
    classifier_says = pd.Series((probability >= DECISION_PROBABILITY).astype("int64"))
    verdict = notes["verdict"]
    agreed = (verdict == classifier_says).fillna(False).astype(bool)
    words = _top_words(contributions, notes, classifier_says)
    finding = _finding(notes)
    reason = np.select(
        [agreed, verdict.isna().to_numpy()],
        [finding, _undecided_reason(notes, components[TEXT])],
        default="needs review: the classifier (p=" + pd.Series(probability).round(2).astype(str)
        + ") disagrees with the reading '" + finding + "'",
    )  # fmt: skip
    explained = verdict.notna().to_numpy() & (words != "").to_numpy()  # the words of a note that says nothing are noise
    reason = pd.Series(np.where(explained, reason + WORDS + words, reason), dtype=object)
    return pd.DataFrame(
        {
            COMPONENT_ID: components[COMPONENT_ID].astype(object),
            CAR_ID: components[CAR_ID].astype(object),
            NON_COMPLIANT: verdict.where(agreed).astype("Int64"),
            "probability": np.round(probability, 4),
            NEEDS_REVIEW: (~agreed).astype("int64"),
            REASON: reason,
        }
    )[RESULT_COLUMNS]


def _finding(notes: pd.DataFrame) -> pd.Series:
    """What the reader found, in words: the disqualifying facts, or every fact when all of them comply."""
    old = (notes["year"] < CUTOFF_YEAR).fillna(False).to_numpy()
    facts = pd.DataFrame(
        {
            "year": "made "
            + notes["year"].astype("string")
            + np.where(old, f" (before {CUTOFF_YEAR})", f" ({CUTOFF_YEAR} or later)"),
            "condition": notes["condition"].astype("string") + " condition" + _read_as(notes, "condition"),
            "material": notes["material"].replace({OTHER: "a material the regulation does not name"}).astype("string")
            + _read_as(notes, "material"),
        }
    )
    disqualifying = np.column_stack(
        [old, notes["condition"].isin(NON_COMPLIANT_CONDITIONS), notes["material"].isin(NON_COMPLIANT_MATERIALS)]
    )
    non_compliant = (notes["verdict"] == 1).fillna(False).to_numpy()
    shown = _joined(facts.where(disqualifying | ~non_compliant[:, None]))
    return pd.Series(np.where(non_compliant, "non-compliant: ", "compliant: "), index=notes.index) + shown


def _read_as(notes: pd.DataFrame, slot: str) -> pd.Series:
    """ " (read 'shabby' as poor: WordNet: a kind of worn)" where the lexicon read the slot, else ""."""
    meant = notes[slot].replace({OTHER: "not plastic or iron"}).astype("string")
    shown = " (read '" + notes[f"{slot}_written"].astype("string") + "' as " + meant + ": "
    return (shown + notes[f"{slot}_via"].astype("string") + ")").fillna("").astype(object)


def _undecided_reason(notes: pd.DataFrame, texts: pd.Series) -> pd.Series:
    """Why the regulation cannot be applied to a note."""
    unclear = notes[["condition_unclear", "material_unclear"]].to_numpy(dtype=bool)
    unstated = pd.DataFrame({
        "manufacturing year": notes["year"].isna(), "condition": notes["condition"].isna() & ~unclear[:, 0],
        "material": notes["material"].isna() & ~unclear[:, 1],
    })  # fmt: skip
    unstated_names = _joined(unstated.apply(lambda column: column.map({True: column.name, False: pd.NA})), " or ")
    doubts = _joined(pd.DataFrame({
        slot: ("the " + slot + " '" + notes[f"{slot}_written"].astype("string") + "' is unclear ("
               + notes[f"{slot}_via"].astype("string") + ")").where(notes[f"{slot}_unclear"].astype(bool))
        for slot in ("condition", "material")
    }))  # fmt: skip
    stated_and_doubts = _joined(
        pd.DataFrame(
            {
                "unstated": ("no " + unstated_names.astype("string") + " stated").where(unstated_names != ""),
                "doubts": doubts.astype("string").where(doubts != ""),
            }
        )
    )
    empty = texts.astype("string").fillna("").str.strip() == ""
    reason = np.select(
        [empty.to_numpy(), unstated.all(axis=1).to_numpy() & notes["years"].isna().to_numpy(),
         notes["years"].str.contains(",", regex=False).fillna(False).to_numpy(dtype=bool)],
        ["needs review: the note is empty",
         "needs review: the note states no manufacturing year, condition or material",
         "needs review: several years stated (" + notes["years"].fillna("") + ") and nothing else disqualifies it"],
        default="needs review: " + stated_and_doubts + ", and what is stated complies",
    )  # fmt: skip
    return pd.Series(reason, index=notes.index, dtype=object)


def _top_words(contributions: pd.DataFrame, notes: pd.DataFrame, classifier_says: pd.Series) -> pd.Series:
    """Per note, the words that pushed the classifier hardest towards its answer: "plastic (+1.84), ..."."""
    parts = contributions.groupby(["row", "word"], as_index=False, sort=False)["contribution"].sum()
    towards = np.where(classifier_says.to_numpy()[parts["row"]] == 1, 1.0, -1.0) * parts["contribution"]
    top = parts[towards > 0].assign(push=towards).sort_values(["row", "push"], ascending=[True, False])
    top = top[top.groupby("row").cumcount() < TOP_WORDS]
    year_text = notes["year_text"].fillna("year").to_numpy(dtype=object)[top["row"]]
    shown = np.select(
        [top["word"] == YEAR_BEFORE_TOKEN, top["word"] == YEAR_FROM_TOKEN],
        [year_text + f" (before {CUTOFF_YEAR})", year_text + f" ({CUTOFF_YEAR} or later)"],
        default=top["word"].to_numpy(dtype=object),
    )
    top = top.assign(
        shown=shown + " (" + top["contribution"].map("{:+.2f}".format).to_numpy(dtype=object) + ")",
        rank=top.groupby("row").cumcount(),
    )
    wide = top.pivot(index="row", columns="rank", values="shown").reindex(range(len(notes)))
    return _joined(wide).set_axis(notes.index)


def _joined(frame: pd.DataFrame, separator: str = ", ") -> pd.Series:
    """Each row's non-missing cells joined ("" when none); a loop over the few columns, not the rows."""
    joined = pd.Series("", index=frame.index, dtype="string")
    for column in frame.columns:
        cell = frame[column].astype("string")
        glue = pd.Series(np.where(joined == "", "", separator), index=frame.index, dtype="string")
        joined = joined.mask(cell.notna(), joined + glue + cell)
    return joined.astype(object)


# --- alerts -------------------------------------------------------------------------------------------------


def compliance_alert_content(results: pd.DataFrame, day: date | str, model_version: str) -> pd.DataFrame:
    """One alert's content per car with non-compliant parts, for `shared.core.alerts.build_alerts(content,
    COMPONENT_COMPLIANCE, created_at, action_url)`. Notes that need review are not alerted.

    battery_id (the contract's required id) carries the car's non-compliant Component_IDs, comma-separated,
    so the alert id changes when the set of parts does; failure_probability_30d carries the classifier's
    highest P(non-compliant) among them; days_to_rated_life is null; reasons list each part and why.
    """
    missing = [column for column in RESULT_COLUMNS if column not in results.columns]
    if missing:
        raise InputError(f"compliance results: missing column(s): {', '.join(missing)}")
    flagged = results[(results[NON_COMPLIANT] == 1).fillna(False) & (results[NEEDS_REVIEW] == 0)]
    finding = flagged[REASON].str.split(WORDS, n=1, regex=False).str[0].str.removeprefix("non-compliant: ")
    flagged = flagged.assign(part=flagged[COMPONENT_ID].astype(str) + ": " + finding).sort_values(
        [CAR_ID, COMPONENT_ID]
    )
    by_car = flagged.groupby(CAR_ID, sort=True)
    parts = by_car["part"].agg(list)
    count = parts.map(len)
    return pd.DataFrame(
        {
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
        }
    )


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
    return frame.astype({column: object for column in frame.columns if column != LABEL})


def _refuse(path: str | Path, column: str, bad: pd.Series, reason: str) -> None:
    if bad.any():
        lines = [str(i + 2) for i in bad.index[bad.to_numpy(dtype=bool)]]
        more = f" and {len(lines) - 5} more" if len(lines) > 5 else ""
        raise InputError(f"{path}: column {column}: {reason} on line(s) {', '.join(lines[:5])}{more}")


def train_from_csv(
    data_path: str | Path,
    model_dir: str | Path,
    *,
    tracking_uri: str,
    params: TrainingParams = TrainingParams(),
    site_glossary: Mapping[str, Mapping[str, str]] | None = None,
    progress: Progress = lambda message: None,
) -> ComplianceModel:
    """Train on a labelled components CSV (with a site glossary: `train_classifier`), track the run in MLflow,
    write the model directory."""
    from shared.adapters.tracking import start_training_run

    components = read_components_csv(data_path, labelled=True)
    progress(f"training the compliance classifier on {components[LABEL].notna().sum():,} labelled notes")
    tags = {"model_kind": MODEL_KIND, "data": Path(data_path).name,
            "site_glossary_phrases": str(sum(map(len, (site_glossary or {}).values())))}  # fmt: skip
    with start_training_run(EXPERIMENT, asdict(params), tags, uri=tracking_uri) as run:
        result = train_classifier(components, params, site_glossary)
        run.log_metrics(result.metrics)
        run.log_training_curves(result.curves, "Component compliance classifier (validation: phrasings held out)")
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


# --- evaluation on words the reader never saw ------------------------------------------------------------------

VOCABULARY_PHRASES = ("condition_phrase", "material_phrase")  # `simulate_vocabulary_notes` columns


def evaluate_unseen_vocabulary(
    model: ComplianceModel, notes: pd.DataFrame, hold_out_seeds: bool = True, lexicon: Lexicon | None = None
) -> tuple[dict[str, float], pd.DataFrame]:
    """Accuracy, recall of non-compliant parts and review rate on notes written from a vocabulary
    (`shared.devtools.fleet_simulator.simulate_vocabulary_notes`), and the per-note results.

    With `hold_out_seeds`, each note is read with a lexicon built without every seed whose words appear in
    its condition or material phrase (the regulation's own words are kept: the rules read those anyway), so
    a phrase counts as understood only if WordNet's relations reach it from other seeds. Metrics are over
    notes a person can decide (label 0/1: a note sent to review counts as wrong); `undecidable_decided` is
    the share of notes a person could not decide (label empty) that were decided all the same. A given
    `lexicon` is used for every note as it is (an empty one: the regulation's words only).
    """
    protected = {*CONDITIONS, *MATERIALS}
    held_out = [
        seeds_in(phrases, protected) if hold_out_seeds and lexicon is None else frozenset()
        for phrases in notes[list(VOCABULARY_PHRASES)].itertuples(index=False)
    ]
    groups = pd.Series(held_out, index=notes.index)
    parts = []
    for seeds, group in groups.groupby(groups.map(lambda s: tuple(sorted(s))), sort=False):
        reader = lexicon or Lexicon.from_data(lexicon_data(), held_out=frozenset(seeds))
        parts.append(score_components(model, notes.loc[group.index], reader).set_axis(group.index))
    results = pd.concat(parts).reindex(notes.index)
    label = notes[LABEL]
    decidable = label.notna().to_numpy()
    decided = results[NEEDS_REVIEW].to_numpy() == 0
    right = decided & (results[NON_COMPLIANT].fillna(-1).to_numpy() == label.fillna(-2).to_numpy())
    positive = (label == 1).fillna(False).to_numpy()
    metrics = {
        "notes": float(decidable.sum()),
        "accuracy": float(right[decidable].mean()),
        "recall_non_compliant": float(right[positive].mean()),
        "review_rate": float(1 - decided[decidable].mean()),
        "decided_accuracy": float(right[decidable & decided].mean()),
        "undecidable_notes": float((~decidable).sum()),
        "undecidable_decided": float(decided[~decidable].mean()) if (~decidable).any() else 0.0,
    }
    return metrics, results.assign(right=right, held_out=[", ".join(sorted(s)) for s in held_out])
