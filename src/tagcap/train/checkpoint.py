"""Writing checkpoints: a folder with model.safetensors and config.json, swapped in whole. Reading them
(and the checks on what is read) is in `tagcap.inference.checkpoint`, which tagging uses without training."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from tagcap import atomic
from tagcap.provenance import versions
from tagcap.hashing import file_sha256
from tagcap.inference.checkpoint import CONFIG, FORMAT, WEIGHTS
from tagcap.decoders.base import Decoder


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's weights as safetensors stores them: detached, on the CPU, contiguous."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


TRAINING_LOG = "training-log.csv"  # Lightning's CSVLogger output of the run that made the weights


def save_checkpoint(folder: str | Path, decoder: Decoder, meta: dict, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write the checkpoint next to its final place, then swap it in: never half a checkpoint, and, when
    one is replaced, never a moment without a whole one at the path (see `atomic.swap_in`). `extra_files`
    (name -> bytes) go in with it, e.g. a fine-tuned backbone. config.json records every file's SHA-256."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(folder)
    extra_files = dict(extra_files or {})
    training = meta.get("training")
    if isinstance(training, dict) and "log" in training:  # the training log travels with the model it made
        log = training["log"]
        meta = {**meta, "training": {k: v for k, v in training.items() if k != "log"}}
        if log and Path(log).is_file():
            extra_files[TRAINING_LOG] = Path(log).read_bytes()
    if isinstance(meta.get("recipe"), dict) and "recipe.yaml" not in extra_files:
        import yaml  # the resolved recipe, readable beside the weights (config.json holds the same)

        extra_files["recipe.yaml"] = yaml.safe_dump(meta["recipe"], sort_keys=False).encode()
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        # the weights serialized in memory and written by Python, so that a full disk is an OSError
        # (safetensors' own file writer raises an error type of its own); the same bytes as save_file
        for name, blob in {WEIGHTS: save(cpu_state_dict(decoder)), **extra_files}.items():
            (tmp / name).write_bytes(blob)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        config = {"format": FORMAT, "decoder": decoder.config(), "versions": versions(), **meta, "files": files}
        atomic.write_json(tmp / CONFIG, config)
    except BaseException as e:  # no half checkpoint left beside the folder
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # named by the checkpoint, not by its temporary folder
            raise OSError(e.errno, e.strerror, str(folder)) from e
        raise
    atomic.swap_in(tmp, folder)
    return folder
