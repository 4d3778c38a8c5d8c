"""Flickr8k as an annotation dataset of everyday words: each photo's labels are the nouns said in
at least 2 of its 5 captions, mapped to concepts through the shipped vocabulary (`tagcap.concepts`;
plurals and synonyms counted as their concept: `men` is `man`, `bike` is `bicycle`). The label list
is fixed in the vocabulary (nouns of at least 20 train photos), so every split has the same labels.
Same folder and splits as the caption format (`flickr8k`): train, dev (as validation) and test.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from tagcap.data.readers import flickr8k
from tagcap.data.records import AnnotationDataset

MIN_CAPTIONS = 2


def detect(root: Path) -> bool:
    return False  # the folder is a captioning dataset first; this reading is asked for by name


def photo_labels(captions) -> tuple[str, ...]:
    """The labels (names, in vocabulary order) said in at least `MIN_CAPTIONS` of a photo's captions."""
    from tagcap.concepts import concepts

    vocab = concepts()
    said = Counter(s for c in captions for s in vocab.caption_labels(c))
    names = vocab.data["flickr8k_nouns"]["labels"]
    return tuple(names[s] for s in names if said[s] >= MIN_CAPTIONS)


def read(root: Path) -> AnnotationDataset:
    from tagcap.concepts import concepts

    base = flickr8k.read(root)
    labels = list(concepts().data["flickr8k_nouns"]["labels"].values())
    splits = {name: [replace(r, labels=photo_labels(r.captions)) for r in records]
              for name, records in base.splits.items()}
    return AnnotationDataset(name="flickr8k", root=root, format="flickr8k-nouns", labels=labels, splits=splits)
