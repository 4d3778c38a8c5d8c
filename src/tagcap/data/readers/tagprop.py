"""TagProp / LEAR release: <name>_words.txt, <name>_{train,test}_list.txt, <name>_{train,test}_annot.mat.

Used for Corel-5k, ESP Game and IAPR TC-12. Each .mat holds one uint matrix (rows = list
lines, columns = words). List entries are image ids, resolved under images/ (suffix optional).
"""

from __future__ import annotations

from pathlib import Path
import numpy as np

from tagcap.data.readers.common import read_lines, read_list_splits
from tagcap.data.records import AnnotationDataset
from tagcap.errors import DataError


def _prefix(root: Path) -> str | None:
    for words in sorted(root.glob("*_words.txt")):
        prefix = words.name[: -len("_words.txt")]
        if (root / f"{prefix}_train_list.txt").is_file() and (root / f"{prefix}_train_annot.mat").is_file():
            return prefix
    return None


def detect(root: Path) -> bool:
    return _prefix(root) is not None


def load_mat_matrix(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        content = loadmat(str(path))
    except Exception as e:  # scipy raises several types for a damaged file
        raise DataError(path, f"cannot read MATLAB file: {e}") from None
    arrays = [v for k, v in content.items() if not k.startswith("__") and isinstance(v, np.ndarray)]
    if len(arrays) != 1:
        raise DataError(path, f"expected exactly one matrix, found {len(arrays)}")
    return np.asarray(arrays[0])


def read(root: Path) -> AnnotationDataset:
    prefix = _prefix(root)
    if prefix is None:
        raise DataError(root, "no <name>_words.txt with <name>_train_list.txt and <name>_train_annot.mat")
    labels = read_lines(root / f"{prefix}_words.txt")
    splits = read_list_splits(root, prefix, labels, "_annot.mat", load_mat_matrix)
    return AnnotationDataset(name=prefix.lower(), root=root, format="tagprop", labels=labels, splits=splits)
