"""The captioning pipeline of `fit` and `bench caption`: cached grid features -> word vocabulary ->
Show-Attend-Tell training (epochs chosen by BLEU-4 of decoded validation captions) -> (a refit on
train + validation) -> checkpoint. The annotation pipeline (`pipeline.py`) has the same shape.
Decoding lives in `inference.outputs`, the metrics in `metrics.captioning`, the bench in `bench.caption`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tagcap.data.captions import WordVocabulary, references
from tagcap.data.records import Record
from tagcap.errors import ConfigError
from tagcap.metrics.captioning import bleu4_quick
from tagcap.decoders.base import Decoder, decoder_class
from tagcap.features.prepare import PreparedDataset
from tagcap.train.checkpoint import save_checkpoint
from tagcap.train.loop import RandomViewDataset, TrainConfig, refit_options, train_decoder, with_refit
from tagcap.inference.outputs import caption_grid


def caption_targets(records: list[Record], words: WordVocabulary) -> np.ndarray:
    """[N, K, max_len + 1] word ids, K = the most captions any image has; missing captions are <pad> rows."""
    k = max(len(r.captions) for r in records)
    out = np.zeros((len(records), k, words.max_len + 1), dtype=np.int64)
    for i, r in enumerate(records):
        out[i, : len(r.captions)] = words.encode_batch(list(r.captions))
    return out


@dataclass
class CaptionSplit:
    """One split's records and their cached grid features [N, V, cells, D], read once and shared by
    training, validation and scoring."""
    records: list[Record]
    grid: np.ndarray

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.records]

    def bleu4(self, captions: list[str]) -> float:
        """BLEU-4 (tagcap tokenization, `bleu4_quick`) of one caption per record against its references."""
        return bleu4_quick(dict(zip(self.keys, captions)), references(self.records))


def caption_split(prep: PreparedDataset, split: str) -> CaptionSplit:
    """A split (`train`, `val`, `test`, or `train+val`) with its grid features."""
    records = [r for name in split.split("+") for r in prep.dataset.splits[name]]
    return CaptionSplit(records, prep.cache.load([r.key for r in records], "grid"))


def build_words(prep: PreparedDataset, recipe: dict) -> WordVocabulary:
    opts = recipe.get("words", {})
    captions = [c for r in prep.dataset.splits["train"] for c in r.captions]
    if not captions:
        raise ConfigError(f"{prep.dataset.root}: the training split has no captions")
    return WordVocabulary.from_captions(captions, min_count=opts.get("min_count", 5), max_len=opts.get("max_len", 20))


def _new_captioner(recipe: dict, words: WordVocabulary, feature_dim: int, seed: int) -> Decoder:
    torch.manual_seed(seed)
    kwargs = {"max_len": words.max_len, **recipe["decoder"]}
    return decoder_class(recipe["method"])(num_labels=len(words), feature_dim=feature_dim, **kwargs)


def train_captioner(recipe: dict, words: WordVocabulary, train: CaptionSplit, val: CaptionSplit, seed: int = 0,
                    progress: bool = True, resume_dir: str | Path | None = None) -> tuple[Decoder, dict]:
    """Train the recipe's captioner on `train`; epochs and learning-rate drops follow validation BLEU-4
    of greedy-decoded captions of `val` (not teacher-forced losses). Returns (decoder, history)."""
    if getattr(decoder_class(recipe["method"]), "task", "annotation") != "caption":
        raise ConfigError(f"recipe {recipe['name']!r} is not a captioning recipe")
    decoder = _new_captioner(recipe, words, train.grid.shape[-1], seed)
    config = TrainConfig.from_dict({**recipe["train"], "seed": seed})

    def validate() -> float:
        return val.bleu4(caption_grid(decoder, val.grid, words, **decoder.validation_kwargs())[0])

    # one view per image, all its captions
    dataset = RandomViewDataset(train.grid, caption_targets(train.records, words))
    history = train_decoder(decoder, dataset, validate, "val_BLEU4", config, progress, resume_dir=resume_dir)
    history["words"] = len(words)
    return decoder, history


def _refit_captioner(recipe: dict, words: WordVocabulary, train_val: CaptionSplit, history: dict, seed: int = 0,
                    progress: bool = True) -> tuple[Decoder, dict]:
    """The captioner trained again from scratch on train + validation (`train_val`) for the epoch count
    validation chose, keeping the last epoch: the captioner's form of `pipeline._refit_annotator`. The
    vocabulary stays the first model's (words of the training captions), so both speak the same words.
    The learning rate of each epoch is the first model's (`lr_curve`): the plateau schedule that dropped
    it needs a validation split, which the refit has not."""
    decoder = _new_captioner(recipe, words, train_val.grid.shape[-1], seed)
    config = TrainConfig.from_dict({**recipe["train"], **refit_options(history), "seed": seed})
    dataset = RandomViewDataset(train_val.grid, caption_targets(train_val.records, words))
    refit = train_decoder(decoder, dataset, None, None, config, progress)
    return decoder, with_refit(history, refit, len(train_val.records))


def fit_captioner(prep: PreparedDataset, recipe: dict, seed: int = 0, progress: bool = True,
                  resume_dir: str | Path | None = None,
                  refit: bool = False) -> tuple[Decoder, WordVocabulary, dict, float]:
    """What `fit` does with a captioning recipe: train it (`train_captioner`), then caption the
    validation split at the decoder's own beam width and score BLEU-4 (tagcap tokenization; the
    number `caption_seeds.py` chooses seeds by); with `refit`, train again on train + validation
    (`_refit_captioner`), the BLEU-4 staying the first model's. Returns (decoder, words, history, BLEU-4)."""
    words = build_words(prep, recipe)
    val = caption_split(prep, "val")
    decoder, history = train_captioner(recipe, words, caption_split(prep, "train"), val, seed=seed,
                                       progress=progress, resume_dir=resume_dir)
    bleu = val.bleu4(caption_grid(decoder, val.grid, words)[0])
    if refit:
        decoder, history = _refit_captioner(recipe, words, caption_split(prep, "train+val"), history, seed=seed,
                                           progress=progress)
    return decoder, words, history, bleu


def save_captioner(folder: Path, decoder: Decoder, words: WordVocabulary, prep: PreparedDataset, recipe: dict,
                   history: dict, metrics: dict, seed: int) -> Path:
    meta = {
        "task": "caption",
        "recipe": recipe,
        "backbone": prep.backbone,
        "words": words.to_dict(),
        "training": history,  # the learning curves included: `report` draws them
        "dataset": {"name": prep.dataset.name, "format": prep.dataset.format, "root": str(prep.dataset.root)},
        "metrics": metrics,
        "seed": seed,
    }
    return save_checkpoint(folder, decoder, meta)
