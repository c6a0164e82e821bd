"""The compliance reader's words beyond the regulation's own: conditions and materials in ordinary words.

A technician writes "shabby", "badly corroded", "no visible wear" or "PVC" where the regulation says poor,
good or plastic. The lexicon (lexicon.json, built from WordNet 3.0 by
tools/build_compliance_lexicon.py) maps such words to what the regulation reads them as, and says how
("WordNet: a kind of 'worn'"), so every reason can name the word it read. It is a data file of some 50 KB:
nothing is downloaded or loaded from a model at run time, and it is read once, on first use.

Each entry keeps the seed senses it was grown from (`roots`), so an evaluation can hold a seed out and see
whether a word is still read without it (`Lexicon.from_data(data, held_out=...)`).

Grammar the lexicon does not hold, kept here because it is about how a note is written, not what a word
means: a negator up to three words before a condition word in the same clause ("no visible wear",
"without damage", "free of rust") or "free" right after it ("rust free") turns a non-compliant reading
into good, and a compliant one into unclear ("not perfect" says too little). A material word is never
negated (the reader's known limit: "no plastic parts" is read as plastic). A material word before "plated",
"coated", "painted", ... names a surface, not what the part is made of ("chrome-plated"); a word that
starts with "poly" (polycarbonate, polyoxymethylene) names a polymer: plastic.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

LEXICON_FILE = Path(__file__).with_name("lexicon.json")
UNCLEAR = "unclear"  # a word that could mean a regulated material or not ("metal"), or a negated good word
OTHER = "other"  # a material the regulation does not name (brass, zinc): neither plastic nor iron
CLAUSE = "0clause0"  # the token `read_phrases` expects between clauses
CLAUSE_BREAK = re.compile(r"[.;,:|/()!?=]|\s[-–]\s")
NEGATORS = frozenset({"no", "not", "without", "never", "nil", "zero", "non"})
NEGATION_WINDOW = 3
NEGATED_GRADE = "good"
COATINGS = frozenset({"plated", "coated", "painted", "clad", "finish", "finished", "dipped", "sprayed"})  # a surface
POLYMER_PREFIX = "poly"  # chemistry's name for a polymer: polycarbonate, polyoxymethylene
GRADES = ("excellent", "good", "fair", "poor")  # the regulation's conditions, best first (as CONDITIONS)


@dataclass(frozen=True)
class Reading:
    meaning: str  # a grade, a regulation material, OTHER or UNCLEAR
    via: str  # how the lexicon came to it, for the reason
    negated: str | None = None  # its meaning under a negator, when not the rule's ("never used": excellent)


POLYMER = Reading("plastic", "named as a polymer (poly-)")
MIN_POLYMER_NAME = 8  # "polymer" itself is the lexicon's word; "poly" alone is nothing


@dataclass(frozen=True)
class Lexicon:
    conditions: Mapping[str, Reading]  # phrase (words separated by one space) → reading
    materials: Mapping[str, Reading]
    typo_exceptions: frozenset[str]  # real words one letter from a regulation word: not typos

    @classmethod
    def from_data(cls, data: Mapping, held_out: Collection[str] = ()) -> Lexicon:
        """The lexicon from its JSON, without what only the `held_out` seeds gave."""
        return cls(
            conditions=_readings(data["conditions"], held_out, prefer_worse=True),
            materials=_readings(data["materials"], held_out, prefer_worse=False),
            typo_exceptions=frozenset(data["typo_exceptions"]),
        )

    @functools.cached_property
    def longest(self) -> int:
        return max((len(phrase.split()) for phrase in (*self.conditions, *self.materials)), default=1)


def _readings(entries: Mapping[str, Mapping], held_out: Collection[str], prefer_worse: bool) -> dict[str, Reading]:
    """Each phrase's meaning from the seeds it came from and that are not held out: the one most of them
    give; between conditions that tie, the worse grade."""
    rank = {grade: i for i, grade in enumerate(GRADES)} if prefer_worse else {}
    readings = {}
    for word, entry in entries.items():
        kept = [Reading(*read) for root, read in entry["roots"].items() if root not in held_out]
        if kept:
            count = Counter(read.meaning for read in kept)
            meaning = max(count, key=lambda m: (count[m], rank.get(m, 0)))
            readings[_phrase(word)] = next(read for read in kept if read.meaning == meaning)
    return readings


def _phrase(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


@functools.cache
def lexicon_data() -> dict:
    return json.loads(LEXICON_FILE.read_text(encoding="utf-8"))


@functools.cache
def default_lexicon() -> Lexicon:
    return Lexicon.from_data(lexicon_data())


def seeds_in(phrases: Collection[str], protected: Collection[str] = ()) -> frozenset[str]:
    """The seeds whose words appear among the words of `phrases` (to hold out when evaluating them), except
    the `protected` ones (the regulation's own words, which the rules read anyway)."""
    words = {word for phrase in phrases for word in _phrase(phrase).split()}
    data = lexicon_data()
    roots = {root for kind in ("conditions", "materials") for entry in data[kind].values() for root in entry["roots"]}
    return frozenset(r for r in roots if r not in protected and words & set(_phrase(r).split()))


def read_phrases(clauses: pd.Series, lexicon: Lexicon, disqualifying: Collection[str]) -> pd.DataFrame:
    """What the lexicon reads in each note: one row per note (same index).

    `clauses` are notes as words separated by spaces, with CLAUSE between clauses. Columns: text (the
    words, without CLAUSE, each read phrase replaced by the regulation word it means, for the classifier),
    and for condition and material: the meaning (<NA> when none), the phrase as written and how it was
    read; a disqualifying meaning wins, then a regulation one, then OTHER, and UNCLEAR only when nothing
    else was read. Loops run over phrase lengths and over matches, never over notes.
    """
    tokens = clauses.reset_index(drop=True).str.split().explode().dropna()
    row, word = tokens.index.to_numpy(), _canonical(tokens.astype(object).to_numpy(), lexicon)
    clause = np.cumsum(word == CLAUSE)
    found = _matches(word, row, clause, lexicon)
    reads = pd.DataFrame(found, columns=["kind", "start", "n", "reading"])
    reads["meaning"] = [r.meaning for r in reads["reading"]]
    reads["via"] = [r.via for r in reads["reading"]]
    reads["first"] = reads["start"]
    _negate(reads, word, row, clause, disqualifying)
    replacement = word.copy()  # the classifier's text: each read phrase as the regulation word it means
    for start, n, meaning in reads[["start", "n", "meaning"]].itertuples(index=False):
        if meaning not in (OTHER, UNCLEAR):
            replacement[start] = meaning
            replacement[start + 1 : start + n] = ""
    spans = reads[["first", "start", "n"]].itertuples(index=False)
    reads["written"] = [" ".join(tokens.iloc[first : start + n]) for first, start, n in spans]
    reads["row"] = row[reads["start"].to_numpy(dtype=int)]

    kept = pd.Series(replacement, index=row)
    kept = kept[(kept != CLAUSE) & (kept != "")]
    text = kept.groupby(level=0).agg(" ".join).reindex(range(len(clauses)), fill_value="")
    result = pd.DataFrame({"text": text.to_numpy(dtype=object)})
    ranks = {"condition": {**{g: 1 for g in GRADES}, UNCLEAR: 2}, "material": {OTHER: 2, UNCLEAR: 3}}
    for kind, rank in ranks.items():
        mine = reads[reads["kind"] == kind]
        mine = mine.assign(rank=mine["meaning"].map(lambda m, rank=rank: 0 if m in disqualifying else rank.get(m, 1)))
        best = mine.sort_values(["row", "rank", "start"]).drop_duplicates("row").set_index("row")
        best = best.reindex(range(len(clauses)))
        result[kind] = best["meaning"].astype(object).where(best["meaning"].notna(), None).to_numpy()
        result[f"{kind}_written"] = best["written"].to_numpy(dtype=object)
        result[f"{kind}_via"] = best["via"].to_numpy(dtype=object)
    return result.set_axis(clauses.index)


def _matches(word: np.ndarray, row: np.ndarray, clause: np.ndarray, lexicon: Lexicon) -> list[tuple]:
    """(kind, start, length, reading) of each lexicon phrase in the tokens, longest first, never overlapping
    and never across notes or clauses; a loop over phrase lengths and over matches."""
    covered = np.zeros(len(word), dtype=bool)
    found = []
    for n in range(lexicon.longest, 0, -1):
        starts = np.arange(len(word) - n + 1)
        if not len(starts):
            continue
        gram = pd.Series(word[starts], dtype=object)
        for k in range(1, n):
            gram = gram + " " + word[starts + k]
        same = (row[starts] == row[starts + n - 1]) & (clause[starts] == clause[starts + n - 1])
        taken = np.concatenate([[0], np.cumsum(covered)])
        free = taken[starts + n] - taken[starts] == 0
        after = np.where(starts + n < len(word), word[np.minimum(starts + n, len(word) - 1)], "")
        coating = np.isin(after, list(COATINGS))  # "chrome-plated": the surface, not what the part is made of
        for kind, table in (("condition", lexicon.conditions), ("material", lexicon.materials)):
            hits = gram.isin(table.keys()).to_numpy() & ~(coating & (kind == "material"))
            for start in starts[same & free & hits]:
                if not covered[start : start + n].any():  # two matches of one length may overlap
                    covered[start : start + n] = True
                    found.append((kind, int(start), n, table[gram.iloc[start]]))
        if n == 1:
            words = pd.Series(word, dtype=object)
            named = words.str.startswith(POLYMER_PREFIX) & words.str.isalpha() & (words.str.len() >= MIN_POLYMER_NAME)
            for start in starts[named.to_numpy(dtype=bool) & ~covered & ~coating]:
                covered[start] = True
                found.append(("material", int(start), 1, POLYMER))
    return found


def _canonical(words: np.ndarray, lexicon: Lexicon) -> np.ndarray:
    """Plurals of lexicon words as the word ("cracks", "dents" → "crack", "dent"); a loop over distinct words."""
    known = {phrase for phrase in (*lexicon.conditions, *lexicon.materials) if " " not in phrase}
    mapping = {}
    for word in pd.unique(words):
        if word not in known and len(word) > 3 and word.endswith("s"):
            stem = next((s for s in (word[:-1], word[:-2]) if s in known), None)
            if stem:
                mapping[word] = stem
    return np.array([mapping.get(w, w) for w in words], dtype=object) if mapping else words.astype(object)


def _negate(
    reads: pd.DataFrame, word: np.ndarray, row: np.ndarray, clause: np.ndarray, disqualifying: Collection[str]
) -> None:
    """Condition readings under a negator become good (a fault denied) or unclear (a merit denied)."""
    if reads.empty:
        return
    conditions = reads["kind"].to_numpy() == "condition"
    start = reads["start"].to_numpy()
    end = start + reads["n"].to_numpy()
    negated_at = np.full(len(reads), -1)
    for k in range(NEGATION_WINDOW, 0, -1):  # the farthest negator in the window opens the phrase
        at = start - k
        inside = (at >= 0) & conditions
        at = np.where(inside, at, 0)
        inside &= (row[at] == row[start]) & (clause[at] == clause[start])
        free_of = (word[at] == "free") & (word[np.minimum(at + 1, len(word) - 1)] == "of")
        before = np.isin(word[at], list(NEGATORS)) | free_of
        negated_at = np.where(inside & before & (negated_at < 0), at, negated_at)
    after = np.minimum(end, len(word) - 1)
    free_after = conditions & (end < len(word)) & (word[after] == "free") & (row[after] == row[start])
    free_after &= clause[after] == clause[start]
    negated = (negated_at >= 0) | free_after
    fault = reads["meaning"].isin(list(disqualifying)).to_numpy()
    rule = np.where(fault, NEGATED_GRADE, UNCLEAR)
    meant = [read.negated or default for read, default in zip(reads["reading"], rule, strict=True)]
    reads.loc[negated, "meaning"] = np.array(meant, dtype=object)[negated]
    reads.loc[negated, "via"] = "negated: " + reads.loc[negated, "via"]
    reads["first"] = np.where(negated_at >= 0, negated_at, start)
    reads.loc[free_after, "n"] += 1
