"""The annotation pipeline shared by `fit`, `evaluate`, `bench annotate` and `demo`:
dataset -> cached features -> decoder training -> decision rules -> metrics -> checkpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tagcap.decision import apply_rule, make_rules, rule_name
from tagcap.metrics.annotation import annotation_metrics
from tagcap.decoders.base import Decoder, create_decoder, decoder_class
from tagcap.train.checkpoint import save_checkpoint
from tagcap.train.loop import TrainConfig, refit_options, train_on_features, with_refit
from tagcap.inference.outputs import predict_outputs
from tagcap.features.prepare import PreparedDataset, prepare  # noqa: F401  (callers import them from here too)


def build_decoder(prep: "PreparedDataset", recipe: dict, feature_dim: int) -> Decoder:
    """The recipe's decoder, given what only the data knows: label frequencies (for label orders),
    the longest label list (for decoding length) and, if asked, GloVe label vectors."""
    longest = max((len(r.labels) for r in prep.dataset.splits["train"]), default=1)
    kwargs = {**decoder_class(recipe["method"]).data_kwargs(prep.vocab.counts.tolist(), longest), **recipe["decoder"]}
    decoder = create_decoder(recipe["method"], len(prep.vocab), feature_dim, **kwargs)
    if recipe.get("glove"):
        path = Path(recipe["glove"])
        path = path if path.is_absolute() else prep.dataset.root / path
        decoder.load_glove(path, prep.vocab.labels)
    return decoder


def train_annotator(prep: PreparedDataset, recipe: dict, x, y, val_x, val_y, seed: int = 0, progress: bool = True,
                    resume_dir: str | Path | None = None, **train_overrides) -> tuple[Decoder, dict]:
    """A fresh decoder of the recipe, seeded, trained on (x, y) with the recipe's training options
    (and `train_overrides`); no validation split (`val_x=None`) trains every epoch and keeps the last."""
    torch.manual_seed(seed)
    decoder = build_decoder(prep, recipe, x.shape[-1])
    config = TrainConfig.from_dict({**recipe["train"], **train_overrides, "seed": seed})
    history = train_on_features(decoder, x, y, val_x, val_y, config, progress=progress, resume_dir=resume_dir)
    return decoder, history


def _refit_annotator(prep: PreparedDataset, recipe: dict, history: dict, seed: int = 0,
                    progress: bool = True) -> tuple[Decoder, dict]:
    """The recipe trained again from scratch on train + validation for the epoch count validation chose,
    keeping the last epoch (the usual refit after model selection: on Corel-5k most labels have fewer
    than 20 training images, so a tenth more of them counts). Decision rules must be fitted before, on
    the first model's validation scores: the refit model has seen those images."""
    x, y = prep.split("train+val", decoder_class(recipe["method"]).feature_kind)
    decoder, refit = train_annotator(prep, recipe, x, y, None, None, seed, progress, **refit_options(history))
    return decoder, with_refit(history, refit, len(x))


@dataclass
class FittedAnnotator:
    """A recipe trained on train, with its decision rules fitted on the validation split."""
    decoder: Decoder
    rules: list[dict]  # one per decision asked for, fitted before any refit
    val_metrics: list[dict]  # each rule's validation row, scored with the model before any refit
    history: dict


def fit_annotator(prep: PreparedDataset, recipe: dict, decisions: list[str], seed: int = 0, refit: bool = False,
                  progress: bool = True, resume_dir: str | Path | None = None) -> FittedAnnotator | None:
    """What `fit` and `bench annotate` do with one recipe and seed: train on train (resumable from
    `resume_dir`), fit each decision rule on the validation scores, and with `refit` train again on
    train + validation (`_refit_annotator`; the rules stay those fitted before it, since the refit model
    has seen the validation images). None in a DDP worker: global rank 0 scores and saves."""
    kind = decoder_class(recipe["method"]).feature_kind
    (train_x, train_y), (val_x, val_y) = prep.split("train", kind), prep.split("val", kind)
    decoder, history = train_annotator(prep, recipe, train_x, train_y, val_x, val_y, seed, progress, resume_dir)
    if history["global_rank"] != 0:
        return None
    val_out = predict_outputs(decoder, val_x)  # the validation features already split for training
    rules = make_rules(decisions, val_out["scores"], val_y)
    val_metrics = [metrics_row(val_out, val_y, rule) for rule in rules]
    if refit:
        decoder, history = _refit_annotator(prep, recipe, history, seed=seed, progress=progress)
    return FittedAnnotator(decoder, rules, val_metrics, history)


def score_split(decoder: Decoder, prep: PreparedDataset, split: str) -> tuple[dict, np.ndarray, float]:
    """Decoder outputs (scores, and emitted labels / steps where given), targets, and decoder
    milliseconds per image on cached features (views combined)."""
    x, y = prep.split(split, decoder.feature_kind)
    t0 = time.perf_counter()
    outputs = predict_outputs(decoder, x)
    ms = (time.perf_counter() - t0) * 1000 / max(len(x), 1)
    return outputs, y, ms


def metrics_row(outputs: dict, targets: np.ndarray, rule: dict) -> dict:
    pred = apply_rule(outputs["scores"], rule, outputs.get("emitted"))
    return {"decision": rule_name(rule), **annotation_metrics(pred, targets, outputs["scores"])}


def checkpoint_meta(prep: PreparedDataset, recipe: dict, rule: dict, history: dict, metrics: dict, seed: int) -> dict:
    return {
        "task": "annotation",
        "recipe": recipe,
        "backbone": prep.backbone,
        "vocabulary": prep.vocab.to_dict(),
        "decision": rule,
        "training": history,  # the validation curve included: `report` draws it
        "dataset": {"name": prep.dataset.name, "format": prep.dataset.format, "root": str(prep.dataset.root)},
        "metrics": metrics,
        "seed": seed,
    }


def save_model(folder: Path, decoder: Decoder, prep: PreparedDataset, recipe: dict, rule: dict, history: dict,
               metrics: dict, seed: int) -> Path:
    return save_checkpoint(folder, decoder, checkpoint_meta(prep, recipe, rule, history, metrics, seed))
