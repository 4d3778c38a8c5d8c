"""Tag new images with a trained checkpoint: backbone features (both views) -> decoder -> rule."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from tagcap.data.readers.common import IMAGE_SUFFIXES
from tagcap.data.vocab import Vocabulary
from tagcap.decide import apply_rule, rule_name
from tagcap.errors import CheckpointError, TagcapError
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
        pooled, grid = self.backbone(np.concatenate([batch, batch[:, :, :, ::-1]]))
        feats = pooled if self.decoder.feature_kind == "pooled" else grid
        b = len(images)
        return predict_outputs(self.decoder, np.stack([feats[:b], feats[b:]], axis=1))

    def _label_scores(self, scores: np.ndarray, idx) -> list[dict]:
        return [{"label": self.vocab.labels[i], "score": round(float(scores[i]), 4)} for i in idx]

    def annotate(self, images: list, explain: bool = False) -> list[dict]:
        out = self.outputs(images)
        chosen = apply_rule(out["scores"], self.rule, out.get("emitted"))
        results = []
        for n, (s, c) in enumerate(zip(out["scores"], chosen)):
            idx = np.flatnonzero(c)
            idx = idx[np.argsort(-s[idx])]
            result = {"labels": self._label_scores(s, idx), "top_scores": self._label_scores(s, np.argsort(-s)[:5]),
                      "decision": rule_name(self.rule)}
            if explain:
                result["steps"] = self.explain(out, n)
            results.append(result)
        return results

    def explain(self, out: dict, n: int) -> list[dict]:
        """What each decoding step picked and with what score, and its three best labels."""
        if "step_scores" not in out:
            return []
        steps = []
        for t, probs in enumerate(out["step_scores"][n]):
            pick = int(out["step_labels"][n, t]) if "step_labels" in out else -1
            steps.append({"step": t + 1,
                          "picked": self.vocab.labels[pick] if pick >= 0 else "STOP",
                          "score": round(float(probs[pick]), 4) if pick >= 0 else None,
                          "top": self._label_scores(probs, np.argsort(-probs)[:3])})
            if pick < 0:
                break
        return steps


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
