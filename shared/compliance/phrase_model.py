"""A phrase model for the word the reader cannot read: the nearest lexicon phrases decide, when they agree.

A note whose condition or material is a word no list holds goes to review. A sentence encoder
(all-MiniLM-L6-v2 in numpy, `shared.compliance.minilm`) puts words of similar meaning near each other, so
each word of such a note that no lexicon phrase holds (a new word: a word the lexicon holds in some phrase
is the lexicon's to read, and "latch" of "does not latch" is not poor) is compared with the lexicon's
own entries, each a labelled anchor (phrase → reading), and with car part names (`phrase_model_parts.txt`,
anchors of no reading: a part name near them is not a state). A word is read only when its `NEIGHBOURS`
nearest anchors are all of one kind and on one side of the regulation, the nearest at least
`MIN_SIMILARITY` away, and the word is at most `MAX_PIECES` word pieces (gibberish is many). The reading
names the anchors it came through. Anchors come from the lexicon in use, so `Lexicon.without` removes
them too. An experiment, measured and reverted (README, Component compliance).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.compliance.lexicon import OTHER, UNCLEAR, Reading
from shared.compliance.minilm import MiniLM

NEIGHBOURS = 10  # nearest anchors that must agree on the kind and the side
MIN_SIMILARITY = 0.6  # cosine similarity of the nearest anchor
MAX_PIECES = 3  # word pieces of a word the model is asked about
PARTS = Path(__file__).with_name("phrase_model_parts.txt")
QUOTED = 3  # anchors the reason names
BATCH = 512  # phrases compared at once (a batch × anchors matrix of float32)


@dataclass(frozen=True)
class Anchors:
    """The lexicon's phrases as unit vectors, with their kind and reading."""

    phrases: np.ndarray
    kinds: np.ndarray
    readings: Sequence[Reading]
    meanings: np.ndarray
    vectors: np.ndarray


@functools.cache
def _model() -> MiniLM:
    return MiniLM(Path(os.environ["PHRASE_MODEL_DIR"]))


def embed(phrases: Sequence[str]) -> np.ndarray:
    """Unit vectors of `phrases` (a phrase with no token is the zero vector, near nothing)."""
    if not phrases:
        return np.zeros((0, 0), dtype=np.float32)
    return _model().encode(list(phrases))


_ANCHOR_VECTORS: dict[str, np.ndarray] = {}  # phrase → vector, shared by the lexicons one process builds


def anchors_of(tables: Mapping[str, Mapping[str, Reading]]) -> Anchors:
    """Every phrase of the lexicon's tables (kind → phrase → reading) as an anchor. A phrase is embedded once
    per process, so a lexicon less some phrases (`Lexicon.without`, held-out seeds) costs lookups only."""
    rows = [(kind, phrase, read) for kind, table in tables.items() for phrase, read in table.items()]
    rows += [("part", part, Reading(OTHER, "a part")) for part in PARTS.read_text().splitlines() if part]
    missing = sorted({phrase for _, phrase, _ in rows} - _ANCHOR_VECTORS.keys())
    _ANCHOR_VECTORS.update(zip(missing, embed(missing), strict=True))
    readings = [read for _, _, read in rows]
    return Anchors(
        phrases=np.array([phrase for _, phrase, _ in rows], dtype=object),
        kinds=np.array([kind for kind, _, _ in rows], dtype=object),
        readings=readings,
        meanings=np.array([read.meaning for read in readings], dtype=object),
        vectors=np.array([_ANCHOR_VECTORS[phrase] for _, phrase, _ in rows], dtype=np.float32),
    )


def nearest_readings(
    phrases: Sequence[str], anchors: Anchors, disqualifying: Collection[str]
) -> list[tuple[str, Reading, float] | None]:
    """Per phrase, (kind, reading, similarity) when its nearest anchors agree on the kind and on the side of
    the regulation (a `disqualifying` meaning or not; an unclear one agrees with nothing), else None. The
    reading's meaning is the nearest anchor's; its `via` names the nearest anchors."""
    disqualified = np.isin(anchors.meanings, list(disqualifying))
    sides = np.where(anchors.meanings == UNCLEAR, -1, disqualified.astype(int))
    found: list[tuple[str, Reading, float] | None] = []
    if len(anchors.phrases) <= NEIGHBOURS:  # the regulation's words only: nothing to compare with
        return [None] * len(phrases)
    sides_of_word: dict[str, set[int]] = {}
    for phrase, side in zip(anchors.phrases, sides, strict=True):
        for word in phrase.split():
            sides_of_word.setdefault(word, set()).add(int(side))
    for start in range(0, len(phrases), BATCH):
        similarity = embed(phrases[start : start + BATCH]) @ anchors.vectors.T
        near = np.argpartition(-similarity, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
        order = np.take_along_axis(similarity, near, axis=1).argsort(axis=1)[:, ::-1]
        near = np.take_along_axis(near, order, axis=1)
        for row, nearest in enumerate(near):
            kinds, near_sides = anchors.kinds[nearest], sides[nearest]
            best = float(similarity[row, nearest[0]])
            words = phrases[start + row].split()
            known = any(word in sides_of_word for word in words)
            pieces = sum(len(_model().tokenizer.ids(word)) - 2 for word in words)
            if (best < MIN_SIMILARITY or len(set(kinds)) != 1 or len(set(near_sides)) != 1 or near_sides[0] < 0
                    or known or pieces > MAX_PIECES or any(c.isdigit() for c in phrases[start + row])):  # fmt: skip
                found.append(None)
                continue
            quoted = ", ".join(f"'{phrase}'" for phrase in anchors.phrases[nearest[:QUOTED]])
            first = anchors.readings[nearest[0]]
            via = f"phrase model: nearest {quoted} ({first.via})"
            found.append((str(kinds[0]), Reading(first.meaning, via), best))
    return found
