"""Decoder outputs from backbone features: the two cached views combined, the decoder run in batches
on the device its weights are on, captions decoded into words. Training (validation after each
epoch) and tagging call the same functions, so a model scores the same in both."""

from __future__ import annotations

import numpy as np
import torch

from tagcap.decoders.base import Decoder
from tagcap.devices import decoding


def combine_views(features: np.ndarray) -> np.ndarray:
    """Test-time flip: average the original and flipped views into one feature per image.

    Pooled [n, V, D]: a plain mean. Grid [n, V, HW, D]: the flipped view's cells are flipped back
    first, so that each cell averages the same place of the image.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim == 3:
        return features.mean(1)
    n, v, hw, d = features.shape
    side = int(round(hw ** 0.5))
    views = [features[:, 0]] + [features[:, i].reshape(n, side, side, d)[:, :, ::-1].reshape(n, hw, d)
                                for i in range(1, v)]
    return np.mean(views, axis=0)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's parameters live (the CPU for one without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


@torch.no_grad()
def predict_outputs(decoder: Decoder, features: np.ndarray, batch_size: int = 128, **predict_kwargs) -> dict[str, np.ndarray]:
    """Run `decoder.predict` over cached features [N, V, ...] (views combined): scores [N, C], and where
    the decoder gives them emitted [N, C], step_labels [N, T], step_scores [N, T, C]."""
    decoder.eval()
    device = module_device(decoder)  # a GPU while Lightning trains there, or when tagging on one
    parts: dict[str, list] = {}
    for start in range(0, len(features), batch_size):
        rows = features[start:start + batch_size]
        # a decoder behind a trainable trunk combines the views itself, after the trunk
        chunk = (torch.from_numpy(np.asarray(rows, dtype=np.float32)) if decoder.combines_views
                 else torch.from_numpy(combine_views(rows)))
        out = decoder.predict(chunk.to(device), **predict_kwargs)
        for key in ("scores", "emitted", "step_labels", "step_scores"):
            value = getattr(out, key)
            if value is not None:
                parts.setdefault(key, []).append(value.cpu().numpy())
    if not parts:
        return {"scores": np.zeros((0, decoder.num_labels), np.float32)}
    result = {}
    for key, chunks in parts.items():
        if key in ("step_labels", "step_scores"):  # batches may decode different numbers of steps
            steps = max(c.shape[1] for c in chunks)
            fill = -1 if key == "step_labels" else 0.0
            chunks = [np.concatenate([c, np.full((c.shape[0], steps - c.shape[1], *c.shape[2:]), fill, c.dtype)], 1)
                      for c in chunks]
        result[key] = np.concatenate(chunks)
    return result


@torch.no_grad()
def caption_grid(decoder: Decoder, grid: np.ndarray, words, beam_width: int | None = None,
                 batch_size: int = 100, attention: bool = False, length_norm: bool | None = None,
                 progress=None, precision: str = "float32",
                 word_bias: np.ndarray | None = None, once: np.ndarray | None = None) -> tuple[list[str], list | None]:
    """Captions for cached grids [N, V, HW, D] (views combined, as for annotation) decoded into words by
    `words` (a `WordVocabulary`); with `attention` also each caption's maps [words + 1, HW].
    `precision`: float32, or bfloat16 matrix products (`devices.decoding`). `word_bias` [N, words]:
    added to the log-probabilities of each image's words, `once` [words]: words said at most once
    (`inference.grounding`)."""
    decoder.eval()
    device = module_device(decoder)
    captions, maps = [], [] if attention else None
    for start in range(0, len(grid), batch_size):
        chunk = torch.from_numpy(combine_views(grid[start:start + batch_size])).to(device)
        steer = {}  # only a captioner that takes them is given them
        if word_bias is not None:
            steer["word_bias"] = torch.from_numpy(word_bias[start:start + batch_size]).to(device)
        if once is not None:
            steer["once"] = torch.from_numpy(once).to(device)
        with decoding(precision, device):
            out = decoder.predict(chunk, beam_width=beam_width, attention=attention, length_norm=length_norm, **steer)
        captions += [words.decode(s) for s in out.sequences]
        if attention:
            maps += [m.cpu().numpy() for m in out.attention]
        if progress:
            progress.update(len(chunk))
    return captions, maps
