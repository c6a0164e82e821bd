"""Learning from the review queue: the words that keep notes in review, and a site glossary of the answers.

A note goes to review when it states its condition or material in a word no list holds. A workshop writes
the same few words again and again, so one answer decides many notes, night after night. `review_worklist`
ranks the words of the notes it sent to review with a slot unread, other than those it read there, by how
many of those notes hold them; a word mostly in notes it decided (a part name, a template word, a word
read as part of another phrase) is left out, and one seldom in decided notes comes first. A reviewer writes
the answers as a site glossary (`read_site_glossary`: the two sections of a vocabulary file, meaning → phrases), and
`compliance train --glossary` puts it into the model: the model's reader knows the site's words wherever
the model scores (the nightly timer loads it with the model), and every reading through one says so
("read 'tatty' as poor: site glossary").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from shared.compliance.classifier import (
    CONDITIONS,
    MATERIAL_SPELLINGS,
    MATERIALS,
    NEEDS_REVIEW,
    TEENS,
    TENS,
    TEXT,
    UNITS,
    read_notes,
)
from shared.compliance.lexicon import OTHER, UNCLEAR, Lexicon, phrase_of
from shared.core.telemetry import InputError

SECTIONS = {"conditions": "condition", "materials": "material"}  # the glossary's sections → the lexicon's kinds
MEANINGS = {"conditions": (*CONDITIONS, UNCLEAR), "materials": (*MATERIALS, OTHER, UNCLEAR)}
MIN_SHARE_IN_REVIEW = 0.5  # of the notes holding a word, the share that went to review, for it to be listed
WORKLIST_COLUMNS = ["word", "review_notes", "share_in_review", "lacking_condition", "lacking_material", "example"]


def read_site_glossary(path: str | Path) -> dict[str, dict[str, str]]:
    """A site glossary file → kind ("condition", "material") → phrase → meaning, or `InputError` naming the
    file and what is wrong in it.

    The file is JSON in the shape of a vocabulary file's two sections: {"conditions": {"poor": ["tatty",
    "past it"], ...}, "materials": {"plastic": ["acetal"], "other": ["monel"]}}. A condition is one of the
    regulation's grades, a material one of its materials or "other"; either may be "unclear" (the word says
    too little: such notes keep going to review, now saying which word). A phrase under two meanings is refused.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable JSON site glossary ({error})") from error
    return parse_site_glossary(data, str(path))


def parse_site_glossary(data: Any, source: str) -> dict[str, dict[str, str]]:
    """`read_site_glossary` on data already parsed from JSON; `source` names it in errors."""
    if not isinstance(data, dict) or not data or set(data) - SECTIONS.keys():
        raise InputError(f"{source}: a site glossary is an object with 'conditions' and/or 'materials'")
    glossary: dict[str, dict[str, str]] = {}
    for section, by_meaning in data.items():
        if not isinstance(by_meaning, dict):
            raise InputError(f"{source}: '{section}' must map each meaning to a list of phrases")
        entries = glossary.setdefault(SECTIONS[section], {})
        for meaning, phrases in by_meaning.items():
            if meaning not in MEANINGS[section]:
                raise InputError(f"{source}: '{section}' has meaning '{meaning}'; expected one of "
                                 f"{', '.join(MEANINGS[section])}")  # fmt: skip
            if not isinstance(phrases, list) or not all(isinstance(phrase, str) for phrase in phrases):
                raise InputError(f"{source}: '{section}'/'{meaning}' must be a list of phrases")
            for written in phrases:
                phrase = phrase_of(written)
                if not phrase:
                    raise InputError(f"{source}: '{section}'/'{meaning}' has a phrase with no words ({written!r})")
                if entries.setdefault(phrase, meaning) != meaning:
                    raise InputError(f"{source}: '{phrase}' is both {entries[phrase]} and {meaning}")
    return {kind: entries for kind, entries in glossary.items() if entries}


def review_worklist(components: pd.DataFrame, results: pd.DataFrame, lexicon: Lexicon) -> pd.DataFrame:
    """The words to answer first. Per word held by notes sent to review with their condition or material
    unread (other than the words read in them): how many such notes hold it (`review_notes`), its share of
    all the notes holding it that went so (`share_in_review`, at least `MIN_SHARE_IN_REVIEW`), how many of
    them lack each slot, and the text of one. First the words of many such notes and few others: ranked by
    review notes weighted by how far the share is above that of all notes (a part name is near it).
    `results` are `score_components`' for `components` read with `lexicon`. The regulation's words,
    English stop words, number words and words with a digit (years, part numbers, designations) are left
    out."""
    components = components.reset_index(drop=True)
    texts = components[TEXT].fillna("").astype(str)
    in_review = texts[results[NEEDS_REVIEW].to_numpy() == 1]
    notes = read_notes(in_review, lexicon).set_axis(in_review.index)  # only these are read again
    lacking = {slot: (notes[slot].isna() & ~notes[f"{slot}_unclear"]).reindex(texts.index, fill_value=False)
               for slot in SECTIONS.values()}  # fmt: skip
    unread = (lacking["condition"] | lacking["material"]).to_numpy()
    read = (notes["condition_written"].fillna("") + " " + notes["material_written"].fillna("")).map(phrase_of)
    read = read.reindex(texts.index, fill_value="")
    regulation = [*CONDITIONS, *MATERIALS, *(spelled for group in MATERIAL_SPELLINGS.values() for spelled in group)]
    known = {word for spelled in regulation for word in phrase_of(spelled).split()}
    known |= {*UNITS, *TEENS, *TENS, "hundred", "thousand", *ENGLISH_STOP_WORDS}  # a year in words; "from", "and"
    held_words = [
        sorted(set(phrase_of(text).split()) - set(done.split())) for text, done in zip(texts, read, strict=True)
    ]
    words = pd.Series(held_words, index=texts.index).explode().dropna()
    words = words[~words.isin(known) & ~words.str.contains(r"\d")]
    held = pd.DataFrame({"row": words.index, "word": words.to_numpy()})
    held["unread"] = unread[held["row"]]
    for slot, lacks in lacking.items():
        held[f"lacking_{slot}"] = lacks.to_numpy()[held["row"]]
    per_word = held.groupby("word").agg(
        review_notes=("unread", "sum"),
        notes=("row", "size"),
        lacking_condition=("lacking_condition", "sum"),
        lacking_material=("lacking_material", "sum"),
    )
    per_word["share_in_review"] = (per_word["review_notes"] / per_word["notes"]).round(3)
    per_word["example"] = held[held["unread"]].groupby("word")["row"].first().map(texts)
    listed = per_word[(per_word["review_notes"] > 0) & (per_word["share_in_review"] >= MIN_SHARE_IN_REVIEW)]
    base = unread.mean()  # a word spread over notes as they come (a part name) has about this share
    lift = (listed["share_in_review"] - base).clip(lower=0) / (1.0 - base) if base < 1 else 1.0  # all in review
    listed = listed.assign(rank=listed["review_notes"] * lift).reset_index()
    listed = listed.sort_values(["rank", "word"], ascending=[False, True], ignore_index=True)
    return listed[WORKLIST_COLUMNS].astype({"review_notes": "int64", "lacking_condition": "int64",
                                            "lacking_material": "int64"})  # fmt: skip
