"""Build shared/compliance/lexicon.json, the compliance reader's words for conditions and materials, from
WordNet 3.0 and the seeds in tools/compliance_lexicon_seeds.json. A local tool: the Function App reads only
the JSON it writes (about 1 MB, no WordNet and no NLTK at run time).

    apt-get install wordnet-base            # Debian's WordNet 3.0 database, /usr/share/wordnet
    .venv/bin/python tools/build_compliance_lexicon.py [--wordnet /usr/share/wordnet]

How a seed sense grows (each entry records the seeds it came from, so the evaluation can hold a seed out):

* conditions (adjective senses): the sense's own words; for a head adjective, the words of its satellites
  ("worn" → "shabby", "threadbare", "weather-beaten"); the words of its "also see" senses; and, with the
  opposite polarity, its antonyms ("damaged" → "undamaged"). Noun senses (wear, corrosion, ...): their
  words and hyponyms, and the verbs and adjectives derived from them ("corrosion" → "corrode" → "corroded").
  Verbs are written in the forms a note uses (corroded, corroding; irregular ones from verb.exc).
* materials (noun senses): the sense's words and all its hyponyms ("plastic" → "polypropylene",
  "synthetic resin" → "polyvinyl chloride"). A word whose senses read as different materials, or a sense
  close above a regulated one ("metal" above iron, "resin" above synthetic resin), is "unclear": the reader
  says so instead of guessing.
* Filters, because WordNet is about all of English: a satellite or synonym is kept only when the sense is
  the word's commonest adjective sense ("pretty" in the "bad" cluster is dropped); a condition word that is
  also a substance ("rubber") is dropped; adjectives of age ("old", "new" by attribute "age") are not grown
  through antonyms or "also see" (the regulation judges age by the year).
* typo_exceptions: real English words one letter from a regulation word ("door"/"poor", "wood"/"good"),
  which the reader must not correct as typos.

WordNet 3.0 Copyright 2006 by Princeton University (WordNet license: free to use, copy and distribute with
this notice).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.compliance.classifier import (  # noqa: E402
    CONDITION_SPELLINGS,
    MATERIAL_SPELLINGS,
    NON_COMPLIANT_CONDITIONS,
    one_edit_apart,
)

SEEDS = ROOT / "tools" / "compliance_lexicon_seeds.json"
GLOSSARY = ROOT / "tools" / "compliance_glossary.json"
OUT = ROOT / "shared" / "compliance" / "lexicon.json"
FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
SUBSTANCE_LEXFILE = 27
UNCLEAR_ABOVE = 1  # hypernym levels above a regulated material's seed that are "unclear" (metal, resin, alloy)
TROPONYMS = 200  # kinds of a derived verb followed (all of them for the seeds here)
ANTONYM_GRADE = {"excellent": "poor", "good": "poor", "fair": "good", "poor": "good"}  # antonym's grade


@dataclass
class Synset:
    pos: str
    words: list[str]
    gloss: str
    head: bool
    lexfile: int
    pointers: list[tuple[str, tuple[str, str]]] = field(default_factory=list)


class WordNet:
    """The parts of WordNet 3.0's database files this builder needs (data.*, index.*, verb.exc)."""

    def __init__(self, folder: Path) -> None:
        self.synsets: dict[tuple[str, str], Synset] = {}
        self.senses: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)  # (lemma, pos) → keys
        self.tagged: dict[tuple[str, str], int] = {}  # (lemma, pos) → how often its senses were tagged in a corpus
        for pos, name in FILES.items():
            for line in (folder / f"data.{name}").read_text(encoding="latin-1").splitlines():
                if not line.startswith("  "):
                    self._read_synset(pos, line)
            for line in (folder / f"index.{name}").read_text(encoding="latin-1").splitlines():
                if not line.startswith("  "):
                    fields = line.split()
                    offsets = fields[4 + int(fields[3]) + 2 :]
                    self.senses[(fields[0].replace("_", " "), pos)] = [(pos, offset) for offset in offsets]
                    self.tagged[(fields[0].replace("_", " "), pos)] = int(fields[4 + int(fields[3]) + 1])
        self.irregular_participles: dict[str, list[str]] = defaultdict(list)  # lemma → irregular forms
        for line in (folder / "verb.exc").read_text(encoding="latin-1").splitlines():
            form, *lemmas = line.split()
            for lemma in lemmas:
                self.irregular_participles[lemma.replace("_", " ")].append(form.replace("_", " "))

    def _read_synset(self, pos: str, line: str) -> None:
        body, _, gloss = line.partition(" | ")
        fields = body.split()
        count = int(fields[3], 16)
        words = [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).lower().replace("_", " ") for i in range(count)]
        at = 4 + 2 * count
        synset = Synset(pos, words, gloss.strip(), fields[2] == "a", int(fields[1]))
        for i in range(int(fields[at])):
            symbol, offset, target_pos = fields[at + 1 + 4 * i : at + 4 + 4 * i]
            synset.pointers.append((symbol, ("a" if target_pos == "s" else target_pos, offset)))
        self.synsets[(pos, fields[0])] = synset

    def sense(self, lemma: str, pos: str, gloss: str) -> tuple[str, str]:
        for key in self.senses[(lemma, pos)]:
            if any(self.synsets[key].gloss.startswith(start) for start in gloss.split(";")):
                return key
        raise SystemExit(f"seed {lemma!r} ({pos}): no sense whose gloss starts with {gloss!r}")

    def related(self, key: tuple[str, str], *symbols: str) -> list[tuple[str, str]]:
        return [target for symbol, target in self.synsets[key].pointers if symbol in symbols]

    def closure(self, key: tuple[str, str], symbol: str) -> list[tuple[str, str]]:
        seen, frontier = [], [key]
        while frontier:
            frontier = [t for k in frontier for t in self.related(k, symbol, symbol + "i") if t not in seen]
            seen.extend(frontier)
        return seen

    def used_mostly_as(self, word: str, pos: str) -> bool:
        """The word is tagged in WordNet's corpus at least as often in `pos` as in any other part of speech
        ("crack" is mostly a noun, so the adjective "crack", first-rate, is not kept)."""
        others = [self.tagged.get((word, other), 0) for other in FILES if other != pos]
        return (word, pos) in self.senses and self.tagged.get((word, pos), 0) >= max(others)

    def is_substance(self, word: str) -> bool:
        return any(self.synsets[k].lexfile == SUBSTANCE_LEXFILE for k in self.senses.get((word, "n"), []))

    def about_age(self, key: tuple[str, str]) -> bool:
        return any("age" in self.synsets[t].words for t in self.related(key, "="))


def verb_forms(wordnet: WordNet, verb: str) -> list[str]:
    """The participles a note writes: corroded, corroding, dropped; worn (verb.exc)."""
    if " " in verb:
        return []
    irregular = wordnet.irregular_participles.get(verb, [])
    stem = verb[:-1] if verb.endswith("e") and not verb.endswith(("ee", "ge", "ye", "oe")) else verb  # singeing
    if re.search(r"(?<![aeiou])[aeiou][bdgklmnprt]$", verb) and len(verb) <= 4:
        stem = verb + verb[-1]  # drop → dropped, dropping
    if verb.endswith("e"):
        regular = verb + "d"
    elif re.search(r"[^aeiou]y$", verb):
        regular = verb[:-1] + "ied"
    else:
        regular = stem + "ed"
    return [*(irregular or [regular]), stem + "ing"]


def condition_words(wordnet: WordNet, seed: dict) -> dict[str, tuple[str, str]]:
    """word → (grade, how it was reached) for one condition seed."""
    key = wordnet.sense(seed["lemma"], seed["pos"], seed["gloss"])
    grade, found = seed["grade"], {}

    def add(words: list[str], grade: str, how: str, sense: tuple[str, str] | None = None) -> None:
        for word in words:
            if (sense is None or wordnet.used_mostly_as(word, sense[0])) and not wordnet.is_substance(word):
                found.setdefault(word, (grade, how))

    synset = wordnet.synsets[key]
    for word in synset.words:  # the seed sense's own words: whatever else they mean, here they mean this
        found.setdefault(word, (grade, f"WordNet: {_same_as(word, seed['lemma'])}"))
    if seed["pos"] == "a":
        if synset.head:
            for satellite in wordnet.related(key, "&"):
                add(wordnet.synsets[satellite].words, grade, f"WordNet: a kind of {seed['lemma']}", satellite)
        if not wordnet.about_age(key):
            for also in wordnet.related(key, "^"):
                if not wordnet.about_age(also):
                    add(wordnet.synsets[also].words, grade, f"WordNet: akin to {seed['lemma']}", also)
            for antonym in wordnet.related(key, "!"):
                if not wordnet.about_age(antonym):
                    opposite = f"WordNet: the opposite of {seed['lemma']}"
                    add(wordnet.synsets[antonym].words, ANTONYM_GRADE[grade], opposite, antonym)
    else:
        hyponyms = [k for k in wordnet.related(key, "~", "~i") if wordnet.synsets[k].lexfile == synset.lexfile]
        for sense in [key, *hyponyms]:
            nouns = wordnet.synsets[sense].words
            if sense != key:
                add(nouns, grade, f"WordNet: a kind of {seed['lemma']}", sense)
            for derived in wordnet.related(sense, "+"):
                target = wordnet.synsets[derived]
                if derived[0] == "v":  # the verb and its kinds ("damage" → "dent", "shatter", "corrode")
                    for verb_sense in [derived, *wordnet.closure(derived, "~")[:TROPONYMS]]:
                        for verb in wordnet.synsets[verb_sense].words:
                            if wordnet.senses.get((verb, "v"), [None])[0] == verb_sense:  # the verb's commonest sense
                                add(verb_forms(wordnet, verb), grade, f"WordNet: {verb} ({nouns[0]})")
                elif derived[0] == "a":
                    add(target.words, grade, f"WordNet: of {nouns[0]}", derived)
    return found


def _same_as(word: str, lemma: str) -> str:
    return "seed word" if word == lemma else f"same sense as {lemma}"


def _kind_of(word: str, lemma: str) -> str:
    return "seed word" if word == lemma else f"a kind of {lemma}"


def material_words(wordnet: WordNet, seeds: list[dict]) -> dict[str, dict]:
    """word → {"roots": {seed: [material, how]}} for the material seeds, with "unclear" entries for
    senses close above a regulated seed."""
    entries: dict[str, dict] = {}
    regulated, materials, lemmas = set(), {}, {}
    for seed in seeds:
        key = wordnet.sense(seed["lemma"], "n", seed["gloss"])
        general = seed["material"] == "other"  # "metal", "alloy" themselves could be iron: only their kinds are other
        for sense in wordnet.closure(key, "~") if general else [key, *wordnet.closure(key, "~")]:
            for word in wordnet.synsets[sense].words:
                if len(word) <= 2 or word.startswith("atomic number"):  # symbols: "am", "as", "no" are English words
                    continue
                roots = entries.setdefault(word, {"roots": {}})["roots"]
                roots[seed["lemma"]] = [seed["material"], f"WordNet: {_kind_of(word, seed['lemma'])}"]
        if general:
            for word in wordnet.synsets[key].words:
                roots = entries.setdefault(word, {"roots": {}})["roots"]
                roots[seed["lemma"]] = ["unclear", "WordNet: covers iron and other metals"]
        else:
            regulated.add(key)
            materials[key], lemmas[key] = seed["material"], seed["lemma"]
    for key in sorted(regulated):  # a set: sorted, so every build writes the same file
        above, frontier = [], [key]
        for _ in range(UNCLEAR_ABOVE):
            frontier = [t for k in frontier for t in wordnet.related(k, "@")]
            above.extend(frontier)
        for sense in above:
            for word in wordnet.synsets[sense].words:
                roots = entries.setdefault(word, {"roots": {}})["roots"]
                if all(meant == "unclear" for meant, _ in roots.values()):
                    roots[lemmas[key]] = ["unclear", f"WordNet: covers {materials[key]} and more"]
    return entries


def typo_exceptions(wordnet: WordNet) -> list[str]:
    spelled = {w for forms in (*MATERIAL_SPELLINGS.values(), *CONDITION_SPELLINGS.values()) for s in forms
               for w in re.split(r"[\W_]+", s.lower()) if len(w) >= 4}  # fmt: skip
    words = {lemma for lemma, _ in wordnet.senses if lemma.isalpha() and len(lemma) >= 3}
    return sorted(w for w in words - spelled if any(one_edit_apart(w, known) for known in spelled))


def glossary_words(wordnet: WordNet, glossary: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """(conditions, materials): word → {"roots": {concept: [meaning, how, negated?]}} from the workshop
    glossary; a verb in every participle (`verb_forms`), a frame as every combination of its parts."""
    conditions: dict[str, dict] = {}
    for concept, entry in glossary["conditions"].items():
        forms = [form for verb in entry.get("verbs", []) for form in verb_forms(wordnet, verb)]
        words = [*entry.get("words", []), *forms]
        if "frames" in entry:
            words += [" ".join(parts) for parts in itertools.product(*entry["frames"])]
        reading = [entry["grade"], f"glossary: {concept}", *([entry["negated"]] if "negated" in entry else [])]
        for word in words:
            conditions.setdefault(_phrase(word), {"roots": {}})["roots"][concept] = reading
    materials: dict[str, dict] = {}
    for family, entry in glossary["materials"].items():
        for word in entry["words"]:
            roots = materials.setdefault(_phrase(word), {"roots": {}})["roots"]
            roots[family] = [entry["material"], f"glossary: {family}"]
    return conditions, materials


def _redundant(phrase: str, entry: dict, read: Collection[str]) -> bool:
    """The regulation words in a phrase all mean what the phrase means and its other words read nothing
    ("good condition"), so the rules read it as well; "good as new" and "weathering steel" are kept."""
    meanings = {read[0] for read in entry["roots"].values()}
    inside = [meant for spelling, meant in _REGULATION_WORDS.items() if re.search(rf"\b{spelling}\b", phrase)]
    others = set(phrase.split()) - {w for spelling in _REGULATION_WORDS for w in spelling.split()}
    return bool(inside) and set(inside) == meanings and not others & set(read)


_REGULATION_WORDS = {
    re.sub(r"[\W_]+", " ", spelling.lower()): meant
    for spellings in (MATERIAL_SPELLINGS, CONDITION_SPELLINGS)
    for meant, forms in spellings.items()
    for spelling in forms
}


def _normalized(table: dict[str, dict]) -> dict[str, dict]:
    """WordNet's words as phrases ("brand-new" is "brand new"), the roots of words that become one merged, so
    the reader needs no normalising on load."""
    phrases: dict[str, dict] = {}
    for word, entry in table.items():
        phrases.setdefault(_phrase(word), {"roots": {}})["roots"].update(entry["roots"])
    return phrases


def _phrase(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def build(wordnet: WordNet, seeds: dict, glossary: dict | None = None) -> dict:
    conditions: dict[str, dict] = {}
    for seed in seeds["conditions"]:
        for word, (grade, how) in condition_words(wordnet, seed).items():
            conditions.setdefault(word, {"roots": {}})["roots"][seed["lemma"]] = [grade, how]
    for word in seeds["not_states"]:
        conditions.pop(word, None)
    spelled = {s.lower() for forms in (*MATERIAL_SPELLINGS.values(), *CONDITION_SPELLINGS.values()) for s in forms}
    materials = material_words(wordnet, seeds["materials"])
    for word in spelled:  # the regulation's own spellings are read by the rules, not the lexicon
        conditions.pop(word, None)
        materials.pop(word, None)
    for word in set(conditions) & set(materials):  # a word that names a material is not a condition
        del conditions[word]
    for word in seeds["not_states"]:
        conditions.pop(word, None)
    for entry in materials.values():  # a regulated material is more specific than "a kind of metal or alloy"
        if len({meant for meant, _ in entry["roots"].values()}) > 1:
            entry["roots"] = {root: read for root, read in entry["roots"].items() if read[0] != "other"}
    conditions, materials = _normalized(conditions), _normalized(materials)  # as the reader writes a note's words
    glossary_conditions, glossary_materials = glossary_words(wordnet, glossary or {"conditions": {}, "materials": {}})
    conditions.update(glossary_conditions)  # the workshop's reading of a word replaces WordNet's
    materials.update(glossary_materials)
    for word in set(conditions) & set(glossary_materials):
        del conditions[word]
    for word in set(glossary_conditions) & set(materials) - set(glossary_materials):
        del materials[word]
    for word in {_phrase(s) for s in spelled}:
        conditions.pop(word, None)
        materials.pop(word, None)
    for table in (conditions, materials):  # "good condition", "carbon steel": the rules read them as they are
        for phrase in [p for p in table if " " in p and _redundant(p, table[p], {*conditions, *materials})]:
            del table[phrase]
    return {
        "about": __doc__.split("\n\n")[0].replace("\n", " "),
        "license": "Derived from WordNet 3.0. WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.",
        "non_compliant_grades": list(NON_COMPLIANT_CONDITIONS),
        "conditions": dict(sorted(conditions.items())),
        "materials": dict(sorted(materials.items())),
        "typo_exceptions": typo_exceptions(wordnet),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    lexicon = build(WordNet(args.wordnet), json.loads(SEEDS.read_text()), json.loads(GLOSSARY.read_text()))
    args.out.write_text(json.dumps(lexicon, indent=0, ensure_ascii=False) + "\n")
    counts = {kind: len(lexicon[kind]) for kind in ("conditions", "materials", "typo_exceptions")}
    print(f"{args.out}: {counts} entries, {args.out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
