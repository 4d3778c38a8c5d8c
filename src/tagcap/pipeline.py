"""The annotation pipeline shared by `fit`, `evaluate`, `bench annotate` and `demo`:
dataset -> cached features -> decoder training -> decision rules -> metrics -> checkpoint."""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tagcap.data import AnnotationDataset, Vocabulary, read_dataset
from tagcap.decide import apply_rule, fit_mcc_thresholds, rule_name
from tagcap.features.backbone import Backbone, BackboneSpec, default_cache_root
from tagcap.features.cache import FeatureCache, default_cache_dir
from tagcap.metrics.annotation import annotation_metrics
from tagcap.models import create_decoder
from tagcap.models.base import Decoder
from tagcap.train.checkpoint import save_checkpoint
from tagcap.train.loop import TrainConfig, fit, predict_scores


@dataclass
class Prepared:
    dataset: AnnotationDataset
    vocab: Vocabulary
    cache: FeatureCache
    backbone: dict            # manifest facts: name, weights, input size
    extract_stats: dict

    def split(self, name: str, kind: str = "pooled") -> tuple[np.ndarray, np.ndarray]:
        records = self.dataset.splits[name]
        return self.cache.load([r.key for r in records], kind), self.vocab.encode(records)


def prepare(data: str | Path, fmt: str | None = None, spec: BackboneSpec | None = None,
            cache: str | Path | None = None, engine: str = "auto", batch_size: int = 32,
            cache_root: Path | None = None, progress: bool = True, grid: bool = True,
            val_fraction: float = 0.1, seed: int = 0) -> Prepared:
    """Read the dataset and make sure its features are cached (extracting only what is missing)."""
    spec = spec or BackboneSpec()
    cache_root = Path(cache_root or default_cache_root())
    dataset = read_dataset(data, fmt, val_fraction=val_fraction, seed=seed)
    folder = Path(cache) if cache else default_cache_dir(dataset, spec, cache_root)
    fc = FeatureCache(folder)
    stats = {"reused": True}
    if not fc.is_complete():
        backbone = Backbone(spec, engine=engine, cache_root=cache_root)
        stats = fc.extract(backbone, dataset.all_records(), batch_size=batch_size, grid=grid, progress=progress)
    else:
        stats = {**(fc.manifest().get("stats") or {}), "reused": True}
    m = fc.manifest()
    backbone_facts = {"name": m["backbone"], "weights": m["weights"], "input_size": m["input_size"],
                      "spec": spec.to_dict()}
    return Prepared(dataset, dataset.vocabulary(), fc, backbone_facts, stats)


def make_rules(recipe_decisions, val_scores: np.ndarray, val_targets: np.ndarray) -> list[dict]:
    """Decision rules named in a recipe, with MCC thresholds fitted on the validation split."""
    rules = []
    for d in recipe_decisions:
        if d == "threshold":
            rules.append({"kind": "threshold", "t": 0.5})
        elif d == "mcc":
            rules.append({"kind": "mcc", "thresholds": fit_mcc_thresholds(val_scores, val_targets).tolist()})
        elif isinstance(d, str) and d.startswith("top-"):
            rules.append({"kind": "top-k", "k": int(d[4:])})
        else:
            raise ValueError(f"unknown decision {d!r} (threshold, mcc, top-K)")
    return rules


def train_recipe(prep: Prepared, recipe: dict, seed: int = 0, progress: bool = True) -> tuple[Decoder, dict]:
    train_x, train_y = prep.split("train")
    val_x, val_y = prep.split("val")
    torch.manual_seed(seed)
    decoder = create_decoder(recipe["method"], len(prep.vocab), train_x.shape[-1], **recipe["decoder"])
    config = TrainConfig.from_dict({**recipe["train"], "seed": seed})
    history = fit(decoder, train_x, train_y, val_x, val_y, config, progress=progress)
    return decoder, history


def score_split(decoder: Decoder, prep: Prepared, split: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores [N, C], targets, and decoder milliseconds per image (both views, cached features)."""
    x, y = prep.split(split, decoder.feature_kind)
    t0 = time.perf_counter()
    scores = predict_scores(decoder, x)
    ms = (time.perf_counter() - t0) * 1000 / max(len(x), 1)
    return scores, y, ms


def metrics_row(scores: np.ndarray, targets: np.ndarray, rule: dict) -> dict:
    return {"decision": rule_name(rule), **annotation_metrics(apply_rule(scores, rule), targets, scores)}


def checkpoint_meta(prep: Prepared, recipe: dict, rule: dict, history: dict, metrics: dict, seed: int) -> dict:
    return {
        "task": "annotation",
        "recipe": recipe,
        "backbone": prep.backbone,
        "vocabulary": prep.vocab.to_dict(),
        "decision": rule,
        "training": {k: v for k, v in history.items() if k != "val_mAP_curve"},
        "dataset": {"name": prep.dataset.name, "format": prep.dataset.format, "root": str(prep.dataset.root)},
        "metrics": metrics,
        "seed": seed,
    }


def save_model(folder: Path, decoder: Decoder, prep: Prepared, recipe: dict, rule: dict, history: dict,
               metrics: dict, seed: int) -> Path:
    return save_checkpoint(folder, decoder, checkpoint_meta(prep, recipe, rule, history, metrics, seed))


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "commit": commit}
