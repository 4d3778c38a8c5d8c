"""Flickr8k: `Flickr8k.token.txt` (`<name>.jpg#<k>\\t<caption>`) plus the official split lists.

Known quirks of the official token file, handled rather than crashed on:
- an entry named `<name>.jpg.1#k` (a duplicate upload of one photo): the `.1` is dropped, and
  since that photo is in no split list and not among the images, its captions are unused;
- two images in the folder have no captions and are in no split list: ignored.
A listed image with no caption, or a malformed line, is an error that names the line.
"""

from __future__ import annotations

import re
from pathlib import Path

from tagcap.data.readers.common import check_records, image_folder, read_lines, read_text, resolve_image
from tagcap.data.records import AnnotationDataset, Record
from tagcap.errors import DataError

TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
_ENTRY = re.compile(r"^(?P<name>.+?\.(?:jpg|jpeg|png))(?:\.\d+)?#(?P<k>\d+)$", re.IGNORECASE)


def detect(root: Path) -> bool:
    return (root / TOKEN_FILE).is_file()


def read_token_file(path: Path) -> dict[str, list[str]]:
    """Captions per image name, in file order."""
    if not path.is_file():
        raise DataError(path, "file not found")
    captions: dict[str, list[str]] = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        name_k, sep, text = line.partition("\t")
        m = _ENTRY.match(name_k.strip())
        if not sep or not m:
            raise DataError(f"{path}:{n}", f"expected '<image>.jpg#<k><TAB><caption>', got {line[:60]!r}")
        if text.strip():
            captions.setdefault(m["name"], []).append(text.strip())
    return captions


def read(root: Path) -> AnnotationDataset:
    token_path = root / TOKEN_FILE
    captions = read_token_file(token_path)
    folder = image_folder(root)
    splits = {}
    for split, filename in SPLIT_FILES.items():
        path = root / filename
        if not path.is_file():
            if split == "val":
                continue  # carved from train by the caller
            raise DataError(path, "split list not found")
        records = []
        for n, name in enumerate(read_lines(path), 1):
            if name not in captions:
                raise DataError(f"{path}:{n}", f"image {name!r} has no caption in {TOKEN_FILE}")
            records.append(Record(name, resolve_image(folder, name, f"{path}:{n}"), (), tuple(captions[name]),
                                  where=f"{path}:{n}"))
        splits[split] = check_records(records, [], str(path))
    return AnnotationDataset(name="flickr8k", root=root, format="flickr8k", labels=[], splits=splits)
