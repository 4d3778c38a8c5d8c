"""The record every reader produces, and the dataset that groups them into splits."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from tagcap.data.vocab import Vocabulary


@dataclass(frozen=True)
class Record:
    key: str                      # the image's name as the dataset files spell it
    image: Path                   # absolute path of the image file
    labels: tuple[str, ...] = ()
    captions: tuple[str, ...] = ()
    where: str = field(default="", compare=False)  # the file and line (or entry) it was read from, for errors


@dataclass
class AnnotationDataset:
    name: str                     # e.g. "corel5k"; used for published-row lookups and cache names
    root: Path
    format: str
    labels: list[str]             # the label list in the dataset's own order
    splits: dict[str, list[Record]] = field(default_factory=dict)
    val_carved: bool = False      # True when "val" was carved from "train" by us

    def vocabulary(self) -> Vocabulary:
        """Label indices in dataset order; frequencies from the training split only."""
        return Vocabulary.from_records(self.labels, self.splits["train"])

    def all_records(self) -> list[Record]:
        """Every record once, sorted by key: the feature cache's row order. Sorting (rather than split
        order) keeps the cache valid whichever seed carved the validation split."""
        seen: dict[str, Record] = {}
        for recs in self.splits.values():
            for r in recs:
                seen.setdefault(r.key, r)
        return [seen[k] for k in sorted(seen)]

    def summary(self) -> str:
        parts = [f"{self.name} ({self.format}, {len(self.labels)} labels)"]
        if not self.labels:  # a captioning dataset
            for split, recs in self.splits.items():
                caps = sum(len(r.captions) for r in recs)
                parts.append(f"{split}: {len(recs)} images, {caps} captions")
            return "; ".join(parts).replace(", 0 labels)", ", captions)")
        for split, recs in self.splits.items():
            unlabeled = sum(1 for r in recs if not r.labels)
            mean = sum(len(r.labels) for r in recs) / max(len(recs), 1)
            parts.append(f"{split}: {len(recs)} images, {mean:.2f} labels/image, "
                         f"{unlabeled} with no label")
        if self.val_carved:
            parts.append("(val carved from train with a fixed seed)")
        return "; ".join(parts)


def carve_validation(dataset: AnnotationDataset, fraction: float = 0.1, seed: int = 0) -> AnnotationDataset:
    """Split a validation set off train when the format has none.

    A fixed seed keeps the split identical across runs, so thresholds and early stopping
    are always chosen on the same images and the test split stays untouched.
    """
    if "val" in dataset.splits or fraction <= 0:
        return dataset
    train = list(dataset.splits["train"])
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(train) * fraction)))
    val_idx = set(order[:n_val])
    dataset.splits = {
        "train": [r for i, r in enumerate(train) if i not in val_idx],
        "val": [r for i, r in enumerate(train) if i in val_idx],
        **{k: v for k, v in dataset.splits.items() if k != "train"},
    }
    dataset.val_carved = True
    return dataset
