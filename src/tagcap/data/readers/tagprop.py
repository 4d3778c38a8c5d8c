"""TagProp / LEAR release: <name>_words.txt, <name>_{train,test}_list.txt, <name>_{train,test}_annot.mat.

Used for Corel-5k, ESP Game and IAPR TC-12. Each .mat holds one uint matrix (rows = list
lines, columns = words). List entries are image ids, resolved under images/ (suffix optional).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from tagcap.data.readers.common import check_records, image_folder, read_lines, resolve_image
from tagcap.data.records import AnnotationDataset, Record
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


def records_from_matrix(ids: list[str], matrix: np.ndarray, labels: list[str], image_dir: Path,
                        list_path: Path, annot_path: Path) -> list[Record]:
    """Rows of a 0/1 matrix to records; shape errors name both files."""
    if matrix.ndim != 2 or matrix.shape[1] != len(labels):
        raise DataError(annot_path, f"label matrix has shape {matrix.shape}, expected {len(labels)} "
                        f"columns (one per label)")
    if matrix.shape[0] != len(ids):
        raise DataError(annot_path, f"{matrix.shape[0]} rows but {list_path.name} lists {len(ids)} images")
    bad = ~np.isin(matrix, (0, 1))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"{annot_path} row {row + 1}", f"value {matrix[row, col]} in column {col + 1} is not 0 or 1")
    records = []
    for i, image_id in enumerate(ids):
        labs = tuple(labels[j] for j in np.flatnonzero(matrix[i]))
        records.append(Record(image_id, resolve_image(image_dir, image_id, f"{list_path}:{i + 1}"), labs,
                              where=f"{list_path}:{i + 1}"))
    return check_records(records, labels, str(list_path))


def read_list_splits(root: Path, prefix: str, labels: list[str], annot_suffix: str,
                     load_matrix: Callable[[Path], np.ndarray],
                     read_list: Callable[[Path], list[str]] = read_lines) -> dict[str, list[Record]]:
    """<prefix>_<split>_list.txt + <prefix>_<split><annot_suffix> for each split whose list exists."""
    splits = {}
    for split in ("train", "val", "test"):
        list_path, annot_path = root / f"{prefix}_{split}_list.txt", root / f"{prefix}_{split}{annot_suffix}"
        if list_path.is_file():
            splits[split] = records_from_matrix(read_list(list_path), load_matrix(annot_path), labels,
                                                image_folder(root), list_path, annot_path)
    return splits


def read(root: Path) -> AnnotationDataset:
    prefix = _prefix(root)
    if prefix is None:
        raise DataError(root, "no <name>_words.txt with <name>_train_list.txt and <name>_train_annot.mat")
    labels = read_lines(root / f"{prefix}_words.txt")
    splits = read_list_splits(root, prefix, labels, "_annot.mat", load_mat_matrix)
    return AnnotationDataset(name=prefix.lower(), root=root, format="tagprop", labels=labels, splits=splits)
