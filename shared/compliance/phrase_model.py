"""A phrase model for the slot the reader cannot read: the nearest lexicon phrases decide, when they agree.

A note whose condition or material is a word no list holds ("pristine", "knackered", "Teflon") goes to
review. WordLlama's static token embeddings (the `wordllama` package, which ships its weights and
tokenizer in the wheel: nothing is downloaded) put phrases of similar meaning near each other, so the
phrases of such a note are compared with the lexicon's own entries, each a labelled anchor (phrase →
reading). A phrase is read only when its `NEIGHBOURS` nearest anchors are all of one kind (condition or
material) and on one side of the regulation (compliant or not) and the nearest is at least
`MIN_SIMILARITY` away; otherwise the note goes to review as before. The reading names the anchors it
came through. Anchors come from the lexicon in use, so `Lexicon.without` removes them too.

Static embeddings put a word and its negation close ("no cracks" is near "cracked"), and an undecidable
phrase near decided ones: only unanimity among many neighbours keeps the wrong verdicts out.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.compliance.lexicon import UNCLEAR, Reading

NEIGHBOURS = 10  # nearest anchors that must agree on the kind and the side
MIN_SIMILARITY = 0.8  # cosine similarity of the nearest anchor
QUOTED = 3  # anchors the reason names
BATCH = 512  # phrases compared at once (a batch × anchors matrix of float32)
CONFIG = "l2_supercat"  # the wheel's bundled model (256 dimensions)


@dataclass(frozen=True)
class Anchors:
    """The lexicon's phrases as unit vectors, with their kind and reading."""

    phrases: np.ndarray
    kinds: np.ndarray
    readings: Sequence[Reading]
    meanings: np.ndarray
    vectors: np.ndarray


@functools.cache
def _model():  # noqa: ANN202 (wordllama's WordLlamaInference, imported on first use only)
    """The bundled model, loaded from the package's own folder: WordLlama looks for a bundled tokenizer under
    a folder name the wheel does not use and would fetch it from the hub, so its folder is given as the cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import wordllama

    return wordllama.WordLlama.load(CONFIG, cache_dir=Path(wordllama.__file__).parent, disable_download=True)


def embed(phrases: Sequence[str]) -> np.ndarray:
    """Unit vectors of `phrases` (a phrase with no token is the zero vector, near nothing)."""
    if not phrases:
        return np.zeros((0, 0), dtype=np.float32)
    vectors = _model().embed(list(phrases), norm=False)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


_ANCHOR_VECTORS: dict[str, np.ndarray] = {}  # phrase → vector, shared by the lexicons one process builds


def anchors_of(tables: Mapping[str, Mapping[str, Reading]]) -> Anchors:
    """Every phrase of the lexicon's tables (kind → phrase → reading) as an anchor. A phrase is embedded once
    per process, so a lexicon less some phrases (`Lexicon.without`, held-out seeds) costs lookups only."""
    rows = [(kind, phrase, read) for kind, table in tables.items() for phrase, read in table.items()]
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
            shared = set(words).intersection(*(set(anchors.phrases[at].split()) for at in nearest[:1]))
            framing = all({0, 1} <= sides_of_word.get(word, set()) for word in words)
            if (best < MIN_SIMILARITY or len(set(kinds)) != 1 or len(set(near_sides)) != 1 or near_sides[0] < 0
                    or not shared or framing or any(char.isdigit() for char in phrases[start + row])):  # fmt: skip
                found.append(None)
                continue
            quoted = ", ".join(f"'{phrase}'" for phrase in anchors.phrases[nearest[:QUOTED]])
            first = anchors.readings[nearest[0]]
            via = f"phrase model: nearest {quoted} ({first.via})"
            found.append((str(kinds[0]), Reading(first.meaning, via), best))
    return found
