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

Under torchrun (a torch.distributed group) the work is sharded and rank 0 is the only writer: it
alone opens the library, decides what needs work and sends that list to every rank; the list is cut
into the same batches as in one process, rank r reads and tags batches r, r + W, r + 2W, ..., and
after each round rank 0 gathers the W batches' results and writes them in batch order. So the
library is the one a single process makes (the same batches through the same models, written in
the same order), only the photo files need to be reachable from every rank, and a killed run
resumes as a single one does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import ExifTags, Image

from tagcap.errors import DataError, TagcapError
from tagcap.hashing import file_sha256
from tagcap.library.store import Library

if TYPE_CHECKING:
    from tagcap.library.xmp import Sidecars

SCORE_DIGITS = 6  # scores are stored rounded: a resumed run writes the same numbers as an unbroken one
# concepts stored per photo under the shown rule, shown or not: search ranks by them (a photo whose
# `house` was not sure enough to show is still found by `house`, after those where it was shown)
SEARCH_CANDIDATES = 20


@dataclass
class ModelRef:
    """A model as the library knows it, before (or without) loading it."""

    source: Path
    name: str
    task: str
    identity: str
    id: int = 0


def model_refs(sources: Sequence[str | Path] | None, views: int = 2, rule: str = "shown") -> list[ModelRef]:
    """The models to index with (default: the bundled ones), each with its identity: the sha256 of
    its weights and of its decision rule, read from the files without loading them (and "-1view"
    when run on the photo alone: other scores, so another model to the library). Under the shown
    rule (every annotator calibrated for it), an annotator's identity names its calibration and the
    rule's threshold and cap too: a better calibration re-tags the photos; and the captioner's names
    the grounding its captions were held to."""
    from tagcap.inference.bundled import default_sources, resolve
    from tagcap.inference.checkpoint import WEIGHTS, checkpoint_task, read_config
    from tagcap.inference.grounding import GROUNDING_FILE, bundled_grounding
    from tagcap.inference.shown import RULE_FILE, SHOWN_FILE

    found = [resolve(s) for s in (sources or default_sources())]  # (folder, bundled name or None)
    tasks = [checkpoint_task(path) for path, _ in found]
    annotators = [path for (path, _), task in zip(found, tasks) if task != "caption"]
    shown = rule == "shown" and bool(annotators) and all((Path(f) / SHOWN_FILE).is_file() for f in annotators)
    rule_bytes = RULE_FILE.read_bytes() if shown and RULE_FILE.is_file() else b""
    # a grounded caption depends on the grounding and on every annotator's calibration
    grounding = (GROUNDING_FILE.read_bytes() + b"".join((Path(f) / SHOWN_FILE).read_bytes() for f in annotators)
                 + rule_bytes if shown and bundled_grounding().active else b"")
    refs = []
    for (path, name), task in zip(found, tasks):
        config = read_config(path)
        weights = Path(path) / WEIGHTS
        if not weights.is_file():
            raise TagcapError(f"{path}: no {WEIGHTS} in this checkpoint folder")
        decision = json.dumps(config.get("decision"), sort_keys=True)
        identity = f"{file_sha256(weights)[:16]}-{hashlib.sha256(decision.encode()).hexdigest()[:8]}"
        if shown and task != "caption":
            calibration = (Path(path) / SHOWN_FILE).read_bytes() + rule_bytes
            identity += f"-shown-{hashlib.sha256(calibration).hexdigest()[:8]}"
        if grounding and task == "caption":
            identity += f"-grounded-{hashlib.sha256(grounding).hexdigest()[:8]}"
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
    by_rank: list[int] = field(default_factory=list)  # photos each process read (one, or each torchrun rank)
    lanes: int = 1         # batches the models worked on at once (per process)
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


def index_photos(roots: Sequence[str | Path], library: Library | None, sources: Sequence[str | Path] | None = None,
                 batch_size: int = 16, keep_missing: bool = False, progress: bool = True, engine: str = "auto",
                 device: str | None = "cpu", xmp: bool = False, on_error=None, views: int = 2,
                 rule: str = "shown", xmp_caption: bool = True) -> IndexStats:
    """Bring `library` up to date with the photos under `roots`; see the module docstring. With `xmp`,
    each photo's sidecar is written too (its description left alone without `xmp_caption`).

    In a torch.distributed group of several processes every rank calls this, rank 0 with the library
    and the others with None; the counts come back on rank 0. Launched as several processes that
    have not formed a group, rank 0 indexes alone and the others return at once."""
    from tagcap import distributed

    rank, world = distributed.rank_and_world()
    sharded = world > 1 and distributed.in_group()
    stats = IndexStats()
    if rank != 0 and not sharded:
        return stats
    t0 = time.perf_counter()
    refs = model_refs(sources, views, rule)

    def report(path, message):
        stats.errors.append(f"{path}: {message}")
        if on_error:
            on_error(path, message)

    from tagcap.library.xmp import Sidecars

    sidecars = Sidecars(caption=xmp_caption) if xmp else None
    lock = library.index_lock() if rank == 0 else nullcontext()
    with lock:
        _index(roots, library, refs, batch_size, keep_missing, progress, engine, device, sidecars, stats, report,
               views, rank, sharded, rule)
    stats.seconds = round(time.perf_counter() - t0, 2)
    return stats


def _index(roots, library, refs, batch_size, keep_missing, progress, engine, device, xmp, stats, report, views,
           rank, sharded, rule) -> None:
    from tagcap import distributed

    if rank == 0:
        try:
            todo, folders = _plan(roots, library, refs, keep_missing, stats, report)
        except BaseException:
            if sharded:  # the other ranks are waiting for the plan: tell them there is none
                distributed.broadcast_from_first(None)
            raise
    if sharded:
        plan = distributed.broadcast_from_first((todo, [ref.id for ref in refs]) if rank == 0 else None)
        if plan is None:
            raise TagcapError("rank 0 stopped before indexing (its error says why)")
        todo, ids = plan
        for ref, mid in zip(refs, ids):
            ref.id = mid
    failed: set[str] = set()  # sidecars that could not be written in this run: reported once
    if todo:
        _run(todo, library, refs, batch_size, progress, engine, device, xmp, stats, report, views, sharded, failed,
             rule)
    if xmp and rank == 0:  # the sidecars still missing: earlier runs' failures and photos indexed without --xmp
        from tagcap.library.xmp import write_sidecars

        pending = [row for row in library.sidecar_photos(pending_only=True, under=folders) if row[1] not in failed]
        write_sidecars(library, pending, xmp, on_error=report)


def _plan(roots, library: Library, refs: list[ModelRef], keep_missing: bool, stats: IndexStats,
          report) -> tuple[list[tuple[Path, os.stat_result, tuple | None]], list[Path]]:
    """Register the models and the roots, remove what is gone from disk, and list the files that
    need work, each with its stat and (when the library knows it) its row and the models done with
    it; with the roots, resolved."""
    from tagcap.predict import Unreadable, iter_images

    folders = []
    for root in roots:
        p = Path(root)
        if not p.exists():
            raise TagcapError(f"{root}: no such file or folder")
        folders.append(p.resolve())
    library.add_roots(folders)
    with library.transaction():
        for ref in refs:
            ref.id = library.model_id(ref.name, ref.identity, ref.task)
    wanted = {ref.id for ref in refs}

    # a stat and a lookup per file, no reading
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
    if not keep_missing:
        stats.removed = _remove_missing(library, folders, seen)
    return todo, folders


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


def _run(todo, library: Library | None, refs: list[ModelRef], batch_size: int, progress: bool, engine: str, device,
         xmp: Sidecars | None, stats: IndexStats, report, views: int, sharded: bool, failed: set[str],
         rule: str) -> None:
    """Read, decode, tag and write `todo`: decoding in threads, one batch per thread in flight, while
    the models run on earlier batches (two at once on a CPU, see `_lanes`); each batch written in
    one transaction, in order (by rank 0)."""
    import torch

    from tagcap import distributed
    from tagcap.inference.taggers import ModelSet, load_model

    rank, world = distributed.rank_and_world() if sharded else (0, 1)
    lanes, threads_before = _lanes(device), torch.get_num_threads()
    if lanes > 1:  # before the models load: the backbone's ONNX session takes the thread count it sees
        torch.set_num_threads(threads_before // lanes)
    try:
        models = ModelSet([load_model(ref.source, engine=engine, device=device) for ref in refs], views=views,
                          rule=rule)
        _tag_and_write(todo, library, models, refs, batch_size, progress, xmp, stats, report, rank, world, lanes,
                       failed)
    finally:
        torch.set_num_threads(threads_before)


def _lanes(device) -> int:
    """How many batches the models work on at once. On a CPU, two lanes of half the threads each
    beat one lane of all of them (the models alone on 2 cores: 1.12x and 1.26x in two runs,
    `benchmarks/index_profile.py`): the captioner's beam search is many small operations that gain
    little from a second thread. One lane on a GPU, and where there is one thread (a torchrun rank).
    The results are the same either way (a test indexes with both). The backbone loaded here keeps
    its one-thread session for the rest of the process (the API's later `tag` calls reuse it)."""
    import torch

    from tagcap.devices import resolve_device

    if resolve_device(device).type != "cpu":
        return 1
    return 2 if torch.get_num_threads() >= 2 else 1


def _tag_and_write(todo, library, models, refs, batch_size, progress, xmp, stats, report, rank, world,
                   lanes, failed) -> None:
    from tqdm.auto import tqdm

    from tagcap import distributed
    from tagcap.features.cache import decode_threads, read_with_fingerprint
    from tagcap.features.images import load_image, preprocess

    wanted = {ref.id for ref in refs}
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
        except DataError as e:  # what is wrong, without the path: the report and the photo's row name it
            return facts, None, e.problem, None
        except TagcapError as e:
            return facts, None, str(e), None
        pixels = preprocess(img, backbone.input_size, backbone.mean, backbone.std) if backbone else img
        return facts, pixels, None, None

    def tag(prepared) -> list[tuple]:
        """(facts, error, action, {model id: results} or None) per photo of one decoded batch."""
        ready = [(n, p[1]) for n, p in enumerate(prepared) if p[1] is not None]
        made = {}
        if ready:
            images = [pixels for _, pixels in ready]
            for (n, _), out in zip(ready, models.run(np.stack(images) if backbone else images,
                                                     candidates=SEARCH_CANDIDATES)):
                made[n] = _by_model(out, by_name, caption_id)
        return [(facts, error, action, made.get(n)) for n, (facts, _, error, action) in enumerate(prepared)]

    batches = [todo[b:b + batch_size] for b in range(0, len(todo), batch_size)]
    mine = batches[rank::world]  # rank r: batches r, r + W, r + 2W, ...
    workers = decode_threads()
    stats.by_rank, stats.lanes = [0] * world, lanes
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=lanes) as model_pool, \
            tqdm(total=len(todo), unit="photo", desc="index", disable=not progress or rank != 0, dynamic_ncols=True,
                 file=sys.stderr) as bar:
        decoding = [pool.map(prepare, b) for b in mine[:workers]]  # one batch per decoding thread in flight
        tagging: list = []  # and one per lane, written in order as they finish

        def start_tagging(j: int) -> None:
            prepared = list(decoding.pop(0))
            if j + workers < len(mine):
                decoding.append(pool.map(prepare, mine[j + workers]))
            tagging.append(model_pool.submit(tag, prepared))

        for j in range(min(lanes, len(mine))):
            start_tagging(j)
        for j in range(-(-len(batches) // world)):  # rounds: one batch per rank
            results = None
            if j < len(mine):
                results = tagging.pop(0).result()
                if j + lanes < len(mine):
                    start_tagging(j + lanes)
            gathered = distributed.gather_to_first(results) if world > 1 else [results]
            if rank != 0:
                continue
            for k, results in enumerate(gathered, start=j * world):
                if results is not None:
                    _write_batch(library, batches[k], results, wanted, xmp, stats, report, failed)
                    stats.by_rank[k % world] += len(results)
                    bar.update(len(results))
    stats.tagging_seconds = round(time.perf_counter() - t0, 2)


def _write_batch(library: Library, batch: list[tuple], results: list[tuple], wanted: set[int], xmp: Sidecars | None,
                 stats: IndexStats, report, failed: set[str]) -> None:
    """One batch's results in one transaction (and their XMP sidecars after it: one that cannot be
    written is reported, added to `failed`, and left pending in the library for the next run)."""
    now = time.time()
    written = []
    with library.transaction():
        for (_, _, known), (facts, error, action, made) in zip(batch, results):
            if action == "touch":
                library.touch(known[0][0], facts["size"], facts["mtime_ns"])
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
            written.append((library.write_photo(facts, made, now), facts["path"], now))
            stats.indexed += 1
    if xmp and written:
        from tagcap.library.xmp import write_sidecars

        def sidecar_failed(path, message):
            failed.add(path)
            report(path, message)

        write_sidecars(library, written, xmp, on_error=sidecar_failed)


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
