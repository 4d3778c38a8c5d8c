"""Tag new images with a trained checkpoint: backbone features (both views) -> decoder -> rule."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from tagcap.data.readers.common import IMAGE_SUFFIXES
from tagcap.data.vocab import Vocabulary
from tagcap.decide import apply_rule, rule_name
from tagcap.errors import CheckpointError, TagcapError
from tagcap.features.backbone import Backbone, BackboneSpec
from tagcap.features.images import load_image, preprocess
from tagcap.train.checkpoint import load_checkpoint


def iter_images(paths: list[str | Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively for image suffixes, in sorted order."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


class Annotator:
    """A loaded checkpoint with its backbone, ready to tag images."""

    def __init__(self, checkpoint: str | Path, engine: str = "auto", weights: str | None = None):
        self.decoder, self.config = load_checkpoint(checkpoint)
        if self.config.get("task") != "annotation":
            raise CheckpointError(f"{checkpoint}: not an annotation checkpoint")
        self.vocab = Vocabulary.from_dict(self.config["vocabulary"])
        if len(self.vocab) != self.decoder.num_labels:
            raise CheckpointError(f"{checkpoint}: vocabulary has {len(self.vocab)} labels, decoder {self.decoder.num_labels}")
        self.rule = self.config["decision"]
        facts = self.config["backbone"]
        spec = BackboneSpec(**{**facts["spec"], **({"weights": weights} if weights else {})})
        self.backbone = Backbone(spec, engine=engine)
        if self.backbone.weights_id != facts["weights"]:
            raise CheckpointError(f"{checkpoint}: trained on backbone weights {facts['weights'][:30]}, but these "
                                  f"weights are {self.backbone.weights_id[:30]}; pass --weights with the right file")

    def scores(self, images: list) -> np.ndarray:
        batch = np.stack([preprocess(img, self.backbone.input_size, self.backbone.mean, self.backbone.std)
                          for img in images])
        pooled, grid = self.backbone(np.concatenate([batch, batch[:, :, :, ::-1]]))
        feats = pooled if self.decoder.feature_kind == "pooled" else grid
        b = len(images)
        with torch.no_grad():
            views = [self.decoder.predict(torch.from_numpy(np.ascontiguousarray(f))).scores for f in (feats[:b], feats[b:])]
        return torch.stack(views).mean(0).numpy()

    def annotate(self, images: list) -> list[dict]:
        scores = self.scores(images)
        chosen = apply_rule(scores, self.rule)
        out = []
        for s, c in zip(scores, chosen):
            idx = np.flatnonzero(c)
            idx = idx[np.argsort(-s[idx])]
            top = np.argsort(-s)[:5]
            out.append({"labels": [{"label": self.vocab.labels[i], "score": round(float(s[i]), 4)} for i in idx],
                        "top_scores": [{"label": self.vocab.labels[i], "score": round(float(s[i]), 4)} for i in top],
                        "decision": rule_name(self.rule)})
        return out


def predict_paths(annotator: Annotator, paths: list[str | Path], batch_size: int = 16, strict: bool = False,
                  on_error=None) -> Iterator[dict]:
    """Yield one result per image; a bad file yields {"image", "error"} (or raises with strict)."""
    files = list(iter_images(paths))
    for start in range(0, len(files), batch_size):
        good, imgs = [], []
        for f in files[start:start + batch_size]:
            try:
                imgs.append(load_image(f))
                good.append(f)
            except TagcapError as e:
                if strict:
                    raise
                if on_error:
                    on_error(f, e)
                yield {"image": str(f), "error": str(e)}
        if imgs:
            for f, result in zip(good, annotator.annotate(imgs)):
                yield {"image": str(f), **result}
