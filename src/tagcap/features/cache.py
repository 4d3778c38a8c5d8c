"""The feature cache: memory-mapped .npy arrays plus a manifest that says what made them.

Layout of a cache folder:
  manifest.json   backbone, weights identity, input size, views, image-list checksum, shapes
  images.txt      the image keys, one a line, in row order
  pooled.npy      [N, V, D] float32       (V views: original, horizontal flip)
  grid.npy        [N, V, H*W, D] float16  (optional; attention decoders read it)
  activations.npy [N, V, C, H, W] float16 (instead of the two above: an intermediate block's output, for
                  partial fine-tuning; the manifest's "layer" names the block)
  progress*.json  rows finished so far (one file per shard); a killed extraction resumes from here

Extraction may be sharded over the processes of a torch.distributed group (torchrun, or the
Lightning/SLURM launchers): each rank fills its own contiguous slice of the same arrays, so the
result is the cache one process would have written.

A matching manifest means reuse; a mismatch is an error that names what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from tagcap import atomic, distributed
from tagcap.errors import CacheMismatchError
from tagcap.features.images import load_image, preprocess

VIEWS = ("original", "hflip")
CACHE_VERSION = 1
IDENTITY_FIELDS = ("version", "backbone", "weights", "input_size", "views", "images_sha256", "num_images", "grid",
                   "layer", "pool_blocks")


def list_sha256(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def default_cache_dir(dataset, spec, cache_root: Path) -> Path:
    """One folder per (dataset location, backbone, input size, weights, pooled blocks), so runs never collide."""
    where = hashlib.sha256(str(Path(dataset.root).resolve()).encode()).hexdigest()[:8]
    size = spec.input_size or "default"
    weights = "" if spec.weights in (None, "auto") else "-" + hashlib.sha256(str(spec.weights).encode()).hexdigest()[:8]
    return Path(cache_root) / "features" / f"{dataset.name}-{where}-{spec.name}-{size}{weights}{spec.blocks_tag()}"


class Rows:
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
                raise TypeError("Rows takes a row number first in a tuple index")
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
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, start: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        if len(data) != len(rows) * self.row_bytes:
            raise ValueError(f"rows of {len(data) // max(len(rows), 1)} bytes, the file holds {self.row_bytes}")
        os.pwrite(self.fd, data, self.offset + start * self.row_bytes)

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


class FeatureCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text())

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
        else a `Rows` view that reads rows from the memory-mapped file as they are asked for."""
        if not self.is_complete():
            raise CacheMismatchError(f"{self.folder}: the cache is incomplete; run `tagcap extract` to finish it")
        arr = np.load(self.folder / f"{kind}.npy", mmap_mode="r")
        rows = self.rows(keys)
        if in_memory is None:
            budget = float(os.environ.get("TAGCAP_MEMORY_GB", 4)) * 2**30
            in_memory = len(rows) * arr[0].nbytes <= budget
        return np.asarray(arr[rows]) if in_memory else Rows(arr, rows)

    # -- writing -----------------------------------------------------------------------------
    def extract(self, backbone, records: Sequence, batch_size: int = 16, grid: bool = True,
                progress: bool = True) -> dict:
        """Fill the cache for `records` (reusing or resuming it); returns timing statistics.

        `backbone` says which arrays it makes (`cache_outputs`) and makes them for a batch of images
        (`cache_arrays`): the full backbone's pooled vector and grid, or an intermediate block's
        activations. In a torch.distributed group each rank fills its own slice of rows."""
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
        existing = self.manifest()
        if existing is not None:
            self.check({f: wanted[f] for f in IDENTITY_FIELDS})
            if existing.get("complete"):
                return {**existing.get("stats", {}), "reused": True}
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
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.folder / "images.txt", "\n".join(keys) + "\n")
            for name, (shape, dtype) in outputs.items():
                np.lib.format.open_memmap(self.folder / f"{name}.npy", "w+", dtype, (n, *shape)).flush()
            atomic.write_json(self.manifest_path, {**wanted, **facts, "complete": False})
        distributed.barrier()  # the arrays exist before any rank writes into them
        lo, hi = distributed.shard_bounds(n, rank, world)
        progress_path = self.folder / distributed.progress_name(rank, world)
        done = json.loads(progress_path.read_text())["done"] if progress_path.is_file() else lo
        writers = {name: _RowWriter(self.folder / f"{name}.npy") for name in outputs}

        def prepare(start: int) -> np.ndarray:
            imgs = [preprocess(load_image(r.image), backbone.input_size, backbone.mean, backbone.std)
                    for r in records[start:min(start + batch_size, hi)]]
            return np.stack(imgs)

        starts = list(range(done, hi, batch_size))
        t0 = time.perf_counter()
        forward_s = 0.0
        shard = f" [{rank + 1}/{world}]" if world > 1 else ""
        # Decoding runs in threads (PIL releases the GIL) while the engine runs the previous batch.
        with ThreadPoolExecutor(max_workers=2) as pool, \
                tqdm(total=hi - lo, initial=done - lo, unit="img", desc=f"extract {backbone.spec.name}{shard}",
                     disable=not progress, dynamic_ncols=True) as bar:
            pending = [pool.submit(prepare, s) for s in starts[:2]]
            for i, start in enumerate(starts):
                batch = pending.pop(0).result()
                if i + 2 < len(starts):
                    pending.append(pool.submit(prepare, starts[i + 2]))
                tf = time.perf_counter()
                made = backbone.cache_arrays(batch, grid)  # original + horizontal flip
                forward_s += time.perf_counter() - tf
                end = start + len(batch)
                for name, writer in writers.items():
                    writer.write(start, made[name])
                atomic.write_json(progress_path, {"done": end})  # after the rows: a resume never skips unwritten ones
                bar.update(len(batch))
        for writer in writers.values():
            writer.close()
        wall = time.perf_counter() - t0
        processed = hi - done
        stats = {"reused": False, "images": processed, "views": len(VIEWS), "engine": backbone.engine,
                 "wall_seconds": round(wall, 2),
                 "images_per_second": round(processed / wall, 2) if wall > 0 else None,
                 "forward_views_per_second": round(processed * len(VIEWS) / forward_s, 2) if forward_s > 0 else None}
        if world > 1:
            stats["shards"] = world
        distributed.barrier()  # every slice is written before the cache is declared complete
        if rank == 0:
            atomic.write_json(self.manifest_path, {**wanted, **facts, "complete": True, "stats": stats})
        distributed.barrier()
        return stats
