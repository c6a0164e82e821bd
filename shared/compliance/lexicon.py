"""The compliance reader's words beyond the regulation's own: conditions and materials in ordinary words.

A technician writes "shabby", "badly corroded", "no visible wear", "seized up", "PVC" or "316L" where the
regulation says poor, good, plastic or steel. The lexicon (lexicon.json, ~1 MB, built by
tools/build_compliance_lexicon.py from WordNet 3.0 and the workshop glossary tools/compliance_glossary.json)
maps such words and phrases to what the regulation reads them as, and says how ("WordNet: a kind of worn",
"glossary: fracture"), so every reason can name the word it read. Nothing is downloaded or loaded from a
model at run time, and the JSON is read once, on first use.

Each WordNet entry keeps the seed senses it was grown from (`roots`), so an evaluation can hold a seed out
and see whether a word is still read without it (`Lexicon.from_data(data, held_out=...)`).

Grammar the lexicon does not hold, kept here because it is about how a note is written, not what a word
means:
* inflections: a word that inflects a lexicon word is read as it ("cracks", "snapping", "discoloured",
  "solidly"; `inflection_key`), a participle only as a participle ("cleaned" is not "clean"), and an
  uninflected word only as itself ("exhaust", a pipe, is not "exhausted");
* derivations: a word no list holds that derives from or to a condition word is read as it ("rusty",
  "deteriorated", "nonconforming" → "rust", "deterioration", "nonconformity"; `derivation_stems`), a
  British spelling as the American one ("lacklustre", "totalled", "aluminium": `inflection_key`), and a
  two-word phrase written as one word as the phrase ("wornout": `_compound`), and a phrase no list holds as a
  new combination of the slots of one of the lexicon's frames ("needs renewing" from "needs attention",
  "awaiting renewing" and "awaiting attention": `_composed`);
* negation: a negator up to three words before a condition word in the same clause ("no visible wear",
  "free from defects", "doesn't function"), "free" right after it ("rust free"), a checklist's answer
  after it ("corrosion: none", "cracks not found"; `_denied_after`), and a negating affix
  ("uncorroded", "unserviceable", "rustless"), turn a fault into good and a merit into unclear ("not
  perfect" says too little), unless the word says what it means negated ("never used": as new; "not
  working": poor). A material word is never negated ("no plastic parts" is read as plastic); a fault of the
  car a part came from is not the part's ("from a written-off car"), nor is "had it" before a participle
  ("had it replaced") the idiom;
* degree: a hedge up to two words before a fault makes it fair ("slightly bent", "minor paint damage", "a
  touch worn"), an intensifier around a blemish makes it poor ("severely pitted", "flaking badly"), and a
  word of doubt before any reading, or before the regulation's own word, makes it unclear ("mixed wear",
  "possible crack", "possibly plastic"), and so do materials named as alternatives ("iron or steel");
* materials: a word before "plated", "coated", "painted", ... names a surface, not what the part is made
  of ("chrome-plated"); a word that starts with "poly" names a polymer; a designation is read by its
  standard's pattern (`DESIGNATIONS`: 316L, GGG40, AlMg3, Ti6Al4V); a regulation word inside a longer
  phrase is the phrase's ("carbon-fibre reinforced plastic" is carbon fiber), and so is the resin beside a
  carbon fibre ("CF/epoxy": `_matrix_of_a_fibre`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import re
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

LEXICON_FILE = Path(__file__).with_name("lexicon.json")
GLOSSARY = "glossary: "  # how a reading from the workshop glossary starts (its roots are concepts, not seeds)
UNCLEAR = "unclear"  # a word that could mean a regulated material or not ("metal"), or a negated good word
OTHER = "other"  # a material the regulation does not name (brass, zinc): neither plastic nor iron
CLAUSE = "0clause0"  # the token `read_phrases` expects between clauses
CLAUSE_BREAK = re.compile(r"[.;,:|()!?=]|(?<!\w)/|/(?!\w)|\s[-–]\s")  # "cf/epoxy" is one material
NEGATORS = frozenset({"no", "not", "without", "never", "nil", "zero", "0", "non", "none", "nothing", "neither", "nor",
                      "doesn", "isn", "wasn", "aren", "didn", "won", "cannot", "hardly", "barely", "negligible",
                      "minimal", "lacks"})  # fmt: skip
SCARCE = frozenset({"little", "few"})  # "very little wear", "few scratches" deny; "a little rust" does not
# ... nor "little" before an adjective or a participle, as a hedge: "little rusty", "little bit worn" (a little)
ADJECTIVE_ENDINGS = re.compile(r"(?:ed|en|wn|rn|[^aeiou]y)$|^bit$")
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


POLYMER = Reading("plastic", "named as a polymer (poly-, -polymer, -ethylene, ...)")
MIN_POLYMER_NAME = 8  # "polymer" itself is the lexicon's word; "poly" alone is nothing
POLYMER_SUFFIXES = ("polymer", "plastic", "plastics", "ethylene", "propylene", "styrene")  # "fluoropolymer"


def _designation(pattern: str, material: str, what: str) -> tuple[re.Pattern, str, Reading]:
    return re.compile(pattern), "material", Reading(material, f"named by its designation: {what}")


# Material designations a note writes as one word; the standards' own patterns, not a list of grades.
DESIGNATIONS = (
    _designation(
        r"(?:ss|sus|aisi|t)[234]\d\d[a-z]{0,2}|[234]\d\d(?:l|h|ln|ti)", "steel", "AISI stainless grade (T304: type 304)"
    ),
    _designation(r"s[23]\d5(?:jr|j0|j2|n|m|mc)?", "steel", "EN 10025 structural steel"),
    _designation(r"en\d{1,2}[a-z]?", "steel", "BS 970 EN steel"),
    _designation(
        r"x\d+(?:cr|mn|ni|mo)[a-z\d]*|\d{2}(?:cr|mn|ni|mo|si)[a-z\d]*|c[1-9]\d[er]?", "steel", "EN 10027 steel name"
    ),
    _designation(r"g{2,3}\d{2}|gj[lsmv]\d*", "iron", "DIN/EN cast iron grade"),
    _designation(
        r"(?:aa|al)[1-8]\d{3}[a-z]?|al(?:mg|si|zn|cu|mn)\d*[a-z\d]*", "aluminum", "aluminium alloy designation"
    ),
    _designation(r"(?:az|am|ze|we)\d{2}[a-z]?", "other", "magnesium alloy designation"),
    _designation(r"ti\d+al\d*v?\d*|\d+al(?:\d*v\d*)?", "titanium", "titanium alloy by composition"),
    _designation(r"c1[01]\d{3}", "copper", "UNS copper number"),
    _designation(r"(?:sae|aisi)\d{4,5}[a-z]?\d*", "steel", "SAE/AISI carbon or alloy steel"),
    _designation(
        r"(?:10|11|12|13|15|40|41|43|46|48|51|52|61|86|87|92|93)\d{2}[a-z]{1,3}|[234]\d\d(?:ss|sst)",
        "steel",
        "SAE/AISI grade with its condition or 'SS' (4140HT, 304SS)",
    ),
    _designation(r"[1-8]\d{3}t\d{1,4}", "aluminum", "aluminium alloy with its temper (6061T6)"),
    _designation(r"s(?:235|275|355|420|460|500|550|620|690|890|960)[a-z\d]{0,5}", "steel", "EN structural steel"),
    _designation(r"s[1-4]\d{4}", "steel", "UNS stainless steel number"),
    _designation(
        r"s\d{2}ck?|sc[mr]\d{3}[a-z]?|sn(?:c|cm)\d{3}|sup\d{1,2}[a-z]?|suj\d|sk[dhs]?\d{1,2}|sp[ch][cde]|sm\d{3}[a-c]?"
        r"|stkm\d{2}[a-c]?|ss\d{3}",
        "steel",
        "JIS steel",
    ),
    _designation(r"q\d{3}[a-e]?|zg\d{3}", "steel", "GB steel"),
    _designation(r"\d{3}[amhs]\d{2}", "steel", "BS 970 steel"),
    _designation(r"d[cx]\d{2}d?|h[cx]\d{3}[a-z]{0,3}", "steel", "EN sheet steel"),
    _designation(r"fcd?\d{3}|fcm[bwp]\d*|ht\d{3}|qt\d{3}|kt[hbz]\d{3}", "iron", "JIS/GB cast iron grade"),
    _designation(
        r"a9\d{4}|adc\d{1,2}|ac\d[a-c]h?|zl\d{3}|ly\d{1,2}|lm\d{1,2}|[1-8]a\d{2}",
        "aluminum",
        "JIS/GB/BS/UNS aluminium alloy",
    ),
    _designation(r"c1\d{4}|c1[0-2]\d{2}|cw[01]\d{2}[ac]|cu(?:be|cr|zr|ag|te|co|fe|p)[a-z\d]*", "copper", "copper"),
    _designation(
        r"c[2-9]\d{4}|c[2-7]\d{3}|cw[2-7]\d{2}[a-z]|cc\d{3}[a-z]|cz\d{3}|cu(?:zn|sn|al|ni|si|mn|pb)[a-z\d]*|pb\d{3}",
        "other",
        "copper alloy (brass, bronze, cupronickel)",
    ),
    _designation(r"n[01]\d{4}|in\d{3}", "other", "nickel alloy"),
    _designation(r"r5\d{4}|t[ac]\d{1,2}|bt\d{1,2}", "titanium", "titanium alloy (UNS, GB, GOST)"),
    _designation(r"za\d{1,2}|znal\d[a-z\d]*|zp\d{1,4}|z\d{5}", "other", "zinc alloy"),
    _designation(r"(?:ae|as|zk|ek|qe|ez|hk|hm|zc|ws|lz)\d{2}[a-z]?", "other", "magnesium alloy designation"),
    _designation(r"wnr1\d{4}", "steel", "Werkstoff number of a steel"),
    _designation(r"wnr0[678]\d{3}", "iron", "Werkstoff number of a cast iron"),
    _designation(r"wnr3[0-4]\d{3}", "aluminum", "Werkstoff number of an aluminium alloy"),
    _designation(r"wnr37\d{3}", "titanium", "Werkstoff number of a titanium alloy"),
    _designation(r"wnr20[01]\d{2}", "copper", "Werkstoff number of a copper"),
    _designation(r"wnr(?:2[0-4]|35)\d{3}", "other", "Werkstoff number of a copper, nickel or magnesium alloy"),
)

# A JIS aluminium grade is "A" and the AA number (A5052, A6061), and an AA number may carry a national variant's
# letter (6005A): read only when the lexicon knows that number as an aluminium, so a part number shaped like one
# ("A1234") is not.
JIS_ALUMINIUM = re.compile(r"a([1-8]\d{3})|([1-8]\d{3})a")
JIS_ALUMINIUM_READING = Reading("aluminum", "named by its designation: an AA aluminium number with a letter")


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

    def with_entries(self, entries: Mapping[str, Mapping[str, str]], via: str) -> Lexicon:
        """The lexicon with `entries` (kind → phrase → meaning, phrases as `phrase_of` writes them) added, each
        read `via`: an entry replaces the lexicon's own reading of its phrase (a site knows its own words)."""

        def merged(kind: str, table: Mapping[str, Reading]) -> dict[str, Reading]:
            return {**table, **{phrase: Reading(meaning, via) for phrase, meaning in entries.get(kind, {}).items()}}

        return Lexicon(merged("condition", self.conditions), merged("material", self.materials), self.typo_exceptions)

    def without(self, phrases: Collection[str]) -> Lexicon:
        """The lexicon less `phrases` and their inflections ("cracks" also drops "cracked"): an evaluation's
        stand-in for words no list holds, so what is left to read them is the grammar and the entries that remain
        (longer phrases holding a dropped word stay)."""
        keys = {_inflection_keys(phrase) for phrase in phrases}

        def kept(table: Mapping[str, Reading]) -> dict[str, Reading]:
            return {phrase: read for phrase, read in table.items() if _inflection_keys(phrase) not in keys}

        return Lexicon(kept(self.conditions), kept(self.materials), self.typo_exceptions)

    @functools.cached_property
    def single_words(self) -> frozenset[str]:
        return frozenset(phrase for phrase in (*self.conditions, *self.materials) if " " not in phrase)

    @functools.cached_property
    def by_key(self) -> dict[str, str]:
        """`inflection_key` → the lexicon word it is the key of (the shortest when several share it)."""
        keys: dict[str, str] = {}
        for word in sorted(self.single_words, key=lambda w: (len(w), w)):
            if word.isalpha() and len(key := inflection_key(word)) >= MIN_KEY:
                keys.setdefault(key, word)
        return keys

    @functools.cached_property
    def by_stem(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """Each `derivation_stems` stem → the single condition words with it, and the suffix each had."""
        words: dict[str, list[tuple[str, str]]] = {}
        for word in self.conditions:
            if word.isalpha():
                for stem, suffix in derivation_stems(word):
                    words.setdefault(stem, []).append((word, suffix))
        return {stem: tuple(found) for stem, found in words.items()}

    @functools.cached_property
    def first_words(self) -> dict[int, frozenset[str]]:
        """Phrase length → the words a phrase of that length starts with."""
        firsts: dict[int, set[str]] = {}
        for phrase in (*self.conditions, *self.materials):
            words = phrase.split()
            firsts.setdefault(len(words), set()).add(words[0])
        return {n: frozenset(words) for n, words in firsts.items()}

    @functools.cached_property
    def tables(self) -> dict[str, Mapping[str, Reading]]:
        """Kind ("condition", "material") → its phrases' readings."""
        return {"condition": self.conditions, "material": self.materials}

    @functools.cached_property
    def frames(self) -> dict[str, Frames]:
        """Kind → the heads and tails of its phrases, as `_composed` reads an unknown phrase from them."""
        with _no_collection():
            return {kind: _frames_of(table) for kind, table in self.tables.items()}

    @functools.cached_property
    def longest(self) -> int:
        return max((len(phrase.split()) for phrase in (*self.conditions, *self.materials)), default=1)


MAX_COMPOSED = 4  # words of a phrase read from its parts ("requires immediate replacement", "must be renewed")
MIN_TELLING = 3  # phrases that share a head or tail and all read the same, for it to carry the meaning
Slots = dict[str, dict[str, frozenset[str]]]  # a head (or tail) → concept (a reading's `via`) → its tails (heads)


@dataclass(frozen=True)
class Frames:
    """The heads (first words) and tails (last words) of a table's phrases of two words or more, each with
    the rests it makes a phrase with, by concept ("needs" → {"glossary: remedy needed": {"replacing",
    "repair", ...}}); and those that carry a meaning: `MIN_TELLING` phrases or more share them and all read
    the same ("needs …" is poor; "in …" and "… condition" are every grade)."""

    heads: Slots
    tails: Slots
    telling_heads: frozenset[str]
    telling_tails: frozenset[str]


def _frames_of(table: Mapping[str, Reading]) -> Frames:
    heads: dict[str, dict[str, set[str]]] = {}
    tails: dict[str, dict[str, set[str]]] = {}
    for phrase, read in table.items():
        words = phrase.split()
        for k in range(1, len(words)):
            head, tail = " ".join(words[:k]), " ".join(words[k:])
            heads.setdefault(head, {}).setdefault(read.via, set()).add(tail)
            tails.setdefault(tail, {}).setdefault(read.via, set()).add(head)

    def frozen(slots: dict[str, dict[str, set[str]]]) -> Slots:
        return {part: {via: frozenset(rests) for via, rests in by.items()} for part, by in slots.items()}

    def telling(slots: dict[str, dict[str, set[str]]], phrase: str) -> frozenset[str]:
        return frozenset(
            part
            for part, by in slots.items()
            if sum(map(len, by.values())) >= MIN_TELLING
            and len({table[phrase.format(part, rest)].meaning for rests in by.values() for rest in rests}) == 1
        )

    return Frames(frozen(heads), frozen(tails), telling(heads, "{} {}"), telling(tails, "{1} {0}"))


def _readings(entries: Mapping[str, Mapping], held_out: Collection[str], prefer_worse: bool) -> dict[str, Reading]:
    """Each phrase's meaning from the seeds it came from and that are not held out: the one most of them
    give; between conditions that tie, the worse grade. The builder writes each phrase as `phrase_of` would."""
    rank = {grade: i for i, grade in enumerate(GRADES)} if prefer_worse else {}
    readings = {}
    for word, entry in entries.items():
        kept = [Reading(*read) for root, read in entry["roots"].items() if root not in held_out]
        if len(kept) == 1:  # most phrases: one concept or seed, no vote (the file holds ~10,000 of them)
            readings[word] = kept[0]
        elif kept:
            count = Counter(read.meaning for read in kept)
            meaning = max(count, key=lambda m: (count[m], rank.get(m, 0)))
            readings[word] = next(read for read in kept if read.meaning == meaning)
    return readings


def phrase_of(text: str) -> str:
    """A phrase as the lexicon holds it: lower case, its words separated by one space."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def _inflection_keys(phrase: str) -> str:
    return " ".join(inflection_key(word) for word in phrase_of(phrase).split())


@functools.cache
def lexicon_data() -> dict:
    with _no_collection():
        return json.loads(LEXICON_FILE.read_text(encoding="utf-8"))


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """Loading allocates some 40,000 long-lived containers, which sets off the cycle collector over everything a
    scoring process holds (about 90 ms instead of 16 in the benchmark's process); none of them is garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@functools.cache
def default_lexicon() -> Lexicon:
    data = lexicon_data()
    with _no_collection():
        return Lexicon.from_data(data)


def seeds_in(phrases: Collection[str], protected: Collection[str] = ()) -> frozenset[str]:
    """The seeds whose words appear among the words of `phrases` (to hold out when evaluating them), except
    the `protected` ones (the regulation's own words, which the rules read anyway)."""
    words = {word for phrase in phrases for word in phrase_of(phrase).split()}
    data = lexicon_data()
    roots = {root for kind in ("conditions", "materials") for entry in data[kind].values()
             for root, read in entry["roots"].items() if not read[1].startswith(GLOSSARY)}  # fmt: skip
    return frozenset(r for r in roots if r not in protected and words & set(phrase_of(r).split()))


def read_phrases(
    clauses: pd.Series, lexicon: Lexicon, disqualifying: Collection[str], spelled: Collection[str] = ()
) -> pd.DataFrame:
    """What the lexicon reads in each note: one row per note (same index).

    `clauses` are notes as words separated by spaces, with CLAUSE between clauses; `spelled` the words of the
    regulation's own spellings, which the rules read (no phrase is read from parts that hold one: "stainless
    steel" is the rules' steel, as the builder leaves such phrases out of the lexicon). Columns: text (the
    words, without CLAUSE, each read phrase replaced by the regulation word it means, for the classifier),
    and for condition and material: the meaning (<NA> when none), the phrase as written and how it was
    read; a disqualifying meaning wins, then a regulation one, then OTHER, and UNCLEAR only when nothing
    else was read. Loops run over phrase lengths and over matches, never over notes.
    """
    tokens = clauses.reset_index(drop=True).str.split().explode().dropna()
    written = tokens.to_numpy(dtype=object)
    word, derived = _canonical(written, lexicon)
    row = tokens.index.to_numpy()
    clause = np.cumsum((word == CLAUSE) | np.r_[True, row[1:] != row[:-1]])  # a note's first word opens a clause
    unparted = np.isin(word, [*spelled, *GRAMMAR_WORDS])
    found, covered = _matches(written, word, row, clause, lexicon, derived, unparted)
    regulation_word = np.isin(word, list(spelled))
    regulation_material = regulation_word & ~np.isin(word, GRADES)
    found += _doubted_regulation_words(word, row, clause, regulation_word, found)
    found = _alternative_materials(word, clause, regulation_material, found)
    covered[[start for _, start, _, reading in found if reading in (DOUBTED, ALTERNATIVE)]] = True  # not the rules'

    reads = pd.DataFrame(found, columns=["kind", "start", "n", "reading"])
    reads["meaning"] = [r.meaning for r in reads["reading"]]
    reads["via"] = [r.via for r in reads["reading"]]
    reads["first"] = reads["start"]
    graded = np.isin(word, GRADES) & ~covered  # the regulation's own grade, which the rules read
    material_at = regulation_material.copy()
    material_at[[start for kind, start, _, _ in found if kind == "material"]] = True
    reads = reads[
        ~_names_a_thing(reads, word, row, clause, disqualifying, material_at) & ~_causative(reads, word, row, clause)
        & ~_graded_by_the_regulation(reads, graded, row, clause) & ~_matrix_of_a_fibre(reads, row, clause)
    ]  # fmt: skip
    reads = reads.reset_index(drop=True)
    _negate(reads, word, row, clause, disqualifying)
    _grade_by_degree_and_doubt(reads, word, row, clause)
    spans = reads[["first", "start", "n"]].itertuples(index=False)
    reads["written"] = [" ".join(tokens.iloc[first : start + n]) for first, start, n in spans]
    reads["row"] = row[reads["start"].to_numpy(dtype=int)]

    result = pd.DataFrame({"uncovered": _joined_words(np.where(covered, "", written), row, len(clauses))})
    ranks = {"condition": {**{g: 1 for g in GRADES}, UNCLEAR: 2}, "material": {OTHER: 2, UNCLEAR: 3}}
    replacement = word.copy()  # the classifier's text: each slot's reading as the regulation word it means,
    for start, n in reads[["start", "n"]].itertuples(index=False):  # the slot's other readings and a reading
        replacement[start : start + n] = ""  # of no regulation word left out: "mint, no marks" is one merit
    for kind, rank in ranks.items():  # to the classifier, not two, and "zinc die cast" no char n-grams of iron
        mine = reads[reads["kind"] == kind]
        mine = mine.assign(rank=mine["meaning"].map(lambda m, rank=rank: 0 if m in disqualifying else rank.get(m, 1)))
        best = mine.sort_values(["row", "rank", "start"]).drop_duplicates("row").set_index("row")
        regulated = best[~best["meaning"].isin([OTHER, UNCLEAR])]
        replacement[regulated["start"].to_numpy(dtype=int)] = regulated["meaning"].to_numpy(dtype=object)
        best = best.reindex(range(len(clauses)))
        result[kind] = best["meaning"].astype(object).where(best["meaning"].notna(), None).to_numpy()
        result[f"{kind}_written"] = best["written"].to_numpy(dtype=object)
        result[f"{kind}_via"] = best["via"].to_numpy(dtype=object)
    result.insert(0, "text", _joined_words(replacement, row, len(clauses)))
    return result.set_axis(clauses.index)


def _joined_words(words: np.ndarray, row: np.ndarray, notes: int) -> np.ndarray:
    """Each note's words (without CLAUSE and blanks) joined by spaces."""
    kept = pd.Series(words, index=row)
    kept = kept[(kept != CLAUSE) & (kept != "")]
    joined = (kept + " ").groupby(level=0).sum().str[:-1]  # a grouped sum of strings is their concatenation
    return joined.reindex(range(notes), fill_value="").to_numpy(dtype=object)


def _matches(
    written: np.ndarray,
    word: np.ndarray,
    row: np.ndarray,
    clause: np.ndarray,
    lexicon: Lexicon,
    derived: Mapping[str, tuple[str, Reading]],
    unparted: np.ndarray,
) -> tuple[list[tuple], np.ndarray]:
    """(kind, start, length, reading) of each lexicon phrase in the tokens, longest first, never overlapping
    and never across notes or clauses, and which tokens a phrase of two words or more covers; a loop over
    phrase lengths and over matches. Single words are also read through `derived` and "poly"."""
    covered = np.zeros(len(word), dtype=bool)
    in_phrase = np.zeros(len(word), dtype=bool)
    found = []
    for n in range(lexicon.longest, 0, -1):
        starts = np.arange(max(len(word) - n + 1, 0))
        if n > 1:  # only where a phrase of n words could start: the grams are built for those alone
            firsts = lexicon.first_words.get(n, frozenset())
            starts = starts[
                pd.Series(word[starts]).isin(firsts).to_numpy() | pd.Series(written[starts]).isin(firsts).to_numpy()
            ]
        if not len(starts):
            continue
        gram = pd.Series(word[starts], dtype=object)
        as_written = pd.Series(written[starts], dtype=object)
        for k in range(1, n):
            gram = gram + " " + word[starts + k]
            as_written = as_written + " " + written[starts + k]
        same = (row[starts] == row[starts + n - 1]) & (clause[starts] == clause[starts + n - 1])
        taken = np.concatenate([[0], np.cumsum(covered)])
        free = taken[starts + n] - taken[starts] == 0
        after = np.where(starts + n < len(word), word[np.minimum(starts + n, len(word) - 1)], "")
        coating = np.isin(after, list(COATINGS))  # "chrome-plated": the surface, not what the part is made of
        if n == 1:  # phrases read from their parts, before the single words they hold ("working well" is good)
            _composed(word, row, clause, lexicon, coating, unparted, covered, in_phrase, found)
        for kind, table in lexicon.tables.items():
            exact = as_written.isin(table.keys()).to_numpy()  # a phrase as written, else with its words inflected
            hits = (exact | gram.isin(table.keys()).to_numpy()) & ~(coating & (kind == "material"))
            for at in np.flatnonzero(same & free & hits):
                start = starts[at]
                if not covered[start : start + n].any():  # two matches of one length may overlap
                    covered[start : start + n] = True
                    in_phrase[start : start + n] = n > 1
                    found.append((kind, int(start), n, table[(as_written if exact[at] else gram).iloc[at]]))
        if n == 1:
            words = pd.Series(word, dtype=object)
            named = (words.str.startswith(POLYMER_PREFIX) | words.str.endswith(POLYMER_SUFFIXES)) & words.str.isalpha()
            named &= words.str.len() >= MIN_POLYMER_NAME
            for start in starts[named.to_numpy(dtype=bool) & ~covered & ~coating]:
                covered[start] = True
                found.append(("material", int(start), 1, POLYMER))
            for start in starts[words.isin(derived.keys()).to_numpy() & ~covered]:
                kind, reading = derived[word[start]]
                if not (kind == "material" and coating[start]):
                    covered[start] = True
                    found.append((kind, int(start), 1, reading))
    return found, in_phrase


def _composed(
    word: np.ndarray,
    row: np.ndarray,
    clause: np.ndarray,
    lexicon: Lexicon,
    coating: np.ndarray,
    unparted: np.ndarray,
    covered: np.ndarray,
    in_phrase: np.ndarray,
    found: list[tuple],
) -> None:
    """Phrases of 2 to `MAX_COMPOSED` words that no lexicon phrase covers, read as a new combination of the
    slots of a frame (`_frame_readings`): "needs renewing" from "needs attention", "awaiting renewing" and
    "awaiting attention"; only when every frame that reads them, over every split of the words, gives one meaning
    ("fit for service": fit for use, not "fit a new one"), longest phrases first. Adds to `found`, `covered`
    and `in_phrase` as `_matches` does; a loop over lengths and splits, then over matches."""
    for n in range(min(MAX_COMPOSED, len(word)), 1, -1):
        starts = np.arange(len(word) - n + 1)
        starts = starts[(row[starts] == row[starts + n - 1]) & (clause[starts] == clause[starts + n - 1])]
        at_word = [pd.Series(word[starts + k], dtype=object) for k in range(n)]
        heads = [at_word[0]]
        for k in range(1, n - 1):
            heads.append(heads[-1] + " " + at_word[k])
        tails = [at_word[n - 1]]
        for k in range(n - 2, 0, -1):
            tails.insert(0, at_word[k] + " " + tails[0])
        splits = list(zip(heads, tails, strict=True))  # head: the first k words, tail: the rest
        for kind, frames in lexicon.frames.items():
            either = np.zeros(len(starts), dtype=bool)
            for head, tail in splits:
                either |= head.isin(frames.heads.keys()).to_numpy() & tail.isin(frames.tails.keys()).to_numpy()
            table = lexicon.tables[kind]
            for at in np.flatnonzero(either):
                start = starts[at]
                taken = covered[start : start + n].any() or unparted[start : start + n].any()
                if taken or (kind == "material" and coating[start + n - 1]):
                    continue
                readings = [
                    found_in
                    for head, tail in splits
                    for found_in in _frame_readings(head.iloc[at], tail.iloc[at], frames, table)
                ]
                if len({read.meaning for read, _, _ in readings}) != 1:  # none, or frames that disagree
                    continue
                read, one, other = readings[0]
                covered[start : start + n] = True
                in_phrase[start : start + n] = True
                how = f"read from its parts, as in '{one}' and '{other}': {read.via}"
                found.append((kind, int(start), n, Reading(read.meaning, how, read.negated)))


def _frame_readings(
    head: str, tail: str, frames: Frames, table: Mapping[str, Reading]
) -> Iterator[tuple[Reading, str, str]]:
    """The concepts in which `head` and `tail` are slots of one frame: the head makes a phrase "head t" with
    some tail t, the tail a phrase "h tail" with some head h, and "h t" is a phrase of that concept too
    ("needs renewing": "needs replacing", "due for renewing", "due for replacing"); each with the reading of
    "h t" and the first two phrases, which the reason quotes. None unless the head or the tail carries a
    meaning (`Frames`: "in condition", a template's words without its slot, says nothing), and none for a
    head and a tail of two concepts ("top …" of top notch, "… made" of newly made: "strut top made from iron"
    says nothing of the strut's state)."""
    if head not in frames.telling_heads and tail not in frames.telling_tails:
        return
    for via, tails in frames.heads.get(head, {}).items():
        for other_head in sorted(frames.tails.get(tail, {}).get(via, ())):
            if shared := tails & frames.heads[other_head].get(via, frozenset()):
                yield table[f"{other_head} {min(shared)}"], f"{head} {min(shared)}", f"{other_head} {tail}"
                break


def _canonical(words: np.ndarray, lexicon: Lexicon) -> tuple[np.ndarray, dict[str, tuple[str, Reading]]]:
    """Each word as the lexicon word it inflects ("cracks", "snapping", "discoloured", "solidly" → "crack",
    "snapped", "discolored", "solid": `inflection_key`) or the condition word it derives from or to ("rusty",
    "corroded" → "rust", "corrosion": `derivation_stems`), and the readings of words the lexicon reads only
    through an affix or a designation ("unserviceable", "rustless", "316L": `_affixed`, `DESIGNATIONS`); a
    loop over distinct words."""
    known = lexicon.single_words
    mapping, derived = {}, {}
    for word in pd.unique(words):
        if word in known or word == CLAUSE:
            continue
        designation = next(((k, read) for pattern, k, read in DESIGNATIONS if pattern.fullmatch(word)), None)
        if (jis := JIS_ALUMINIUM.fullmatch(word)) and (aa := lexicon.materials.get(jis.group(1) or jis.group(2))):
            designation = ("material", JIS_ALUMINIUM_READING) if aa.meaning == "aluminum" else None
        readable = word.isalpha() and len(word) >= MIN_INFLECTED
        inflected = (_inflected(word, lexicon) or _derived(word, lexicon)) if readable else None
        if designation:
            derived[word] = designation
        elif inflected:
            mapping[word] = inflected
        elif word.isalpha() and (affixed := _affixed(word, lexicon) or _compound(word, lexicon)):
            derived[word] = affixed
    canonical = np.array([mapping.get(w, w) for w in words], dtype=object) if mapping else words.astype(object)
    return canonical, derived


MIN_INFLECTED = 5  # shorter words are too often other words when stripped ("used" → "us")
PARTICIPLES = ("ed", "ing")
ADVERB = "ly"  # "solidly" is read as "solid", an adjective, never as a participle


def _inflected(word: str, lexicon: Lexicon) -> str | None:
    """The lexicon word `word` inflects, if any: only an inflected word ("exhaust", a pipe, is not
    "exhausted"), and a participle only as a participle ("cleaned" is what was done, not "clean")."""
    key = inflection_key(word)
    known = lexicon.by_key.get(key) if key != word else None
    if known and word.endswith(PARTICIPLES) and not known.endswith((*PARTICIPLES, "en", "wn", "rn", "nt")):
        return None
    if known and word.endswith(ADVERB) and known.endswith(PARTICIPLES):  # "totally" is not "totalled"
        return None
    return known


# Derivational suffixes and what the shared stem keeps ("corrosion" and "corroded" share "corrod"): a word
# no list holds is read as a lexicon word it derives from or to ("rusty" → "rust", "deteriorated" →
# "deterioration", "brittleness" → "brittle", "defective" → "defect", "conforming" → "conformance"; not
# "-ment": a "replacement" is a part as often as a need). Every suffix that fits gives a stem: English does
# not say which one it is ("deterior-ation" but "deteriorat-ion").
_DERIVATIONS = (("ations", ""), ("ation", ""), ("itions", ""), ("ition", ""), ("sions", "d"), ("sion", "d"),
                ("ions", ""), ("ion", ""), ("iness", "y"), ("ness", ""), ("ity", ""), ("ances", ""), ("ance", ""),
                ("ant", ""), ("ive", ""), ("y", ""))  # fmt: skip
MIN_STEM = 4  # shorter stems are too often other words ("play" is not "pla")


def derivation_stems(word: str) -> frozenset[tuple[str, str]]:
    """What a word and its derivations share, with the suffix it had: its `inflection_key` as it is and less
    each derivational suffix it ends with, without a final doubled consonant or e ("rusty", "rust" → "rust";
    "corrosion", "corroded" → "corrod")."""
    key = inflection_key(word)
    stems = {(key, "")}
    for suffix, replacement in _DERIVATIONS:
        if key.endswith(suffix) and len(stem := key[: -len(suffix)] + replacement) >= MIN_STEM:
            if len(stem) > 3 and stem[-1] == stem[-2] and stem[-1] not in "aeiouls":
                stem = stem[:-1]
            stems.add((stem[:-1] if stem.endswith("e") and len(stem) > MIN_KEY else stem, suffix))
    return frozenset(stems)


def _derived(word: str, lexicon: Lexicon) -> str | None:
    """The condition word of the lexicon `word` derives from or to, when every such word reads the same. One
    of the two must have a derivational suffix ("cleaned" is not "clean": `_inflected` says why); a "-y"
    adjective is read only as its noun, not a noun as its "-y" adjective ("notch", of "top notch", is not
    "notchy"), nor as a participle ("battery" is not "battered")."""
    found = {
        known
        for stem, suffix in derivation_stems(word)
        for known, known_suffix in lexicon.by_stem.get(stem, ())
        if (suffix or known_suffix not in ("", "y")) and not (suffix == "y" and known.endswith(PARTICIPLES))
    }
    if len({lexicon.conditions[known].meaning for known in found}) != 1:
        return None
    return min(found, key=lambda known: (len(known), known))


MIN_KEY = 4
_BRITISH = (
    (r"(?<=\w\w)our(?=$|ed$|ing$|s$|ation)", "or"),  # discoloured
    (r"(?<=\w\w)(?:is|ys)(?=e$|ed$|es$|ing$|ation)", "iz"),  # oxidised, analysed
    (r"(?<=\w\w[bt])re(?=$|s$)", "er"),  # lacklustre, fibre
    (r"(?<=\w\w[bt])red$", "ered"),  # centred
    (r"(?<=\w\w[^aeiou\W][aeiou])ll(?=ed$|ing$|ous$|er$)", "l"),  # totalled, marvellous (not "filled")
    (r"(?<=\w\w\w)ium(?=$|s$)", "um"),  # aluminium; not ae → e: "paeel", a typo of panel, is not "peel"
)
_SUFFIXES = (("ingly", ""), ("edly", ""), ("ies", "y"), ("ied", "y"), ("ily", "y"), ("ing", ""), ("ed", ""),
             ("es", ""), ("ly", ""), ("s", ""))  # fmt: skip


def inflection_key(word: str) -> str:
    """What the inflections of a word share: American spelling, no inflectional suffix, no doubled final
    consonant, no final e ("discoloured", "discolors" → "discolor"; "snapped", "snaps" → "snap";
    "corroding", "corrode" → "corrod")."""
    key = word
    for pattern, american in _BRITISH:
        key = re.sub(pattern, american, key)
    for suffix, replacement in _SUFFIXES:
        if key.endswith(suffix) and not key.endswith("ss") and len(key) - len(suffix) >= 3:
            key = key[: -len(suffix)] + replacement
            break
    if len(key) > 3 and key[-1] == key[-2] and key[-1] not in "aeiouls":
        key = key[:-1]
    return key[:-1] if key.endswith("e") and len(key) > MIN_KEY else key


NEGATING_PREFIXES = ("non", "un", "in", "im")
NEGATING_SUFFIX = "less"  # "faultless", "rustless": without the fault


def _affixed(word: str, lexicon: Lexicon) -> tuple[str, Reading] | None:
    """A condition word negated by a prefix or "-less" ("uncorroded", "unusable", "scratchless"), read as
    the negated word; None when the rest is no condition word the lexicon knows."""
    rests = [(word[len(p) :], f"{p}-") for p in NEGATING_PREFIXES if word.startswith(p)]
    if word.endswith(NEGATING_SUFFIX):
        rests.append((word[: -len(NEGATING_SUFFIX)], f"-{NEGATING_SUFFIX}"))
    for rest, affix in rests:
        base = rest if rest in lexicon.conditions else lexicon.by_key.get(inflection_key(rest))
        if len(rest) >= MIN_KEY and base in lexicon.conditions:
            read = lexicon.conditions[base]
            meaning = read.negated or (NEGATED_GRADE if read.meaning in ("fair", "poor") else UNCLEAR)
            return "condition", Reading(meaning, f"negated ({affix}{base}): {read.via}")
    return None


MIN_COMPOUND_HEAD = 3  # "wornout" is "worn out" and "beatup" "beat up"; a shorter split says too little
MIN_COMPOUND_TAIL = 2


def _compound(word: str, lexicon: Lexicon) -> tuple[str, Reading] | None:
    """A two-word lexicon phrase written as one word ("wornout", "beatup", "glassfibre"), read as the phrase,
    when only one split of the word is such a phrase."""
    found = {
        (kind, phrase)
        for at in range(MIN_COMPOUND_HEAD, len(word) - MIN_COMPOUND_TAIL + 1)
        for kind, table in lexicon.tables.items()
        if (phrase := f"{word[:at]} {word[at:]}") in table
    }
    if len(found) != 1:
        return None
    kind, phrase = found.pop()
    read = lexicon.tables[kind][phrase]
    return kind, Reading(read.meaning, f"written as one word ({phrase}): {read.via}", read.negated)


# Words after a condition word that make it name a property, a purpose or a part, not a state:
# "corrosion resistant", "rust proofing", "wear sensor", "split pin", "crumple zone", "sound deadening".
THING_HEADS = frozenset({
    "resistant", "resistance", "proof", "proofed", "proofing", "protection", "protected", "protective",
    "inhibitor", "inhibiting", "prevention", "treatment", "treated", "guard", "shield", "sensor", "sensors",
    "indicator", "indicators", "warning", "light", "lamp", "code", "codes", "mode", "test", "testing", "tests",
    "zone", "pin", "pins", "ring", "rings", "washer", "washers", "collar", "collars", "plate", "pad", "pads",
    "strip", "strips", "bar", "box", "deadening", "insulation", "thread", "threads", "filter", "mesh",
    "blasted", "blasting", "peened", "peening",
})  # fmt: skip
ANTI = "anti"  # "anti-rust", "anti-corrosion": a treatment against the fault
# Words after a fault that make it the fault of something else than the part: "from a written-off car".
SOLID = "solid"  # before a material, how much of the part it makes ("solid brass"), not the part's state
OTHER_THINGS = frozenset({"car", "cars", "vehicle", "vehicles", "van", "vans", "truck", "lorry", "donor", "bike"})


def _names_a_thing(
    reads: pd.DataFrame,
    word: np.ndarray,
    row: np.ndarray,
    clause: np.ndarray,
    disqualifying: Collection[str],
    material_at: np.ndarray,
) -> np.ndarray:
    """Condition readings that are part of a name ("wear sensor", "anti-rust"), not a state of the part, faults
    of something else ("from a written-off car"), and "solid" before a material (`material_at`): "solid brass"
    is brass through and through."""
    if reads.empty:
        return np.zeros(0, dtype=bool)
    start, end = reads["start"].to_numpy(), (reads["start"] + reads["n"]).to_numpy()
    after, before = np.minimum(end, len(word) - 1), np.maximum(start - 1, 0)
    same_after = (end < len(word)) & (row[after] == row[start]) & (clause[after] == clause[start])
    same_before = (start > 0) & (row[before] == row[start]) & (clause[before] == clause[start])
    fault = reads["meaning"].isin(list(disqualifying)).to_numpy()  # a new car's part is new, a wreck's may be fine
    heads = np.isin(word[after], list(THING_HEADS)) | (fault & np.isin(word[after], list(OTHER_THINGS)))
    heads |= (word[start] == SOLID) & (reads["n"].to_numpy() == 1) & material_at[after]
    named = (same_after & heads) | (same_before & (word[before] == ANTI))
    return named & (reads["kind"].to_numpy() == "condition")


def _causative(reads: pd.DataFrame, word: np.ndarray, row: np.ndarray, clause: np.ndarray) -> np.ndarray:
    """Condition readings ending in "it" that a participle follows in their clause: "had it replaced" is what
    was done to the part, not the idiom "had it" (finished)."""
    if reads.empty:
        return np.zeros(0, dtype=bool)
    start, end = reads["start"].to_numpy(), (reads["start"] + reads["n"]).to_numpy()
    at, beside = _beside(end, start, row, clause)
    participle = pd.Series(word[at]).str.endswith(("ed", "en")).to_numpy()
    return beside & participle & (word[np.maximum(end - 1, 0)] == "it") & (reads["kind"].to_numpy() == "condition")


def _graded_by_the_regulation(
    reads: pd.DataFrame, graded: np.ndarray, row: np.ndarray, clause: np.ndarray
) -> np.ndarray:
    """Condition readings right after a grade of the regulation's own (`graded`) in their clause: the grade says
    what the phrase is ("good used condition", "good second-hand condition"), and the rules read it."""
    if reads.empty:
        return np.zeros(0, dtype=bool)
    start = reads["start"].to_numpy()
    before, beside = _beside(start - 1, start, row, clause)
    return beside & graded[before] & (reads["kind"].to_numpy() == "condition")


FIBRE, MATRIX = "carbon fiber", "plastic"


def _matrix_of_a_fibre(reads: pd.DataFrame, row: np.ndarray, clause: np.ndarray) -> np.ndarray:
    """Plastic readings right beside a carbon-fibre one in the same clause: the resin a fibre is laid in
    ("CF/epoxy", "carbon fibre PEEK", "epoxy/carbon"), so the part is carbon fibre, as "carbon-fibre reinforced
    plastic" is; a plastic named apart from it ("CF and ABS") still disqualifies."""
    material = reads[reads["kind"] == "material"].sort_values("start")
    if len(material) < 2:
        return np.zeros(len(reads), dtype=bool)
    start = material["start"].to_numpy(dtype=int)
    end = start + material["n"].to_numpy(dtype=int)
    meaning = material["meaning"].to_numpy(dtype=object)
    touching = (end[:-1] == start[1:]) & (row[start[:-1]] == row[start[1:]]) & (clause[start[:-1]] == clause[start[1:]])
    pair = np.stack([meaning[:-1], meaning[1:]])
    fibre_then_matrix = touching & (pair[0] == FIBRE) & (pair[1] == MATRIX)
    matrix_then_fibre = touching & (pair[0] == MATRIX) & (pair[1] == FIBRE)
    matrix = np.concatenate([[False], fibre_then_matrix]) | np.concatenate([matrix_then_fibre, [False]])
    return reads.index.isin(material.index[matrix])


DENIED_AFTER = frozenset({"none", "nil", "absent", "nothing", "zero"})  # "corrosion: none", "cracks nil"
DENIED_ALONE = frozenset({"no", "0", "n"})  # a checklist's answer only when it stands alone: "leaks: no"
NOT_FOUND = frozenset({"found", "seen", "detected", "observed", "present", "evident", "visible", "apparent"})


def _beside(
    at: np.ndarray, anchor: np.ndarray, row: np.ndarray, clause: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Word positions `at` clamped into the text, and whether each is a word of the same note as the word at
    `anchor` (and of the same clause, when `clause` is given): the neighbour checks of negation and degree."""
    inside = (at >= 0) & (at < len(row))
    at = np.clip(at, 0, len(row) - 1)
    inside &= row[at] == row[anchor]
    return at, inside & (clause[at] == clause[anchor]) if clause is not None else inside


def _denied_after(end: np.ndarray, word: np.ndarray, row: np.ndarray) -> np.ndarray:
    """A phrase that an inspector's checklist answers after it, in its clause or the next: "corrosion: none",
    "cracks nil", "leaks not found", "defects - none seen", "play: no". A fault measured within its limits is
    not denied: "minor wear within limits" is still wear (fair) to an inspector; nor is a phrase the next clause
    starts a statement of its own about ("new condition, zero findings")."""
    last, phrase_end = len(word) - 1, np.maximum(end - 1, 0)
    next_clause = (end <= last) & (word[np.minimum(end, last)] == CLAUSE)
    at, in_note = _beside(np.where(next_clause, end + 1, end), phrase_end, row)
    answer = np.where(in_note, word[at], "")
    then_at, follows = _beside(at + 1, phrase_end, row)
    then = np.where(follows, word[then_at], "")
    answered = ~next_clause | np.isin(then, ["", CLAUSE, *NOT_FOUND])  # "corrosion: none (seen)", not "zero findings"
    denied = np.isin(answer, list(DENIED_AFTER)) & (then != "of") & answered
    alone = np.isin(answer, list(DENIED_ALONE)) & np.isin(then, ["", CLAUSE])  # "cracks: no", not "no further"
    return denied | alone | ((answer == "not") & np.isin(then, list(NOT_FOUND)))


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
        at, inside = _beside(start - k, start, row, clause)
        inside &= conditions
        free_of = (word[at] == "free") & np.isin(word[np.minimum(at + 1, len(word) - 1)], ["of", "from"])
        scarce = np.isin(word[at], list(SCARCE)) & ~np.isin(word[np.maximum(at - 1, 0)], ["a", "quite"])
        scarce &= ~pd.Series(word[np.minimum(at + 1, len(word) - 1)]).str.contains(ADJECTIVE_ENDINGS).to_numpy()
        before = np.isin(word[at], list(NEGATORS)) | free_of | scarce
        negated_at = np.where(inside & before & (negated_at < 0), at, negated_at)
    after, beside = _beside(end, start, row, clause)
    free_after = conditions & beside & (word[after] == "free")
    negated = (negated_at >= 0) | free_after | _denied_after(end, word, row) & conditions
    fault = reads["meaning"].isin(list(disqualifying)).to_numpy()
    rule = np.where(fault, NEGATED_GRADE, UNCLEAR)
    meant = [read.negated or default for read, default in zip(reads["reading"], rule, strict=True)]
    reads.loc[negated, "meaning"] = np.array(meant, dtype=object)[negated]
    reads.loc[negated, "via"] = "negated: " + reads.loc[negated, "via"]
    reads["first"] = np.where(negated_at >= 0, negated_at, start)
    reads.loc[free_after, "n"] += 1


# Words of degree around a fault: a hedge makes a poor one fair ("slightly bent", "minor surface damage", "a
# touch worn"), an intensifier a fair one poor ("severely pitted", "flaking badly"); a hedge wins ("very slight").
HEDGES = frozenset({"slight", "slightly", "minor", "light", "lightly", "mild", "mildly", "partly", "partially",
                    "somewhat", "fairly", "small", "some", "surface", "cosmetic", "sl", "little"})  # fmt: skip
HEDGES_AFTER_A = frozenset({"touch", "little", "bit"})  # "a touch worn", "a little rough", "a bit tired"
INTENSIFIERS = frozenset({"heavily", "badly", "severely", "seriously", "extensively", "very", "v", "extremely", "heavy",
                          "severe", "major", "extensive", "deeply", "deep", "totally", "completely"})  # fmt: skip
INTENSIFIERS_AFTER = frozenset({"badly", "severely", "heavily"})  # "flaking badly" (not "light wear throughout")
# Words of doubt before a reading: "mixed wear", "possible crack", "suspected aluminium" say too little.
DOUBTS = frozenset({"mixed", "possible", "possibly", "poss", "suspected", "suspect", "maybe", "perhaps", "uncertain",
                    "unconfirmed", "questionable", "probable", "probably"})  # fmt: skip
DEGREE_WINDOW = 2  # "minor paint damage": the hedge may stand before the thing that is damaged
# Words of degree and doubt, never taken into a phrase read from its parts: "slight corrosion" is a hedged
# fault, "very slight corrosion" still fair (a hedge wins), and the classifier sees the hedge. A negator may
# be ("will not work" is a frame's: does not work).
GRAMMAR_WORDS = HEDGES | HEDGES_AFTER_A | INTENSIFIERS | DOUBTS
# A word of degree or doubt abbreviated with a dot ("sl. worn", "v. rusty", "poss. cracked") is still the next
# word's: its dot does not end the clause. Abbreviations are short, and a shorter pattern is quicker to match.
ABBREVIATED = 4
ABBREVIATED_GRAMMAR_WORD = re.compile(
    rf"\b({'|'.join(sorted((w for w in GRAMMAR_WORDS if len(w) <= ABBREVIATED), key=len, reverse=True))})\.(?=\s+[a-z])"
)


DOUBTED = Reading(UNCLEAR, "the regulation's own word")  # after a word of doubt: "possibly plastic"
ALTERNATIVE = Reading(UNCLEAR, "one material or another")  # "iron or steel": its writer does not know which
ALTERNATIVES = "or"


def _alternative_materials(
    word: np.ndarray, clause: np.ndarray, spelled: np.ndarray, found: list[tuple]
) -> list[tuple]:
    """`found` with every material of a clause that names one material or another ("iron or steel", "GRP or
    carbon") read as unclear, and the regulation's own material words (`spelled`) of such a clause too."""
    mentioned = spelled.copy()
    first, last = np.zeros(len(word), dtype=bool), np.zeros(len(word), dtype=bool)
    for kind, start, n, _ in found:
        if kind == "material":
            first[start], last[start + n - 1] = True, True
    mentioned_before = np.concatenate([[False], (mentioned | last)[:-1]])
    mentioned_after = np.concatenate([(mentioned | first)[1:], [False]])
    at = np.flatnonzero((word == ALTERNATIVES) & mentioned_before & mentioned_after)
    at = at[(clause[at - 1] == clause[at]) & (clause[at + 1] == clause[at])] if len(at) else at
    if not len(at):
        return found
    doubtful = np.isin(clause, clause[at])
    read = np.zeros(len(word), dtype=bool)
    for _, start, n, _ in found:
        read[start : start + n] = True
    alternatives = [
        (kind, start, n, Reading(UNCLEAR, f"{ALTERNATIVE.via}: {reading.via}"))
        if kind == "material" and doubtful[start]
        else (kind, start, n, reading)
        for kind, start, n, reading in found
    ]
    return alternatives + [("material", int(k), 1, ALTERNATIVE) for k in np.flatnonzero(spelled & doubtful & ~read)]


def _doubted_regulation_words(
    word: np.ndarray, row: np.ndarray, clause: np.ndarray, spelled: np.ndarray, found: list[tuple]
) -> list[tuple]:
    """A regulation word (`spelled`) that a word of doubt stands before in its clause and no phrase read, as an
    unclear reading ("possibly plastic", "mixed metal/plastic", "suspected cast iron"): the rules would read
    the word alone, and it would decide a note its writer could not."""
    read = np.zeros(len(word), dtype=bool)
    for _, start, n, _ in found:
        read[start : start + n] = True
    at = np.flatnonzero(spelled & ~read)
    doubted = np.zeros(len(at), dtype=bool)
    for k in range(1, DEGREE_WINDOW + 1):
        before, inside = _beside(at - k, at, row, clause)
        doubted |= inside & np.isin(word[before], list(DOUBTS))
    return [("condition" if word[start] in GRADES else "material", int(start), 1, DOUBTED) for start in at[doubted]]


def _grade_by_degree_and_doubt(reads: pd.DataFrame, word: np.ndarray, row: np.ndarray, clause: np.ndarray) -> None:
    """Condition readings that no negator turned, graded by the words of degree around them; and any reading
    a word of doubt stands before made unclear ("mixed wear", "possible crack", "suspected aluminium")."""
    if reads.empty:
        return
    plain = (reads["kind"].to_numpy() == "condition") & ~reads["via"].str.startswith("negated").to_numpy()
    first = reads["first"].to_numpy(dtype=int)
    hedged, intensified, doubted = (np.zeros(len(reads), dtype=bool) for _ in range(3))
    for k in range(1, DEGREE_WINDOW + 1):
        at, inside = _beside(first - k, first, row, clause)
        after_a = np.isin(word[at], list(HEDGES_AFTER_A)) & (word[np.maximum(at - 1, 0)] == "a") & (at > 0)
        hedged |= inside & (np.isin(word[at], list(HEDGES)) | after_a)
        intensified |= inside & np.isin(word[at], list(INTENSIFIERS))
        doubted |= inside & np.isin(word[at], list(DOUBTS))
    end = (reads["start"] + reads["n"]).to_numpy(dtype=int)
    after, beside = _beside(end, first, row)
    intensified |= beside & np.isin(word[after], list(INTENSIFIERS_AFTER))
    meaning = reads["meaning"].to_numpy()
    softer = plain & hedged & (meaning == "poor")
    harder = plain & ~hedged & intensified & (meaning == "fair")
    doubted &= plain | (reads["kind"].to_numpy() == "material")
    for which, grade, how in (
        (softer, "fair", "hedged"),
        (harder, "poor", "intensified"),
        (doubted, UNCLEAR, "doubted"),
    ):
        reads.loc[which, "meaning"] = grade
        reads.loc[which, "via"] = f"{how}: " + reads.loc[which, "via"]
