"""A plain CSV folder for people's own photos: train.csv, test.csv, optional val.csv.

Columns `image,labels`; labels separated by ';'; image paths relative to the folder.
The vocabulary is the sorted set of labels in train (and val); a test label never seen in
training is an error, since no model could learn to predict it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tagcap.data.readers.common import check_records, read_text, resolve_image
from tagcap.data.records import AnnotationDataset, Record
from tagcap.errors import DataError


def detect(root: Path) -> bool:
    return (root / "train.csv").is_file() and (root / "test.csv").is_file()


def _read_csv(path: Path, root: Path) -> list[Record]:
    records = []
    text = read_text(path)  # UTF-8, with or without a byte-order mark; anything else named with its line
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[:2]] != ["image", "labels"]:
        raise DataError(f"{path}:1", "expected a header line 'image,labels'")
    while True:
        start = reader.line_num + 1  # where the next row begins (a quoted field may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{path}:{start}", f"malformed CSV ({e}); is a quote left open here?") from None
        if reader.line_num != start and any("\n" in c for c in row):
            raise DataError(f"{path}:{start}", "a quote opened on this line is not closed (the field runs "
                                               f"on to line {reader.line_num})")
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise DataError(f"{path}:{start}", f"expected 2 columns (image,labels), got {len(row)}")
        name, labels = row[0].strip(), row[1].strip()
        if not name:
            raise DataError(f"{path}:{start}", "empty image path")
        labs = tuple(x.strip() for x in labels.split(";") if x.strip())
        image = resolve_image(root, name, f"{path}:{start}")
        records.append(Record(name, image, labs, where=f"{path}:{start}"))
    return records


def read(root: Path) -> AnnotationDataset:
    raw = {s: _read_csv(root / f"{s}.csv", root) for s in ("train", "val", "test") if (root / f"{s}.csv").is_file()}
    labels = sorted({lab for s in ("train", "val") for r in raw.get(s, []) for lab in r.labels})
    if not labels:
        raise DataError(root / "train.csv", "no labels at all in the training file")
    splits = {s: check_records(recs, labels, str(root / f"{s}.csv")) for s, recs in raw.items()}
    return AnnotationDataset(name=root.name.lower(), root=root, format="csv", labels=labels, splits=splits)
