"""`tagcap index`: walk photo folders, tag and caption what is new or changed, keep it in a library.

Incremental by construction. Each file is looked up by path: the same size and mtime, and every
current model already done with it -> skipped without reading it; otherwise it is read and hashed,
and the same content (a copy, a `touch`) only updates the stored stat. New and changed photos are
decoded in threads (one batch per thread in flight, as feature extraction does) while the models
run on earlier batches, and each batch is written in one SQLite transaction: a `kill -9` loses at
most the batch in flight, and a re-run goes on from there, in the same batches. Photos whose files
are gone are removed (unless `keep_missing`); a model the library has not seen (a new name, new
weights or a new decision rule) tags every photo again.

Models are loaded only when some photo needs them: a re-run over an unchanged folder reads no
image and imports no network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import ExifTags, Image

from tagcap.errors import TagcapError
from tagcap.hashing import file_sha256
from tagcap.library.store import Library

SCORE_DIGITS = 6  # scores are stored rounded: a resumed run writes the same numbers as an unbroken one


@dataclass
class ModelRef:
    """A model as the library knows it, before (or without) loading it."""

    source: Path
    name: str
    task: str
    identity: str
    id: int = 0


def model_refs(sources: Sequence[str | Path] | None, views: int = 2) -> list[ModelRef]:
    """The models to index with (default: the bundled ones), each with its identity: the sha256 of
    its weights and of its decision rule, read from the files without loading them (and "-1view"
    when run on the photo alone: other scores, so another model to the library)."""
    from tagcap.inference.bundled import default_sources, resolve
    from tagcap.inference.checkpoint import CONFIG, WEIGHTS, checkpoint_task

    refs = []
    for source in sources or default_sources():
        path, name = resolve(source)
        task = checkpoint_task(path)
        config = json.loads((Path(path) / CONFIG).read_text())
        weights = Path(path) / WEIGHTS
        if not weights.is_file():
            raise TagcapError(f"{path}: no {WEIGHTS} in this checkpoint folder")
        rule = json.dumps(config.get("decision"), sort_keys=True)
        identity = f"{file_sha256(weights)[:16]}-{hashlib.sha256(rule.encode()).hexdigest()[:8]}"
        identity += "-1view" if views == 1 else ""
        refs.append(ModelRef(Path(path), name or config.get("name") or Path(path).name, task, identity))
    return refs


@dataclass
class IndexStats:
    photos: int = 0        # image files found under the roots
    skipped: int = 0       # unchanged, every model done
    indexed: int = 0       # tagged and captioned now
    touched: int = 0       # stat changed, content the same
    unreadable: int = 0    # could not be decoded (recorded, with the reason)
    removed: int = 0       # gone from disk, removed from the library
    seconds: float = 0.0   # the whole run
    tagging_seconds: float = 0.0  # from the first photo read to the last batch written (models loaded)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        rate = round(self.indexed / self.tagging_seconds, 2) if self.tagging_seconds > 0 and self.indexed else None
        return {**{k: v for k, v in self.__dict__.items() if k != "errors"}, "photos_per_second": rate}


def photo_facts(data: bytes) -> dict:
    """Width, height (as stored), EXIF date (DateTimeOriginal, else DateTime) and orientation; header only."""
    facts: dict = {}
    try:
        with Image.open(io.BytesIO(data)) as img:
            facts["width"], facts["height"] = img.size
            exif = img.getexif()
            facts["orientation"] = exif.get(ExifTags.Base.Orientation)
            taken = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)
            facts["taken"] = exif_date(taken)
    except Exception:  # noqa: BLE001 - the decoder says what is wrong with the file, with its name
        pass
    return facts


def exif_date(value) -> str | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" as ISO 8601 ("YYYY-MM-DDTHH:MM:SS"); None when it is not a date."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    text = value.strip().replace("\x00", "")
    date, _, clock = text.partition(" ")
    parts = date.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or parts[0] == "0000":
        return None
    iso = "-".join(parts)
    return f"{iso}T{clock}" if clock and clock.count(":") == 2 else iso


def index_photos(roots: Sequence[str | Path], library: Library, sources: Sequence[str | Path] | None = None,
                 batch_size: int = 16, keep_missing: bool = False, progress: bool = True, engine: str = "auto",
                 device: str | None = "cpu", xmp: bool = False, on_error=None, views: int = 2) -> IndexStats:
    """Bring `library` up to date with the photos under `roots`; see the module docstring."""
    from tagcap.predict import Unreadable, iter_images

    t0 = time.perf_counter()
    stats = IndexStats()
    folders = []
    for root in roots:
        p = Path(root)
        if not p.exists():
            raise TagcapError(f"{root}: no such file or folder")
        folders.append(p.resolve())
    refs = model_refs(sources, views)
    with library.transaction():
        for ref in refs:
            ref.id = library.model_id(ref.name, ref.identity, ref.task)
    wanted = {ref.id for ref in refs}

    def report(path, message):
        stats.errors.append(f"{path}: {message}")
        if on_error:
            on_error(path, message)

    # 1. what needs work: a stat and a lookup per file, no reading
    seen: set[str] = set()
    todo: list[tuple[Path, os.stat_result, tuple | None]] = []
    files = list(iter_images(folders))
    for start in range(0, len(files), 500):
        chunk = files[start:start + 500]
        known = library.lookup([str(f) for f in chunk if not isinstance(f, Unreadable)])
        done = library.models_done([row[0] for row in known.values()])
        for f in chunk:
            if isinstance(f, Unreadable):
                report(f.path, f.problem)
                continue
            try:
                st = f.stat()
            except OSError as e:
                report(f, f"cannot read: {e.strerror or e}")
                continue
            stats.photos += 1
            seen.add(str(f))
            row = known.get(str(f))
            if row and row[1] == st.st_size and row[2] == st.st_mtime_ns and wanted <= done[row[0]]:
                stats.skipped += 1
                continue
            todo.append((f, st, (row, done.get(row[0], set())) if row else None))

    # 2. files gone from disk
    if not keep_missing:
        stats.removed = _remove_missing(library, folders, seen)

    # 3. read, decode, tag, write
    if todo:
        _run(todo, library, refs, wanted, batch_size, progress, engine, device, xmp, stats, report, views)
    stats.seconds = round(time.perf_counter() - t0, 2)
    return stats


def _remove_missing(library: Library, folders: list[Path], seen: set[str]) -> int:
    removed = 0
    for folder in folders:
        if not folder.is_dir():  # a photo named on the command line: nothing under it to remove
            continue
        like = str(folder).rstrip(os.sep) + os.sep
        gone = [pid for pid, path in library.db.execute(
            "SELECT id, path FROM photos WHERE substr(path, 1, ?) = ?", (len(like), like)) if path not in seen]
        for start in range(0, len(gone), 500):
            with library.transaction():
                for pid in gone[start:start + 500]:
                    library.remove(pid)
        removed += len(gone)
    return removed


def _run(todo, library: Library, refs: list[ModelRef], wanted: set[int], batch_size: int, progress: bool,
         engine: str, device, xmp: bool, stats: IndexStats, report, views: int) -> None:
    from tqdm.auto import tqdm

    from tagcap.features.cache import decode_threads, read_with_fingerprint
    from tagcap.features.images import load_image, preprocess
    from tagcap.inference.taggers import ModelSet, load_model

    models = ModelSet([load_model(ref.source, engine=engine, device=device) for ref in refs], views=views)
    by_name = {ref.name: ref.id for ref in refs}
    caption_id = by_name[models.captioner.name] if models.captioner else None
    backbones = {id(m.backbone) for m in models.models}
    backbone = models.backbone
    if len(backbones) > 1:  # decoded arrays suit one backbone's input size; several get PIL images
        backbone = None

    def prepare(item):
        path, st, known = item
        facts = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        try:  # the stat is taken again just before the read: a file changed meanwhile looks changed next time
            data, (facts["size"], facts["mtime_ns"], digest) = read_with_fingerprint(path)
        except OSError as e:
            return facts, None, f"cannot read: {e.strerror or e}", None
        facts["sha256"] = digest.hex()
        if known and known[0][3] == facts["sha256"] and wanted <= known[1]:
            return facts, None, None, "touch"
        facts.update(photo_facts(data))
        try:
            img = load_image(io.BytesIO(data), name=str(path), reduce_to=models.decode_size)
        except TagcapError as e:
            return facts, None, str(e), None
        pixels = preprocess(img, backbone.input_size, backbone.mean, backbone.std) if backbone else img
        return facts, pixels, None, None

    batches = [todo[b:b + batch_size] for b in range(0, len(todo), batch_size)]
    workers = decode_threads()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(todo), unit="photo", desc="index", disable=not progress, dynamic_ncols=True,
                 file=sys.stderr) as bar:
        pending = [pool.map(prepare, b) for b in batches[:workers]]
        for k in range(len(batches)):
            prepared = list(pending.pop(0))
            if k + workers < len(batches):
                pending.append(pool.map(prepare, batches[k + workers]))
            ready = [(n, p) for n, p in enumerate(prepared) if p[1] is not None]
            outs = {}
            if ready:
                images = [p[1] for _, p in ready]
                batch = np.stack(images) if backbone else images
                for (n, _), out in zip(ready, models.run(batch)):
                    outs[n] = out
            now = time.time()
            written = []
            with library.transaction():
                for n, (facts, _, error, action) in enumerate(prepared):
                    if action == "touch":
                        known = batches[k][n][2][0]
                        library.touch(known[0], facts["size"], facts["mtime_ns"])
                        stats.touched += 1
                        continue
                    if "sha256" not in facts:  # could not even be read: nothing to store
                        report(facts["path"], error)
                        continue
                    if error:
                        facts["error"] = error
                        library.write_photo(facts, {mid: {"tags": []} for mid in wanted}, now)
                        stats.unreadable += 1
                        report(facts["path"], error)
                        continue
                    library.write_photo(facts, _by_model(outs[n], by_name, caption_id), now)
                    stats.indexed += 1
                    written.append(facts["path"])
            if xmp and written:
                from tagcap.library.xmp import write_sidecars

                write_sidecars(library, written)
            bar.update(len(prepared))
    stats.tagging_seconds = round(time.perf_counter() - t0, 2)


def _by_model(out: dict, by_name: dict[str, int], caption_id: int | None) -> dict[int, dict]:
    """One ModelSet result as {model id: {"tags": [(label, score, chosen)], "caption"}}."""
    made: dict[int, dict] = {mid: {"tags": []} for mid in by_name.values()}
    chosen_keys = set()
    for tag in out.get("labels", []):
        mid = by_name[tag["source"]]
        made[mid]["tags"].append((tag["label"], round(float(tag["score"]), SCORE_DIGITS), 1))
        chosen_keys.add((mid, tag["label"]))
    for tag in out.get("top_scores", []):
        mid = by_name[tag["source"]]
        if (mid, tag["label"]) not in chosen_keys:
            made[mid]["tags"].append((tag["label"], round(float(tag["score"]), SCORE_DIGITS), 0))
            chosen_keys.add((mid, tag["label"]))
    if "caption" in out and caption_id is not None:
        made[caption_id]["caption"] = out["caption"]
    return made
