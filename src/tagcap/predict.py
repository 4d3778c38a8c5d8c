"""Tag new images with a trained checkpoint: backbone features (both views) -> decoder -> rule."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from tagcap.data.readers.common import IMAGE_SUFFIXES
from tagcap.data.vocab import Vocabulary
from tagcap.decide import apply_rule, rule_name
from tagcap.errors import CheckpointError, TagcapError
from tagcap.explain import step_trace, top_labels
from tagcap.features.backbone import Backbone, BackboneSpec
from tagcap.features.images import load_image, preprocess
from tagcap.train.checkpoint import load_checkpoint
from tagcap.train.loop import predict_outputs


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

    def outputs(self, images: list) -> dict[str, np.ndarray]:
        """Decoder outputs for PIL images, computed exactly as on cached features (two views, combined)."""
        batch = np.stack([preprocess(img, self.backbone.input_size, self.backbone.mean, self.backbone.std)
                          for img in images])
        pooled, grid = self.backbone.views(batch)
        return predict_outputs(self.decoder, pooled if self.decoder.feature_kind == "pooled" else grid)

    def annotate(self, images: list, explain: bool = False) -> list[dict]:
        out = self.outputs(images)
        chosen = apply_rule(out["scores"], self.rule, out.get("emitted"))
        results = []
        for n, (s, c) in enumerate(zip(out["scores"], chosen)):
            idx = np.flatnonzero(c)
            idx = idx[np.argsort(-s[idx])]
            labels = self.vocab.labels
            result = {"labels": top_labels(s, labels, idx), "top_scores": top_labels(s, labels, np.argsort(-s)[:5]),
                      "decision": rule_name(self.rule)}
            if explain:
                result["steps"] = (step_trace(out["step_scores"][n], out["step_labels"][n] if "step_labels" in out
                                              else None, labels) if "step_scores" in out else [])
            results.append(result)
        return results


def predict_paths(annotator: Annotator, paths: list[str | Path], batch_size: int = 16, strict: bool = False,
                  on_error=None, explain: bool = False) -> Iterator[dict]:
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
            for f, result in zip(good, annotator.annotate(imgs, explain=explain)):
                yield {"image": str(f), **result}
