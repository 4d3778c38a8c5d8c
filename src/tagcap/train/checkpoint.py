"""Checkpoints: a folder with model.safetensors and config.json. Nothing pickled is ever loaded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from tagcap import __version__, atomic
from tagcap.errors import CheckpointError
from tagcap.models import create_decoder
from tagcap.models.base import Decoder

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def versions() -> dict:
    import timm

    return {"tagcap": __version__, "torch": torch.__version__, "timm": timm.__version__}


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's weights as safetensors stores them: detached, on the CPU, contiguous."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(folder: str | Path, decoder: Decoder, meta: dict, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write the checkpoint next to its final place, then swap it in: never half a checkpoint.
    `extra_files` (name -> bytes) go in with it, e.g. a fine-tuned backbone."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(cpu_state_dict(decoder), str(tmp / WEIGHTS))
    for name, blob in (extra_files or {}).items():
        (tmp / name).write_bytes(blob)
    config = {"format": "tagcap-checkpoint/1", "decoder": decoder.config(), "versions": versions(), **meta}
    atomic.write_json(tmp / CONFIG, config)
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: str | Path) -> tuple[Decoder, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (expected {WEIGHTS} and {CONFIG} inside)")
    for name in (WEIGHTS, CONFIG):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}")
    try:
        config = json.loads((folder / CONFIG).read_text())
        spec = config["decoder"]
        decoder = create_decoder(spec["method"], spec["num_labels"], spec["feature_dim"], **spec["hparams"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG}: unreadable checkpoint config ({e})") from None
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{folder / WEIGHTS}: corrupt weights file ({e})") from None
    try:
        decoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not fit the configured decoder ({str(e)[:300]})") from None
    return decoder.eval(), config


def backbone_spec(folder: str | Path, config: dict, weights: str | None = None):
    """The BackboneSpec a checkpoint was trained with; a fine-tuned backbone's weights file is resolved
    inside the checkpoint folder. `weights` overrides (a user's own copy of the base weights)."""
    from tagcap.features.backbone import BackboneSpec

    spec = dict(config["backbone"]["spec"])
    if config["backbone"].get("tuned"):
        spec["weights"] = str(Path(folder) / spec["weights"])
    elif weights:
        spec["weights"] = weights
    return BackboneSpec(**spec)
