"""The feature cache: memory-mapped .npy arrays plus a manifest that says what made them.

Layout of a cache folder:
  manifest.json   backbone, weights identity, input size, views, image-list checksum, shapes
  images.txt      the image keys, one a line, in row order
  fingerprints.npy [N] (size, mtime_ns, sha256) of the image file each row was made from
  pooled.npy      [N, V, D] float32       (V views: original, horizontal flip)
  grid.npy        [N, V, H*W, D] float16  (optional; attention decoders read it)
  activations.npy [N, V, C, H, W] float16 (instead of the two above: an intermediate block's output, for
                  partial fine-tuning; the manifest's "layer" names the block)
  progress*.json  rows finished so far (one file per shard); a killed extraction resumes from here

Extraction may be sharded over the processes of a torch.distributed group (torchrun, or the
Lightning/SLURM launchers): each rank fills its own contiguous slice of the same arrays, so the
result is the cache one process would have written.

A matching manifest means reuse; a mismatch is an error that names what differs. A damaged folder (an
array shorter than its header says, a missing array, an unreadable manifest: a copy cut short, a full
disk) is said so and extracted again by the next extraction. Each row is tied to
its image's content (`fingerprints.npy`): a row whose image changed is extracted again, and a dataset
that gained or lost images keeps the rows it still has and extracts only the new ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from tagcap import atomic, distributed
from tagcap.errors import CacheMismatchError
from tagcap.features.images import load_image, preprocess
from tagcap.hashing import file_sha256

VIEWS = ("original", "hflip")
CACHE_VERSION = 1
IDENTITY_FIELDS = ("version", "backbone", "weights", "input_size", "views", "images_sha256", "num_images", "grid",
                   "layer", "pool_blocks")


def list_sha256(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def default_cache_dir(dataset, spec, cache_root: Path, variant: str = "") -> Path:
    """One folder per (dataset location, backbone, input size, weights, pooled blocks, and `variant`: the
    int8 engine's calibration), so runs never collide."""
    where = hashlib.sha256(str(Path(dataset.root).resolve()).encode()).hexdigest()[:8]
    size = spec.input_size or "default"
    weights = "" if spec.weights in (None, "auto") else "-" + hashlib.sha256(str(spec.weights).encode()).hexdigest()[:8]
    return Path(cache_root) / "features" / f"{dataset.name}-{where}-{spec.name}-{size}{weights}{spec.blocks_tag()}{variant}"


class LazyRows:
    """Selected rows of a memory-mapped array, read only when indexed: what training and prediction
    use for caches larger than memory. Supports len, .shape, .dtype, an int or a slice."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, rows
        self.shape = (len(rows), *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, item):
        if isinstance(item, tuple):  # (row, view, ...): one row's part, as RandomViewDataset asks
            if not isinstance(item[0], (int, np.integer)):
                raise TypeError("LazyRows takes a row number first in a tuple index")
            return np.asarray(self.array[self.rows[item[0]]][item[1:]])
        if isinstance(item, (int, np.integer)):
            return np.asarray(self.array[self.rows[item]])
        picked = self.rows[item]
        order = np.argsort(picked)  # read the file in order, then restore the requested order
        return np.asarray(self.array[picked[order]])[np.argsort(order)]


class _RowWriter:
    """Writes rows of a .npy file with plain file writes: unlike a writable memory map, the pages written
    do not stay in the process, so extraction's memory does not grow with the number of images."""

    def __init__(self, path: Path):
        header = np.load(path, mmap_mode="r")
        self.offset, self.dtype = header.offset, header.dtype
        self.row_bytes = int(np.prod(header.shape[1:])) * header.dtype.itemsize
        del header
        self.path, self.fd = path, os.open(path, os.O_WRONLY)

    def write(self, start: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        if len(data) != len(rows) * self.row_bytes:
            raise ValueError(f"rows of {len(data) // max(len(rows), 1)} bytes, the file holds {self.row_bytes}")
        view, at = memoryview(data), self.offset + start * self.row_bytes
        while len(view):  # a write cut short (the disk filling up) is finished, or fails saying why
            n = self._io(os.pwrite, view, at)
            view, at = view[n:], at + n

    def close(self) -> None:
        try:
            self._io(os.fsync)
        finally:
            os.close(self.fd)

    def _io(self, call, *args):
        try:
            return call(self.fd, *args)
        except OSError as e:
            e.filename = str(self.path)  # the error names the array it was writing
            raise


class FeatureCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def manifest(self) -> dict | None:
        try:
            return self._read_manifest()
        except ValueError as e:
            raise CacheMismatchError(f"{self.manifest_path}: not readable ({e}); delete {self.folder} and the "
                                     f"features are extracted again") from None

    def _read_manifest(self) -> dict | None:
        """The manifest, None when there is none; a ValueError when it is cut short or overwritten
        (JSON or UTF-8 that does not decode)."""
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def damage(self) -> str | None:
        """What is wrong with this folder's files, or None: the manifest must read, and every array it
        lists (and the fingerprints, where there are some) must be a whole .npy of the listed shape. A
        copy cut short or a full disk leaves a file shorter than its header says; an extraction in
        progress does not (its arrays are allocated whole before any row is written)."""
        try:
            m = self._read_manifest()
        except ValueError as e:
            return f"manifest.json is not readable ({e})"
        if m is None:
            return None
        arrays = {f"{name}.npy": shape for name, shape in m.get("shapes", {}).items()}
        if "num_images" in m and (self.folder / FINGERPRINTS).is_file():
            arrays[FINGERPRINTS] = [m["num_images"]]
        for name, shape in arrays.items():
            try:
                found = np.load(self.folder / name, mmap_mode="r").shape
            except FileNotFoundError:
                return f"{name} is missing"
            except (ValueError, OSError, EOFError) as e:  # a short file: "mmap length is greater than file size"
                return f"{name} is damaged ({e})"
            if list(found) != list(shape):
                return f"{name} holds an array of shape {list(found)}, the manifest says {shape}"
        return None

    def is_complete(self) -> bool:
        m = self.manifest()
        return bool(m and m.get("complete"))

    def check(self, expected: dict) -> None:
        """Raise if the manifest disagrees with any of the `expected` identity fields."""
        m = self.manifest() or {}
        diffs = [f"{f}: cache has {m.get(f)!r}, asked for {v!r}" for f, v in expected.items() if m.get(f) != v]
        if diffs:
            raise CacheMismatchError(f"{self.folder} holds other features ({'; '.join(diffs)}). "
                                     "Use another --cache folder, or delete this one.")

    # -- reading -----------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return (self.folder / "images.txt").read_text(encoding="utf-8").splitlines()

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        index = {k: i for i, k in enumerate(self.keys())}
        missing = [k for k in keys if k not in index]
        if missing:
            raise CacheMismatchError(f"{self.folder}: {len(missing)} images are not in the cache, e.g. {missing[0]!r}")
        return np.array([index[k] for k in keys], dtype=np.int64)

    def load(self, keys: Sequence[str], kind: str = "pooled", in_memory: bool | None = None):
        """Features for `keys` in that order: pooled [n, V, D], grid [n, V, HW, D] or activations
        [n, V, C, H, W]. Read into memory when they fit in the budget ($TAGCAP_MEMORY_GB, default 4 GB),
        else a `LazyRows` view that reads rows from the memory-mapped file as they are asked for."""
        if not self.is_complete():
            raise CacheMismatchError(f"{self.folder}: the cache is incomplete; run `tagcap extract` to finish it")
        try:
            arr = np.load(self.folder / f"{kind}.npy", mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise CacheMismatchError(f"{self.folder / kind}.npy: not readable ({e}); `tagcap extract` makes the "
                                     f"cache again") from None
        rows = self.rows(keys)
        if in_memory is None:
            budget = float(os.environ.get("TAGCAP_MEMORY_GB", 4)) * 2**30
            in_memory = len(rows) * arr[0].nbytes <= budget
        return np.asarray(arr[rows]) if in_memory else LazyRows(arr, rows)

    # -- what the rows were made from ------------------------------------------------------------
    def fingerprints(self) -> np.ndarray | None:
        path = self.folder / FINGERPRINTS
        return np.load(path) if path.is_file() else None

    def stale_rows(self, records: Sequence, verify: bool = False) -> list[int]:
        """Rows whose image is no longer the one the features were made from. Size and modification time
        are the fast path; where they differ (or with `verify`, always) the content hash decides, and a
        file that was only touched gets its new time recorded instead of being extracted again."""
        prints = self.fingerprints()
        if prints is None:
            return [i for i, r in enumerate(records) if r is not None]
        stale, touched = [], []
        for i, r in enumerate(records):
            if r is None:  # `records` is aligned with the rows; None: a row no record needs
                continue
            st = os.stat(r.image)
            same_stat = st.st_size == prints["size"][i] and st.st_mtime_ns == prints["mtime_ns"][i]
            if same_stat and not verify:
                continue
            # (numpy drops an S32 value's trailing NUL bytes when it is read, so the digest is padded back)
            if bytes.fromhex(file_sha256(r.image)) == prints["sha256"][i].ljust(32, b"\0"):
                if not same_stat:
                    touched.append((i, st.st_size, st.st_mtime_ns))
            else:
                stale.append(i)
        if touched:
            writer = _RowWriter(self.folder / FINGERPRINTS)
            for i, size, mtime in touched:
                row = prints[i:i + 1].copy()
                row["size"], row["mtime_ns"] = size, mtime
                writer.write(i, row)
            writer.close()
        return stale

    def adopt(self, records: Sequence) -> None:
        """A cache made before rows were fingerprinted: record what its images are now (the features are
        trusted to match them, as they were before) so that later changes are seen. `records` is aligned
        with the rows; None for a row whose image is gone."""
        path = self.folder / FINGERPRINTS
        tmp = path.with_name(f".{FINGERPRINTS}.tmp.npy")
        np.save(tmp, np.array([fingerprint(r.image) if r is not None else (-1, -1, b"") for r in records],
                              dtype=FINGERPRINT_DTYPE))
        os.replace(tmp, path)

    # -- writing -----------------------------------------------------------------------------
    def extract(self, backbone, records: Sequence, batch_size: int = 16, grid: bool = True,
                progress: bool = True, verify: bool = False, stale: list[int] | None = None) -> dict:
        """Fill the cache for `records` (reusing, resuming or updating it); returns timing statistics.

        `backbone` says which arrays it makes (`cache_outputs`) and makes them for a batch of images
        (`cache_arrays`): the full backbone's pooled vector and grid, or an intermediate block's
        activations. In a torch.distributed group each rank fills its own slice of rows.

        A complete cache of the same backbone is updated, not rebuilt: rows whose image changed are
        extracted again in place (`stale_rows`), and when images are added or removed a new cache is
        assembled from the old rows plus the new images' and swapped in. `stale`: the caller's
        `stale_rows(records, verify)` of this cache, if it already has it (so it is not hashed twice)."""
        rank, world = distributed.rank_and_world()
        keys = [r.key for r in records]
        outputs = backbone.cache_outputs(grid)
        wanted = {
            "version": CACHE_VERSION,
            "backbone": backbone.spec.name,
            "weights": backbone.weights_id,
            "input_size": backbone.input_size,
            "views": list(VIEWS),
            "images_sha256": list_sha256(keys),
            "num_images": len(keys),
            "grid": grid,
            "layer": getattr(backbone, "layer", None),
            "pool_blocks": backbone.spec.blocks_identity(),
        }
        if getattr(backbone, "quantized", None):  # recorded (int8 caches have folders of their own)
            wanted["quantized"] = backbone.quantized
        problem = self.damage()
        if problem is not None:
            if world > 1:  # one process may start it over; several would race
                raise CacheMismatchError(f"{self.folder}: {problem}; delete the folder and run again")
            print(f"{self.folder}: {problem}: extracting the features again", file=sys.stderr)
            self._discard()
        existing = self.manifest()
        if existing is not None and existing.get("complete"):
            self.check({f: wanted[f] for f in IDENTITY_FIELDS if f not in LIST_FIELDS})
            if rank != 0:  # one process updates a finished cache; the others wait for it
                distributed.barrier()
                return {**self.manifest().get("stats", {}), "reused": True}
            stats = self._update(backbone, records, wanted, batch_size, grid, progress, verify, stale)
            distributed.barrier()
            return stats
        if existing is not None:
            self.check({f: wanted[f] for f in IDENTITY_FIELDS})
        if world > 1 and not distributed.in_group():
            # launched as several processes (torchrun) that have not formed a group: rank 0 extracts alone
            if rank != 0:
                distributed.wait_for(self.is_complete, f"the feature cache {self.folder}")
                return {**self.manifest().get("stats", {}), "reused": True}
            rank, world = 0, 1
        n = len(keys)
        shapes = {name: [n, *shape] for name, (shape, _) in outputs.items()}
        facts = {"shapes": shapes, **backbone.cache_facts()}
        if existing is None and rank == 0:
            self._allocate(keys, outputs)
            atomic.write_json(self.manifest_path, {**wanted, **facts, "complete": False})
        distributed.barrier()  # the arrays exist before any rank writes into them
        lo, hi = distributed.shard_bounds(n, rank, world)
        progress_path = self.folder / distributed.progress_name(rank, world)
        done = json.loads(progress_path.read_text())["done"] if progress_path.is_file() else lo
        shard = f" [{rank + 1}/{world}]" if world > 1 else ""
        timing = self._extract_rows(backbone, records, list(range(done, hi)), batch_size, grid, progress,
                                    desc=f"extract {backbone.spec.name}{shard}", total=hi - lo, initial=done - lo,
                                    progress_path=progress_path)
        stats = {"reused": False, "images": hi - done, "views": len(VIEWS), "engine": backbone.engine, **timing}
        if world > 1:
            stats["shards"] = world
        distributed.barrier()  # every slice is written before the cache is declared complete
        if rank == 0:
            atomic.write_json(self.manifest_path, {**wanted, **facts, "complete": True, "stats": stats})
        distributed.barrier()
        return stats

    def _discard(self) -> None:
        """Forget a damaged folder's rows: with no manifest and no progress, extraction allocates anew."""
        self.manifest_path.unlink(missing_ok=True)
        for progress in self.folder.glob("progress*.json"):
            progress.unlink()

    def _allocate(self, keys: list[str], outputs: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.folder / "images.txt", "\n".join(keys) + "\n")
        n = len(keys)
        for name, (shape, dtype) in outputs.items():
            np.lib.format.open_memmap(self.folder / f"{name}.npy", "w+", dtype, (n, *shape)).flush()
        np.lib.format.open_memmap(self.folder / FINGERPRINTS, "w+", FINGERPRINT_DTYPE, (n,)).flush()

    def _extract_rows(self, backbone, records: Sequence, rows: list[int], batch_size: int, grid: bool,
                      progress: bool, desc: str, total: int | None = None, initial: int = 0,
                      progress_path: Path | None = None) -> dict:
        """Extract `rows` (indices into `records` and into this cache's arrays) and write them with their
        fingerprints, the fingerprint last: a row whose fingerprint is written is a finished row.
        With `progress_path` (contiguous rows) the last finished row is recorded there for a resume."""
        writers = {name: _RowWriter(self.folder / f"{name}.npy") for name in backbone.cache_outputs(grid)}
        prints = _RowWriter(self.folder / FINGERPRINTS)

        def prepare(batch_rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
            imgs, fps = [], []
            for i in batch_rows:
                data, fp = read_with_fingerprint(records[i].image)  # hashed as it is read: no second pass
                imgs.append(preprocess(load_image(io.BytesIO(data), name=str(records[i].image)),
                                       backbone.input_size, backbone.mean, backbone.std))
                fps.append(fp)
            return np.stack(imgs), np.array(fps, dtype=FINGERPRINT_DTYPE)

        batches = [rows[b:b + batch_size] for b in range(0, len(rows), batch_size)]
        t0 = time.perf_counter()
        forward_s = 0.0
        # Decoding runs in threads (PIL releases the GIL) while the engine runs earlier batches: one
        # batch per thread in flight, so a GPU is not left waiting on a single decoding core.
        workers = decode_threads()
        with ThreadPoolExecutor(max_workers=workers) as pool, \
                tqdm(total=len(rows) if total is None else total, initial=initial, unit="img", desc=desc,
                     disable=not progress, dynamic_ncols=True) as bar:
            pending = [pool.submit(prepare, b) for b in batches[:workers]]
            for k, batch_rows in enumerate(batches):
                batch, fps = pending.pop(0).result()
                if k + workers < len(batches):
                    pending.append(pool.submit(prepare, batches[k + workers]))
                tf = time.perf_counter()
                made = backbone.cache_arrays(batch, grid)  # original + horizontal flip
                forward_s += time.perf_counter() - tf
                for run_start, run_stop in _runs(batch_rows):
                    part = slice(run_start, run_stop)
                    first = batch_rows[run_start]
                    for name, writer in writers.items():
                        writer.write(first, made[name][part])
                    prints.write(first, fps[part])
                if progress_path is not None:  # after the rows: a resume never skips unwritten ones
                    atomic.write_json(progress_path, {"done": batch_rows[-1] + 1})
                bar.update(len(batch_rows))
        for writer in [*writers.values(), prints]:
            writer.close()
        wall = time.perf_counter() - t0
        return {"wall_seconds": round(wall, 2),
                "images_per_second": round(len(rows) / wall, 2) if wall > 0 and rows else None,
                "forward_views_per_second": round(len(rows) * len(VIEWS) / forward_s, 2) if forward_s > 0 else None}

    def _update(self, backbone, records: Sequence, wanted: dict, batch_size: int, grid: bool, progress: bool,
                verify: bool, stale: list[int] | None = None) -> dict:
        """A complete cache brought up to date with `records`: see `extract`."""
        keys = [r.key for r in records]
        old_keys = self.keys()
        if self.fingerprints() is None:
            by_key = {r.key: r for r in records}
            self.adopt([by_key.get(k) for k in old_keys])
        if keys == old_keys:
            if stale is None:
                stale = self.stale_rows(records, verify)
            if not stale:
                return {**self.manifest().get("stats", {}), "reused": True, "reextracted": 0}
            timing = self._extract_rows(backbone, records, stale, batch_size, grid, progress,
                                        desc=f"re-extract {len(stale)} changed images")
            self._record_update(len(stale), 0, timing)
            return {**self.manifest()["stats"], "reused": True, "reextracted": len(stale), "added": 0}
        return self._rebuild(backbone, records, wanted, batch_size, grid, progress, verify)

    def _rebuild(self, backbone, records, wanted, batch_size, grid, progress, verify) -> dict:
        """Images added or removed: a new cache beside this one, the old rows copied where their image is
        unchanged, only the rest extracted; then swapped in whole."""
        old = FeatureCache(self.folder)
        old_index = {k: i for i, k in enumerate(old.keys())}
        old_records = [None] * len(old_index)
        for r in records:
            if r.key in old_index:
                old_records[old_index[r.key]] = r
        known = [i for i, r in enumerate(old_records) if r is not None]
        stale_old = set(old.stale_rows(old_records, verify))
        atomic.remove_stale_temporaries(self.folder)  # a rebuild killed before
        new = FeatureCache(self.folder.with_name(f".{self.folder.name}.rebuild{os.getpid()}"))
        shutil.rmtree(new.folder, ignore_errors=True)
        outputs = backbone.cache_outputs(grid)
        keys = [r.key for r in records]
        new._allocate(keys, outputs)
        copy_from, extract = [], []
        for i, r in enumerate(records):
            j = old_index.get(r.key)
            if j is None or j in stale_old:
                extract.append(i)
            else:
                copy_from.append((i, j))
        for name in [*outputs, Path(FINGERPRINTS).stem]:
            src = np.load(old.folder / f"{name}.npy", mmap_mode="r")
            writer = _RowWriter(new.folder / f"{name}.npy")
            for b in range(0, len(copy_from), 256):
                part = copy_from[b:b + 256]
                rows = np.asarray(src[[j for _, j in part]])
                for (i, _), row in zip(part, rows):
                    writer.write(i, row[None])
            writer.close()
            del src
        timing = new._extract_rows(backbone, records, extract, batch_size, grid, progress,
                                   desc=f"extract {len(extract)} new or changed images")
        manifest = self.manifest()
        shapes = {name: [len(keys), *shape] for name, (shape, _) in outputs.items()}
        stats = {**manifest.get("stats", {}), "reused": True, "added": len(extract) - len(stale_old),
                 "reextracted": len(stale_old), "removed": len(old_index) - len(known), "update": timing}
        atomic.write_json(new.manifest_path, {**manifest, **wanted, "shapes": shapes, "complete": True,
                                              "stats": stats})
        atomic.swap_in(new.folder, self.folder)  # renameat2 exchange where there is one
        return stats

    def _record_update(self, reextracted: int, added: int, timing: dict) -> None:
        manifest = self.manifest()
        stats = {**manifest.get("stats", {}), "last_update": {"reextracted": reextracted, "added": added, **timing}}
        atomic.write_json(self.manifest_path, {**manifest, "stats": stats})


FINGERPRINTS = "fingerprints.npy"
FINGERPRINT_DTYPE = np.dtype([("size", "<i8"), ("mtime_ns", "<i8"), ("sha256", "S32")])
LIST_FIELDS = ("images_sha256", "num_images")  # what may change in a complete cache: it is then updated


def decode_threads() -> int:
    """Image-decoding threads beside the engine: 2 on a small machine, up to 8 where there are cores
    to spare (a GPU machine's engine waits on decoding, not the other way round)."""
    return max(2, min(8, (os.cpu_count() or 2) // 2))


def fingerprint(path) -> tuple[int, int, bytes]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, bytes.fromhex(file_sha256(path))


def read_with_fingerprint(path) -> tuple[bytes, tuple[int, int, bytes]]:
    """The file's bytes and its (size, mtime, SHA-256), the stat taken before the read: a file changed
    while it is read looks changed next time, never the other way round."""
    st = os.stat(path)
    with open(path, "rb") as f:
        data = f.read()
    return data, (st.st_size, st.st_mtime_ns, hashlib.sha256(data).digest())


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """(start, stop) positions in `rows` of runs of consecutive row numbers: one write per run."""
    runs, start = [], 0
    for k in range(1, len(rows) + 1):
        if k == len(rows) or rows[k] != rows[k - 1] + 1:
            runs.append((start, k))
            start = k
    return runs
