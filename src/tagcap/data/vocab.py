"""Label vocabulary: indices, train-split frequencies, and the label orders sequence models use."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from tagcap.errors import DataError

ORDERS = ("rare-first", "frequent-first", "lexicographic", "random")


class Vocabulary:
    def __init__(self, labels: Sequence[str], counts: Sequence[int] | None = None):
        self.labels = list(labels)
        if len(set(self.labels)) != len(self.labels):
            dup = sorted({x for x in self.labels if self.labels.count(x) > 1})
            raise DataError("label list", f"duplicate labels: {dup[:5]}")
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.counts = np.asarray(counts if counts is not None else [0] * len(self.labels), dtype=np.int64)

    @classmethod
    def from_records(cls, labels: Sequence[str], records: Iterable) -> "Vocabulary":
        vocab = cls(labels)
        for r in records:
            for lab in r.labels:
                vocab.counts[vocab.lookup(lab, where=r.key)] += 1
        return vocab

    def __len__(self) -> int:
        return len(self.labels)

    def lookup(self, label: str, where: str = "") -> int:
        try:
            return self.index[label]
        except KeyError:
            raise DataError(where or "labels", f"unknown label {label!r} (not in the vocabulary)") from None

    def encode(self, records: Sequence) -> np.ndarray:
        """Multi-hot matrix [N, C] (uint8) for a list of records."""
        out = np.zeros((len(records), len(self)), dtype=np.uint8)
        for i, r in enumerate(records):
            for lab in r.labels:
                out[i, self.lookup(lab, where=r.key)] = 1
        return out

    def order(self, kind: str = "rare-first", rng: np.random.Generator | None = None) -> np.ndarray:
        """A permutation of label indices; sequence models emit an image's labels in this order
        (`label_order`)."""
        return label_order(self.counts, kind, self.labels, rng)

    def to_dict(self) -> dict:
        return {"labels": self.labels, "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(d["labels"], d.get("counts"))


def label_order(counts, kind: str = "rare-first", labels: Sequence[str] | None = None,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """The order in which sequence models emit an image's labels, as a permutation of label indices.

    rare-first: ascending train frequency, ties by label index (RIA's default);
    frequent-first: descending frequency, ties by index (CNN-RNN); lexicographic: by name (needs
    `labels`); random: a fresh permutation from `rng`.
    """
    counts = np.asarray(counts, dtype=np.int64)
    idx = np.arange(len(counts))
    if kind == "rare-first":
        return np.lexsort((idx, counts))
    if kind == "frequent-first":
        return np.lexsort((idx, -counts))
    if kind == "lexicographic" and labels is not None:
        return np.array(sorted(idx, key=lambda i: labels[i]), dtype=np.int64)
    if kind == "random":
        return (rng or np.random.default_rng()).permutation(len(counts))
    raise ValueError(f"unknown label order {kind!r}; choose from {ORDERS}")
