"""Loaded models that tag and caption images: a checkpoint, its backbone, its vocabulary and its rule.

`Annotator` (labels) and `Captioner` (a sentence) each wrap one checkpoint; `ModelSet` holds several
(the default models: two annotators and a captioner) and runs the backbone once per batch for all
that were trained on the same backbone. Everything here runs on one device, the CPU unless asked:
the decoders' weights and, through torch or onnxruntime, the backbone (`features.backbone`).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from tagcap.data.vocab import Vocabulary
from tagcap.decision import apply_rule, override_rule, rule_name
from tagcap.devices import decoding_precision, resolve_device
from tagcap.errors import CheckpointError, ConfigError
from tagcap.explain import step_trace, top_labels
from tagcap.features.backbone import Backbone, BackboneSpec, weights_identity
from tagcap.features.images import preprocess
from tagcap.features.quantize import photo_engine
from tagcap.inference.checkpoint import backbone_spec, checkpoint_task, load_checkpoint
from tagcap.inference.grounding import CaptionGrounder, Grounding, bundled_grounding, tagger_confidences
from tagcap.inference.outputs import caption_grid, predict_outputs
from tagcap.inference.shown import SHOWN_FILE, Calibration, ShownRule, merge

_BACKBONES: dict[tuple, Backbone] = {}
# how a model set chooses the tags it outputs: `shown` (calibrated, merged by concept, for people) or
# `model` (each model's own benchmark rule, its tags listed model after model)
RULES = ("shown", "model")


def shared_backbone(spec: BackboneSpec, engine: str = "auto", device=None) -> Backbone:
    """One Backbone per (spec, engine, device) in this process: models trained on the same backbone
    share its weights in memory (and, in a `ModelSet`, its forward pass). `auto` on an x86 CPU with VNNI is
    the shipped 8-bit backbone where it fits (`features.quantize.photo_engine`), worked out once per
    backbone: it hashes the weights file."""
    key = (repr(spec.to_dict()), engine, str(device or "cpu"))
    if key not in _BACKBONES:
        chosen = photo_engine(engine, spec.name, weights_identity(spec), spec.input_size, spec.pool_blocks,
                              str(device or "cpu"))
        _BACKBONES[key] = Backbone(spec, engine=chosen, device=device)
    return _BACKBONES[key]


def encode(backbone: Backbone, images: Sequence, views: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both cached views of RGB PIL images (or of a batch already preprocessed for this backbone, [B, 3,
    H, W]), as the feature cache holds them: pooled [B, 2, D] and grid [B, 2, HW, D]; `views=1` the
    original view alone ([B, 1, ...])."""
    batch = images if isinstance(images, np.ndarray) else \
        np.stack([preprocess(img, backbone.input_size, backbone.mean, backbone.std) for img in images])
    return backbone.views(batch, flips=views == 2)


class LoadedModel:
    """A checkpoint's decoder on `device`, with the backbone it was trained on."""

    task = "annotation"

    def __init__(self, checkpoint: str | Path, engine: str = "auto", weights: str | None = None,
                 device: str | None = "cpu", name: str | None = None):
        self.path = Path(checkpoint)
        self.decoder, self.config = load_checkpoint(checkpoint)
        if self.config.get("task", "annotation") != self.task:
            raise CheckpointError(f"{checkpoint}: a {self.config.get('task')} checkpoint, not a {self.task} one")
        self.name = name or self.config.get("name") or self.path.name
        self.device = resolve_device(device)
        self.decoder.to(self.device)
        facts = self.config["backbone"]
        self.backbone = shared_backbone(backbone_spec(checkpoint, self.config, weights), engine, self.device)
        if self.backbone.weights_id != facts["weights"]:
            raise CheckpointError(f"{checkpoint}: trained on backbone weights {facts['weights'][:30]}, but these "
                                  f"weights are {self.backbone.weights_id[:30]}; pass --weights with the right file")
        # bfloat16 for a captioner on the fast default path of a CPU that has it (devices.decoding_precision)
        self.precision = decoding_precision(self.task, self.device, engine, self.backbone.engine)
        size = self._read_vocabulary()
        if size != self.decoder.num_labels:
            raise CheckpointError(f"{checkpoint}: its vocabulary has {size} entries, but the decoder "
                                  f"{self.decoder.num_labels}")

    def _read_vocabulary(self) -> int:
        """Read what the decoder's outputs name (labels, words) from the config; return how many."""
        raise NotImplementedError

    def pick(self, pooled: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """Of a batch's two feature kinds, the one this decoder reads."""
        return pooled if self.decoder.feature_kind == "pooled" else grid

    def features(self, images: Sequence) -> np.ndarray:
        """Backbone features of RGB PIL images exactly as the cache holds them: [B, 2 views, ...]."""
        return self.pick(*encode(self.backbone, images))

    def describe(self) -> dict:
        """What a person (or `GET /v1/model`) needs to know about this model."""
        cfg = self.config
        return {"name": self.name, "task": self.task, "checkpoint": self.path.name,
                "method": cfg["decoder"]["method"], "recipe": (cfg.get("recipe") or {}).get("name"),
                "backbone": {**{k: cfg["backbone"][k] for k in ("name", "weights", "input_size")},
                             "engine": self.backbone.engine},  # what runs it here, not what it was trained on
                "precision": self.precision,  # the arithmetic the decoder runs in here
                "vocabulary_size": self.decoder.num_labels, "metrics": cfg.get("metrics", {}),
                "trained_on": (cfg.get("dataset") or {}).get("name"), "versions": cfg.get("versions", {})}


class Annotator(LoadedModel):
    """A loaded annotation checkpoint: labels, their scores and the checkpoint's decision rule."""

    def _read_vocabulary(self) -> int:
        self.vocab = Vocabulary.from_dict(self.config["vocabulary"])
        self.rule = self.config["decision"]
        return len(self.vocab)

    def outputs(self, images: Sequence) -> dict[str, np.ndarray]:
        """Decoder outputs for PIL images, computed exactly as on cached features (two views, combined)."""
        return predict_outputs(self.decoder, self.features(images))

    def annotate(self, images: Sequence, explain: bool = False, threshold: float | None = None,
                 top_k: int | None = None) -> list[dict]:
        return self.annotate_features(self.features(images), explain, threshold, top_k)

    def annotate_features(self, features: np.ndarray, explain: bool = False, threshold: float | None = None,
                          top_k: int | None = None) -> list[dict]:
        """Per image {"labels", "top_scores", "decision"} (and with `explain` the decoder's steps) from
        backbone features [B, 2 views, ...]. `threshold` and `top_k` replace the checkpoint's rule
        (both: the top k at or above the threshold). Each label says which model gave it ("source")."""
        return self.annotate_outputs(predict_outputs(self.decoder, features), explain, threshold, top_k)

    def annotate_outputs(self, out: dict[str, np.ndarray], explain: bool = False, threshold: float | None = None,
                         top_k: int | None = None) -> list[dict]:
        """`annotate_features` from the decoder's outputs (`predict_outputs`) already computed."""
        rule = override_rule(self.rule, threshold, top_k)
        chosen = apply_rule(out["scores"], rule, out.get("emitted"))
        labels, results = self.vocab.labels, []
        for n, (s, c) in enumerate(zip(out["scores"], chosen)):
            idx = np.flatnonzero(c)
            idx = idx[np.argsort(-s[idx])]
            result = {"labels": self._sourced(top_labels(s, labels, idx)),
                      "top_scores": self._sourced(top_labels(s, labels, np.argsort(-s)[:5])),
                      "decision": rule_name(rule)}
            if explain:
                result["steps"] = (step_trace(out["step_scores"][n], out["step_labels"][n] if "step_labels" in out
                                              else None, labels) if "step_scores" in out else [])
            results.append(result)
        return results

    @cached_property
    def calibration(self) -> Calibration | None:
        """The shown rule's calibration of this model (`shown.json` beside its weights), or None."""
        cal = Calibration.load(self.path)
        if cal is not None and cal.rollup is not None and cal.rollup.shape[0] != len(self.vocab):
            raise CheckpointError(f"{self.path / SHOWN_FILE}: made for {cal.rollup.shape[0]} labels, "
                                  f"the model has {len(self.vocab)}")
        return cal

    def _sourced(self, tags: list[dict]) -> list[dict]:
        return [{**t, "source": self.name} for t in tags]

    def describe(self) -> dict:
        return {**super().describe(), "decision": self.rule.get("kind")}


class Captioner(LoadedModel):
    """A loaded captioning checkpoint: a sentence per image, beam search by default."""

    task = "caption"

    def _read_vocabulary(self) -> int:
        from tagcap.data.captions import WordVocabulary

        self.words = WordVocabulary.from_dict(self.config["words"])
        return len(self.words)

    def caption(self, images: Sequence, beam_width: int | None = None, attention: bool = False) -> list[dict]:
        """{"caption"} per image, and with `attention` the maps ([words + 1, cells]) behind its words."""
        return self.caption_features(self.features(images), beam_width, attention)

    def caption_features(self, grid: np.ndarray, beam_width: int | None = None, attention: bool = False,
                         word_bias: np.ndarray | None = None, once: np.ndarray | None = None) -> list[dict]:
        """`caption` from backbone grids [B, 2 views, cells, D]; `word_bias` [B, words] is added to the
        words' log-probabilities and `once` words are said at most once (`inference.grounding`)."""
        if beam_width is not None and beam_width < 1:
            raise ConfigError(f"beam width {beam_width}: must be at least 1")
        caps, maps = caption_grid(self.decoder, grid, self.words, beam_width=beam_width, attention=attention,
                                  precision=self.precision, word_bias=word_bias, once=once)
        return [{"caption": c, **({"attention": m} if attention else {})} for c, m in zip(caps, maps or [None] * len(caps))]


def load_model(source: str | Path, engine: str = "auto", weights: str | None = None,
               device: str | None = "cpu") -> Annotator | Captioner:
    """An Annotator or a Captioner, whichever task the checkpoint folder (or bundled model name) holds."""
    from tagcap.inference.bundled import resolve

    path, name = resolve(source)
    cls = Captioner if checkpoint_task(path) == "caption" else Annotator
    return cls(path, engine=engine, weights=weights, device=device, name=name)


class ModelSet:
    """Annotators and at most one captioner, run together: the backbone once per batch for all the
    models trained on the same one. Tags from several annotators are listed one model after the
    other, each tag naming its source."""

    def __init__(self, models: Sequence[Annotator | Captioner], views: int = 2, rule: str = "shown"):
        if views not in (1, 2):
            raise ConfigError(f"--views {views}: 1 (the photo) or 2 (the photo and its mirror image, averaged)")
        self.views = views
        if rule not in RULES:
            raise ConfigError(f"rule {rule!r}: {' or '.join(RULES)}")
        self.rule = rule
        if not models:
            raise CheckpointError("no model to run: give a checkpoint, or use the default models")
        self.annotators = [m for m in models if isinstance(m, Annotator)]
        captioners = [m for m in models if isinstance(m, Captioner)]
        if len(captioners) > 1:
            raise CheckpointError(f"{captioners[1].path}: a second captioner; one caption per image is made")
        self.captioner = captioners[0] if captioners else None
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise CheckpointError(f"two models are both called {next(n for n in names if names.count(n) > 1)!r}")
        self.models = list(models)
        self.backbone = self.models[0].backbone
        # JPEGs much larger than this decode at a reduced DCT scale (`draft`), never below it: the
        # same size in predict, index, serve and the API, so a photo gets the same tags from each
        self.decode_size = max(m.backbone.input_size for m in self.models)
        self._grounder: CaptionGrounder | None = None

    @cached_property
    def shown_rule(self) -> ShownRule:
        """The shown rule's threshold, cap and last calibration, read once per model set."""
        return ShownRule.load()

    @property
    def grounding(self) -> Grounding:
        """How captions are held to the taggers' evidence (`inference.grounding`)."""
        return bundled_grounding()

    def grounds(self, threshold: float | None = None, top_k: int | None = None) -> bool:
        """Whether captions are grounded: there is a captioner, the shown rule applies (its calibrated
        confidences are the evidence) and the bundled grounding is on."""
        return self.captioner is not None and self.shows(threshold, top_k) and self.grounding.active

    def _ground(self, outputs: dict) -> tuple[CaptionGrounder, list[np.ndarray], np.ndarray | None]:
        """The grounder, the taggers' confidences and the captioner's word bias for one batch."""
        models, confidences = tagger_confidences([(m.name, m.calibration, outputs[id(m)]["scores"])
                                                  for m in self.annotators])
        if self._grounder is None:  # its word table is worked out once per model set
            self._grounder = CaptionGrounder(self.captioner.words, models, self.grounding)
        return self._grounder, confidences, self._grounder.word_bias(confidences)

    def shows(self, threshold: float | None = None, top_k: int | None = None) -> bool:
        """Whether tags follow the shown rule: every annotator is calibrated for it (the bundled ones
        are) and no threshold or top-k of a person's replaces it; otherwise each model's own rule."""
        return (self.rule == "shown" and threshold is None and top_k is None and bool(self.annotators)
                and all(m.calibration is not None for m in self.annotators))

    @classmethod
    def load(cls, sources: Sequence[str | Path], engine: str = "auto", weights: str | None = None,
             device: str | None = "cpu", views: int = 2, rule: str = "shown") -> "ModelSet":
        return cls([load_model(s, engine=engine, weights=weights, device=device) for s in sources], views=views,
                   rule=rule)

    def describe(self) -> dict:
        return {m.name: m.describe() for m in self.models}

    def annotator_scores(self, images: Sequence) -> dict[str, np.ndarray]:
        """Each annotator's raw scores [N, labels] for RGB PIL images (what the rules start from)."""
        encoded = encode(self.backbone, images, self.views)
        return {m.name: predict_outputs(m.decoder, m.pick(*encoded))["scores"] for m in self.annotators
                if m.backbone is self.backbone}

    def run(self, images: Sequence, explain: bool = False, attention: bool = False, threshold: float | None = None,
            top_k: int | None = None, beam_width: int | None = None, tags: bool = True,
            captions: bool = True, candidates: int = 8) -> list[dict]:
        """Per RGB PIL image (or row of a preprocessed batch, for models sharing one backbone): {"labels", "top_scores", "decision"} from the annotators (with `tags`),
        "caption" from the captioner (with `captions`), "steps" with `explain`, "attention" (maps
        [words + 1, cells]) with `attention`. Under the shown rule "top_scores" holds the `candidates`
        most confident concepts, shown or not; and where captions are grounded (`grounds`), each result
        has "caption_objects" (what the caption names, with the taggers' evidence for each), and a caption
        naming what the taggers do not see is left empty with the reason in "caption_withheld"."""
        results: list[dict] = [{} for _ in range(len(images))]
        if not len(images):
            return results
        encoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # backbone -> (pooled, grid) of this batch

        def features(model: LoadedModel) -> np.ndarray:
            if id(model.backbone) not in encoded:
                encoded[id(model.backbone)] = encode(model.backbone, images, self.views)
            return model.pick(*encoded[id(model.backbone)])

        grounded = captions and self.grounds(threshold, top_k)
        outputs = {id(m): predict_outputs(m.decoder, features(m))
                   for m in (self.annotators if tags or grounded else [])}
        shown = tags and bool(outputs) and self.shows(threshold, top_k)
        if shown:
            rule = self.shown_rule
            merged = merge([(m.name, m.calibration, outputs[id(m)]["scores"]) for m in self.annotators], rule,
                           candidates)
            for r, (chosen, best) in zip(results, merged):
                r.update(labels=chosen, top_scores=best, decision=rule.name())
        for model in self.annotators if tags else []:
            if shown:
                if explain:
                    for r, out in zip(results, model.annotate_outputs(outputs[id(model)], explain)):
                        r.setdefault("steps", []).extend(out.get("steps", []))
                continue
            for r, out in zip(results, model.annotate_outputs(outputs[id(model)], explain, threshold, top_k)):
                if len(self.annotators) > 1:
                    out["decision"] = f"{model.name}: {out['decision']}"
                if not r:
                    r.update(out)
                    continue
                r["labels"] += out["labels"]
                r["top_scores"] += out["top_scores"]
                r["decision"] += f"; {out['decision']}"
                r.setdefault("steps", []).extend(out.get("steps", []))
        if self.captioner and captions:
            grounder, confidences, bias = self._ground(outputs) if grounded else (None, None, None)
            caps = self.captioner.caption_features(features(self.captioner), beam_width, attention, bias,
                                                   grounder.once if bias is not None else None)
            for n, (r, cap) in enumerate(zip(results, caps)):
                if grounder is not None:
                    cap["caption_objects"] = grounder.objects(cap["caption"], [c[n:n + 1] for c in confidences])
                    why = grounder.withheld(cap["caption_objects"])
                    if why:
                        cap.update(caption="", caption_withheld=why, **({"attention": []} if attention else {}))
                r.update(cap)
        return results
