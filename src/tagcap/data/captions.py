"""Caption text: tokenizer and word vocabulary (saved in captioning checkpoints).

Tokens are lower-cased runs of letters and digits: punctuation is dropped, "dog's" becomes
"dog s". Scoring re-tokenises with the PTB tokenizer (pycocoevalcap), as the literature does.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from tagcap.errors import DataError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordVocabulary:
    """Words seen at least `min_count` times in the training captions, after four special tokens."""

    pad, start, end, unk = 0, 1, 2, 3

    def __init__(self, words: Sequence[str], max_len: int = 20, min_count: int = 5):
        words = list(words)
        if words[:4] != list(SPECIALS):
            words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        if len(set(words)) != len(words):
            raise DataError("word list", "duplicate words")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self.max_len = max_len
        self.min_count = min_count

    @classmethod
    def from_captions(cls, captions: Iterable[str], min_count: int = 5, max_len: int = 20) -> "WordVocabulary":
        counts = Counter(w for c in captions for w in tokenize(c))
        # most frequent first, ties alphabetical: the same captions always give the same indices
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept, max_len=max_len, min_count=min_count)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str) -> list[int]:
        """Word ids of the first `max_len` words, unknown words as <unk>, then <end>."""
        ids = [self.index.get(w, self.unk) for w in tokenize(caption)[: self.max_len]]
        return ids + [self.end]

    def encode_batch(self, captions: Sequence[str]) -> np.ndarray:
        """[N, max_len + 1] int64, padded with <pad> (0) after <end>."""
        out = np.zeros((len(captions), self.max_len + 1), dtype=np.int64)
        for i, c in enumerate(captions):
            ids = self.encode(c)
            out[i, : len(ids)] = ids
        return out

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == self.end:
                break
            if i in (self.pad, self.start):
                continue
            words.append(self.words[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"words": self.words, "max_len": self.max_len, "min_count": self.min_count}

    @classmethod
    def from_dict(cls, d: dict) -> "WordVocabulary":
        return cls(d["words"], max_len=d["max_len"], min_count=d["min_count"])


def references(records) -> dict[str, list[str]]:
    """{image key: its reference captions} for records of a captioned split, as the metrics take them."""
    return {r.key: list(r.captions) for r in records}
