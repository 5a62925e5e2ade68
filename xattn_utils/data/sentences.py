"""Natural English–Italian sentences: the committed bilingual set the default corpora speak.

``sentences_enit.tsv`` (beside this module) holds everyday sentences written for this project (4–15 words, questions,
names, numbers spelled out as a speaker says them), each with a faithful Italian translation. Sentences, not
utterances, are split: a sentence's split is fixed by a hash of its id, so a test sentence is never in train or dev
whatever the corpus config, and adding sentences never moves an old one to another split.

    >>> pairs = load_pairs()
    >>> pools = split_pairs(pairs)
    >>> sorted(pools) == ["dev", "test", "train"]
    True
"""
from __future__ import annotations

import csv
import functools
import hashlib
from importlib import resources

from ..errors import InputError
from .grammar import Sentence

SPLIT_SHARES = (("test", 0.25), ("dev", 0.10), ("train", 0.65))  # test first: it gets a quarter of the set
TSV = "sentences_enit.tsv"


@functools.lru_cache(maxsize=1)
def load_pairs() -> tuple[tuple[str, Sentence], ...]:
    """Every (id, :class:`Sentence`) of the committed set, in file order."""
    text = resources.files(__package__).joinpath(TSV).read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0] != ["id", "english", "italian"]:
        raise InputError(f"{TSV}: the header must be 'id<TAB>english<TAB>italian'; restore it from the repository")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or not all(f.strip() for f in row):
            raise InputError(f"{TSV} line {n}: needs three non-empty tab-separated fields (id, english, italian)")
        out.append((row[0], Sentence(row[1], row[2])))
    return tuple(out)


def split_of(sentence_id: str) -> str:
    """The split of one sentence: a uniform number from the sha256 of its id, cut at :data:`SPLIT_SHARES`."""
    u = int.from_bytes(hashlib.sha256(f"sentence-split:{sentence_id}".encode()).digest()[:8], "big") / 2 ** 64
    edge = 0.0
    for split, share in SPLIT_SHARES:
        edge += share
        if u < edge:
            return split
    return SPLIT_SHARES[-1][0]


def split_pairs(pairs=None) -> dict[str, list[tuple[str, Sentence]]]:
    """The pairs of each split (``train``, ``dev``, ``test``), in file order; disjoint by construction."""
    pools: dict[str, list] = {s: [] for s, _ in SPLIT_SHARES}
    for sid, s in (pairs if pairs is not None else load_pairs()):
        pools[split_of(sid)].append((sid, s))
    return pools
