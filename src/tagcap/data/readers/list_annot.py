"""List + annotation text: <name>_{train,test}_list.txt (an image path a line: the first field;
the release's lists may carry more after a space), <name>_{train,test}_annot.txt (a 0/1 row a
line, spaces or commas) and a label dictionary (<name>_dict.txt, <name>_dict<K>.txt,
<name>_labels.txt or <name>_words.txt: a label a line, optionally with its index). These are the
MS-COCO (coco_*, coco_dict80.txt) and NUS-WIDE (nus1_*, nus1_dict81.txt) files of the Multi-order
RNN release; image paths are relative to images/ (a symbolic link to the photo folder will do).
The release takes its validation images from test; tagcap carves them from train.

Built for 200k-image lists: the label matrix is parsed straight into one uint8 array.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tagcap.data.readers.common import read_lines, read_list_splits
from tagcap.data.records import AnnotationDataset
from tagcap.errors import DataError

DICT_SUFFIXES = ("_dict.txt", "_labels.txt", "_words.txt")


def _prefix(root: Path) -> str | None:
    for annot in sorted(root.glob("*_train_annot.txt")):
        prefix = annot.name[: -len("_train_annot.txt")]
        if (root / f"{prefix}_train_list.txt").is_file():
            return prefix
    return None


def detect(root: Path) -> bool:
    return _prefix(root) is not None


def _read_dictionary(path: Path) -> list[str]:
    labels = []
    for n, line in enumerate(read_lines(path), 1):
        tokens = line.split()
        if len(tokens) == 2 and tokens[0].isdigit():
            tokens = tokens[1:]
        elif len(tokens) == 2 and tokens[1].isdigit():
            tokens = tokens[:1]
        if len(tokens) != 1:
            raise DataError(f"{path}:{n}", f"malformed line {line!r}: expected a label, or 'index label'")
        labels.append(tokens[0])
    return labels


def _read_matrix(path: Path, width: int) -> np.ndarray:
    lines = read_lines(path)
    matrix = np.zeros((len(lines), width), dtype=np.uint8)
    separators = re.compile(r"[,\s]+")
    for n, line in enumerate(lines):
        tokens = separators.split(line)
        if len(tokens) != width:
            raise DataError(f"{path}:{n + 1}", f"{len(tokens)} values but the dictionary has {width} labels")
        try:
            row = np.array(tokens, dtype=np.uint8)
        except ValueError:
            row = None
        if row is None or row.max() > 1 or not all(t in ("0", "1") for t in tokens if len(t) != 1):
            raise DataError(f"{path}:{n + 1}", f"malformed line: expected 0/1 values, got {line[:60]!r}")
        matrix[n] = row
    return matrix


def _read_list(path: Path) -> list[str]:
    """Image paths: the first field of each line."""
    return [line.split()[0] for line in read_lines(path)]


def _dictionary_path(root: Path, prefix: str) -> Path | None:
    for suffix in DICT_SUFFIXES:
        if (root / f"{prefix}{suffix}").is_file():
            return root / f"{prefix}{suffix}"
    numbered = sorted(p for p in root.glob(f"{prefix}_dict*.txt") if p.stem[len(prefix) + 5:].isdigit())
    return numbered[0] if numbered else None


def read(root: Path) -> AnnotationDataset:
    prefix = _prefix(root)
    if prefix is None:
        raise DataError(root, "no <name>_train_list.txt with <name>_train_annot.txt")
    dict_path = _dictionary_path(root, prefix)
    if dict_path is None:
        raise DataError(root, f"no label dictionary: expected one of {[prefix + s for s in DICT_SUFFIXES]} "
                              f"or {prefix}_dict<K>.txt")
    labels = _read_dictionary(dict_path)
    splits = read_list_splits(root, prefix, labels, "_annot.txt", lambda path: _read_matrix(path, len(labels)),
                              read_list=_read_list)
    return AnnotationDataset(name=prefix.lower(), root=root, format="list-annot", labels=labels, splits=splits)
