"""The feature cache: memory-mapped .npy arrays plus a manifest that says what made them.

Layout of a cache folder:
  manifest.json   backbone, weights identity, input size, views, image-list checksum, shapes
  images.txt      the image keys, one a line, in row order
  pooled.npy      [N, V, D] float32       (V views: original, horizontal flip)
  grid.npy        [N, V, H*W, D] float16  (optional; attention decoders read it)
  progress.json   rows finished so far; a killed extraction resumes from here

A matching manifest means reuse; a mismatch is an error that names what differs.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from tagcap import atomic
from tagcap.errors import CacheMismatchError
from tagcap.features.images import load_image, preprocess

VIEWS = ("original", "hflip")
CACHE_VERSION = 1
IDENTITY_FIELDS = ("version", "backbone", "weights", "input_size", "views", "images_sha256", "num_images", "grid")


def list_sha256(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def default_cache_dir(dataset, spec, cache_root: Path) -> Path:
    """One folder per (dataset location, backbone, input size), so runs never collide."""
    where = hashlib.sha256(str(Path(dataset.root).resolve()).encode()).hexdigest()[:8]
    size = spec.input_size or "default"
    weights = "" if spec.weights in (None, "auto") else "-" + hashlib.sha256(str(spec.weights).encode()).hexdigest()[:8]
    return Path(cache_root) / "features" / f"{dataset.name}-{where}-{spec.name}-{size}{weights}"


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

    def load(self, keys: Sequence[str], kind: str = "pooled") -> np.ndarray:
        """Features for `keys` in that order: pooled [n, V, D] or grid [n, V, HW, D] (read into memory)."""
        if not self.is_complete():
            raise CacheMismatchError(f"{self.folder}: the cache is incomplete; run `tagcap extract` to finish it")
        arr = np.load(self.folder / f"{kind}.npy", mmap_mode="r")
        rows = self.rows(keys)
        return np.asarray(arr[rows])

    # -- writing -----------------------------------------------------------------------------
    def extract(self, backbone, records: Sequence, batch_size: int = 16, grid: bool = True,
                progress: bool = True) -> dict:
        """Fill the cache for `records` (reusing or resuming it); returns timing statistics."""
        keys = [r.key for r in records]
        wanted = {
            "version": CACHE_VERSION,
            "backbone": backbone.spec.name,
            "weights": backbone.weights_id,
            "input_size": backbone.input_size,
            "views": list(VIEWS),
            "images_sha256": list_sha256(keys),
            "num_images": len(keys),
            "grid": grid,
        }
        existing = self.manifest()
        if existing is not None:
            self.check({f: wanted[f] for f in IDENTITY_FIELDS})
            if existing.get("complete"):
                return {**existing.get("stats", {}), "reused": True}
        n, v, d, hw = len(keys), len(VIEWS), backbone.feature_dim, backbone.grid_cells
        self.folder.mkdir(parents=True, exist_ok=True)
        if existing is None:
            atomic.write_text(self.folder / "images.txt", "\n".join(keys) + "\n")
            np.lib.format.open_memmap(self.folder / "pooled.npy", "w+", np.float32, (n, v, d)).flush()
            if grid:
                np.lib.format.open_memmap(self.folder / "grid.npy", "w+", np.float16, (n, v, hw, d)).flush()
            atomic.write_json(self.folder / "progress.json", {"done": 0})
            atomic.write_json(self.manifest_path, {**wanted, "feature_dim": d, "grid_cells": hw,
                                                   "complete": False})
        done = json.loads((self.folder / "progress.json").read_text())["done"]
        pooled_mm = np.load(self.folder / "pooled.npy", mmap_mode="r+")
        grid_mm = np.load(self.folder / "grid.npy", mmap_mode="r+") if grid else None

        def prepare(start: int) -> np.ndarray:
            imgs = [preprocess(load_image(r.image), backbone.input_size, backbone.mean, backbone.std)
                    for r in records[start:start + batch_size]]
            return np.stack(imgs)

        starts = list(range(done, n, batch_size))
        t0 = time.perf_counter()
        forward_s = 0.0
        # Decoding runs in threads (PIL releases the GIL) while the engine runs the previous batch.
        with ThreadPoolExecutor(max_workers=2) as pool, \
                tqdm(total=n, initial=done, unit="img", desc=f"extract {backbone.spec.name}",
                     disable=not progress, dynamic_ncols=True) as bar:
            pending = [pool.submit(prepare, s) for s in starts[:2]]
            for i, start in enumerate(starts):
                batch = pending.pop(0).result()
                if i + 2 < len(starts):
                    pending.append(pool.submit(prepare, starts[i + 2]))
                tf = time.perf_counter()
                pooled, cells = backbone.views(batch)  # original + horizontal flip
                forward_s += time.perf_counter() - tf
                b = len(batch)
                end = start + b
                pooled_mm[start:end] = pooled
                if grid_mm is not None:
                    grid_mm[start:end] = cells.astype(np.float16)
                    grid_mm.flush()
                pooled_mm.flush()
                atomic.write_json(self.folder / "progress.json", {"done": end})
                bar.update(b)
        wall = time.perf_counter() - t0
        processed = n - done
        stats = {"reused": False, "images": processed, "views": v, "engine": backbone.engine,
                 "wall_seconds": round(wall, 2),
                 "images_per_second": round(processed / wall, 2) if wall > 0 else None,
                 "forward_views_per_second": round(processed * v / forward_s, 2) if forward_s > 0 else None}
        atomic.write_json(self.manifest_path, {**wanted, "feature_dim": d, "grid_cells": hw, "complete": True,
                                               "stats": stats})
        return stats
