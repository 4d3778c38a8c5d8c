"""A dataset with its features cached and current: what training, evaluation and reports read.

`prepare` reads the dataset, checks the feature cache against the backbone (refusing another
backbone's features), and extracts what is missing or changed. It trains nothing, so reports and
evaluation use it without importing training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tagcap.data import AnnotationDataset, Vocabulary, read_dataset
from tagcap.errors import CacheMismatchError, ConfigError
from tagcap.features.backbone import Backbone, BackboneSpec, default_cache_root, weights_identity
from tagcap.features.cache import FeatureCache, default_cache_dir


@dataclass
class PreparedDataset:
    """A dataset read and checked, its label vocabulary, and its features in a current cache: what
    `prepare` returns and every trainer, bench and report reads."""

    dataset: AnnotationDataset
    vocab: Vocabulary
    cache: FeatureCache
    backbone: dict            # manifest facts: name, weights, input size
    extract_stats: dict

    def split(self, name: str, kind: str = "pooled") -> tuple[np.ndarray, np.ndarray]:
        """Features and targets of a split; "train+val" joins the two (for a refit)."""
        records = [r for part in name.split("+") for r in self.dataset.splits[part]]
        return self.cache.load([r.key for r in records], kind), self.vocab.encode(records)


def prepare(data: str | Path, fmt: str | None = None, spec: BackboneSpec | None = None,
            cache: str | Path | None = None, engine: str = "auto", batch_size: int = 16,
            cache_root: Path | None = None, progress: bool = True, grid: bool | None = True,
            val_fraction: float = 0.1, seed: int = 0, task: str = "annotation", verify: bool = False,
            device: str | None = "cpu", splits: Sequence[str] = ()) -> PreparedDataset:
    """Read the dataset and make sure its features are cached and current: extracting what is missing,
    and again what changed since (`FeatureCache.extract`; `verify` compares every image's content hash,
    not only its size and modification time). `device`: where the backbone runs if features are extracted
    (see `tagcap.devices`). `splits`: the ones the caller will read, refused before any extraction if
    the dataset lacks one. `grid`: True, the grid features are needed; None, not needed (a cache of
    pooled features alone serves, and a new cache gets the grid too, for later decoders that read it);
    False, a new cache holds pooled features only."""
    from tagcap.devices import resolve_device

    spec = spec or BackboneSpec()
    device = resolve_device(device)  # a device that is not there is refused before the dataset is read
    cache_root = Path(cache_root or default_cache_root())
    dataset = read_dataset(data, fmt, val_fraction=val_fraction, seed=seed, task=task)
    for split in splits:
        if split not in dataset.splits:
            raise ConfigError(f"--split {split}: {data} has no such split; it has {', '.join(sorted(dataset.splits))}")
    variant = ""
    if engine == "onnx-int8":  # int8 features are close to float32's, not equal: a cache of their own
        from tagcap.features.quantize import int8_source

        variant = "-int8-" + int8_source(spec.name, weights_identity(spec), spec.input_size, spec.pool_blocks)[0]
    folder = Path(cache) if cache else default_cache_dir(dataset, spec, cache_root, variant)
    fc = FeatureCache(folder)
    records = dataset.all_records()
    stats = stale = None
    if fc.damage() is None and fc.is_complete():  # a damaged folder goes to extract, which says so and starts over
        # a cache of other features is refused before the network is built, where the weights' identity
        # is known up front; one of these features is reused when its images are still the same files
        expected = {"backbone": spec.name, "pool_blocks": spec.blocks_identity()}
        if (wid := weights_identity(spec)) is not None:
            expected["weights"] = wid
        if spec.input_size:
            expected["input_size"] = spec.input_size
        fc.check(expected)
        if grid and not fc.manifest()["grid"]:
            raise CacheMismatchError(f"{fc.folder} holds pooled features only; this needs the grid too")
        grid = fc.manifest()["grid"]
        if fc.keys() == [r.key for r in records] and fc.fingerprints() is not None:
            stale = fc.stale_rows(records, verify)  # handed to extract below: each image hashed once
            if not stale:
                stats = {**(fc.manifest().get("stats") or {}), "reused": True}
    if stats is None:
        backbone = Backbone(spec, engine=engine, cache_root=cache_root, device=device)
        stats = fc.extract(backbone, records, batch_size=batch_size, grid=grid is not False, progress=progress,
                           verify=verify,
                           stale=stale)
    m = fc.manifest()
    backbone_facts = {"name": m["backbone"], "weights": m["weights"], "input_size": m["input_size"],
                      "spec": spec.to_dict(), "engine": (m.get("stats") or {}).get("engine")}  # what made the features
    return PreparedDataset(dataset, dataset.vocabulary(), fc, backbone_facts, stats)
