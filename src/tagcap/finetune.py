"""Fine-tuning the backbone together with any decoder.

Two ways, one model (`TrunkWithDecoder`: part or all of the backbone, then the decoder) and one
training loop (`train.loop.train_decoder`):

- **partial** (the CPU path): the first blocks stay frozen; their output for every image and
  its horizontal flip is computed once and kept in the feature cache (`ActivationExtractor`),
  and training runs only the later blocks and the decoder on it. On Corel-5k at 260 px, cached
  `blocks.5` activations make an epoch about a tenth of the full forward-backward pass.
- **end-to-end** (`--finetune`, meant for GPUs): decoded images with random resized crops and
  flips go through the whole backbone (`ImageSet`, `ForwardFeatures`).

Either way the checkpoint carries the tuned backbone as `backbone.safetensors` (timm's names,
no classifier), so `predict`, `serve` and `evaluate` run it as they run any backbone weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tagcap.errors import TagcapError
from tagcap.features.backbone import BackboneSpec, as_views, build_timm_model, input_config, with_flips
from tagcap.features.images import load_image, preprocess
from tagcap.decoders.base import Decoder
from tagcap.inference.outputs import combine_views, module_device

if TYPE_CHECKING:
    from tagcap.pipeline import PreparedDataset

BACKBONE_FILE = "backbone.safetensors"


# -- splitting a backbone ------------------------------------------------------------------------
def split_backbone(model: nn.Module, from_block: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(frozen prefix, trainable tail) of a timm EfficientNet-style model (conv_stem, bn1, blocks,
    conv_head, bn2): the tail starts at stage `from_block`. Checked against `forward_features`."""
    parts = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
    if not all(hasattr(model, p) for p in parts):
        raise TagcapError(f"partial fine-tuning splits EfficientNet-style timm models ({', '.join(parts)}); "
                          f"{type(model).__name__} is not one. Use end-to-end fine-tuning (--finetune) instead.")
    stages = len(model.blocks)
    if not 1 <= from_block < stages:
        raise TagcapError(f"--partial-finetune: choose a block from 1 to {stages - 1} (the model has {stages} stages)")
    prefix = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:from_block])
    tail = nn.Sequential(*model.blocks[from_block:], model.conv_head, model.bn2)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        if not torch.allclose(tail(prefix(x)), model.forward_features(x), atol=1e-4):
            raise TagcapError(f"{type(model).__name__}: prefix + tail do not reproduce forward_features; "
                              "partial fine-tuning cannot split this model")
    model.train(was_training)
    return prefix, tail


class ActivationExtractor:
    """The frozen prefix of a backbone, shaped for `FeatureCache.extract`: per image and view, the
    activations entering block `from_block`, [C, H, W] float16 (the tail's BatchNorm absorbs the rounding)."""

    engine = "channels_last"

    def __init__(self, spec: BackboneSpec, from_block: int, built: tuple[nn.Module, str] | None = None):
        """`built`: the (model, weights identity) `build_timm_model(spec)` gave, to reuse rather than load again."""
        self.spec = spec
        self.from_block = from_block
        self.layer = f"blocks.{from_block}"
        model, self.weights_id = built or build_timm_model(spec)
        self.input_size, self.mean, self.std = input_config(model, spec)
        prefix, _ = split_backbone(model, from_block)
        self.prefix = prefix.eval().to(memory_format=torch.channels_last)
        with torch.inference_mode():
            self.shape = tuple(self.prefix(torch.zeros(1, 3, self.input_size, self.input_size)).shape[1:])

    def cache_outputs(self, grid: bool = True) -> dict:
        return {"activations": ((2, *self.shape), np.float16)}

    def cache_arrays(self, batch: np.ndarray, grid: bool = True) -> dict:
        x = torch.from_numpy(np.ascontiguousarray(with_flips(batch), np.float32))
        with torch.inference_mode():
            act = self.prefix(x.contiguous(memory_format=torch.channels_last)).float().numpy()
        return {"activations": as_views(act, len(batch)).astype(np.float16)}

    def cache_facts(self) -> dict:
        return {"activation_shape": list(self.shape)}


class ForwardFeatures(nn.Module):
    """A whole timm model as a trunk: images -> its last feature map."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


# -- the model trained --------------------------------------------------------------------------
class TrunkWithDecoder(nn.Module):
    """A trainable trunk (the backbone's tail, or all of it) followed by a decoder. It offers what the
    training loop and `predict_outputs` ask of a decoder; `predict` takes both views [B, V, ...] and
    combines them after the trunk, as the frozen pipeline combines cached features."""

    combines_views = True

    def __init__(self, trunk: nn.Module, decoder: Decoder, crop: int = 0, freeze_bn: bool = False):
        super().__init__()
        self.trunk = trunk
        self.decoder = decoder
        self.crop = crop  # training only: cut this many cells off each spatial axis at a random offset
        self.freeze_bn = freeze_bn  # keep the pretrained BatchNorm statistics (their scale and shift still train)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @property
    def feature_kind(self) -> str:
        return self.decoder.feature_kind

    @property
    def num_labels(self) -> int:
        return self.decoder.num_labels

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.trunk(x)
        if self.decoder.feature_kind == "pooled":
            return fmap.mean(dim=(2, 3))
        return fmap.flatten(2).transpose(1, 2)

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.training and self.crop:
            # cached activations cannot be re-cropped in pixels; a random window of the map is the
            # cheap stand-in for the random crops of image-level training
            dy, dx = (int(v) for v in torch.randint(self.crop + 1, (2,)))
            h, w = x.shape[-2] - self.crop, x.shape[-1] - self.crop
            x = x[..., dy:dy + h, dx:dx + w]
        return self.decoder.loss(self._features(x), targets)

    @torch.no_grad()
    def frozen_features(self, inputs, batch_size: int = 64) -> np.ndarray:
        """The trunk's features for every row of `inputs` [N, V, ...] and view, as it stands (eval mode):
        pooled [N, V, D] or grid [N, V, HW, D]; what a linear probe trains on."""
        was = self.trunk.training
        self.trunk.eval()
        device = module_device(self)
        parts = []
        for start in range(0, len(inputs), batch_size):
            rows = torch.from_numpy(np.asarray(inputs[start:start + batch_size], dtype=np.float32)).to(device)
            b, v = rows.shape[:2]
            parts.append(self._features(rows.flatten(0, 1)).unflatten(0, (b, v)).cpu().numpy())
        self.trunk.train(was)
        return np.concatenate(parts)

    @torch.no_grad()
    def predict(self, views: torch.Tensor, **kwargs):
        b, v = views.shape[:2]
        feats = self._features(views.flatten(0, 1).float()).unflatten(0, (b, v))
        combined = torch.from_numpy(combine_views(feats.cpu().numpy())).to(feats.device)
        return self.decoder.predict(combined, **kwargs)

    def validation_kwargs(self) -> dict:
        return self.decoder.validation_kwargs()

    def param_groups(self, lr: float, backbone_lr: float | None) -> list[dict]:
        """Separate learning rates: the pretrained trunk moves slower than the new decoder."""
        return [{"params": [p for p in self.trunk.parameters() if p.requires_grad],
                 "lr": lr if backbone_lr is None else backbone_lr},
                {"params": list(self.decoder.parameters()), "lr": lr}]


# -- end-to-end data ------------------------------------------------------------------------------
class ImageSet(Dataset):
    """Decoded images for end-to-end training: random resized crop (scale 0.5-1) and horizontal flip,
    as in the seed repositories, then the backbone's normalisation."""

    def __init__(self, records: Sequence, targets: np.ndarray, size: int, mean, std, augment: bool = True):
        self.records, self.targets = list(records), np.asarray(targets, np.float32)
        self.size, self.mean, self.std, self.augment = size, mean, std, augment

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        from torchvision.transforms import v2

        img = load_image(self.records[i].image)
        if self.augment:
            img = v2.RandomResizedCrop(self.size, scale=(0.5, 1.0), antialias=True)(img)
            if torch.rand(()) < 0.5:
                img = v2.functional.horizontal_flip(img)
        x = preprocess(img, self.size, self.mean, self.std)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self.targets[i])


class ImageViews:
    """Images and their flips, decoded lazily a slice at a time: an array-like [N, 2, 3, S, S] that
    `predict_outputs` reads like cached features (nothing held in memory)."""

    def __init__(self, records: Sequence, size: int, mean, std):
        self.records, self.size, self.mean, self.std = list(records), size, mean, std

    def __len__(self):
        return len(self.records)

    def __getitem__(self, item: slice) -> np.ndarray:
        if not isinstance(item, slice):
            raise TypeError("ImageViews takes slices")
        imgs = np.stack([preprocess(load_image(r.image), self.size, self.mean, self.std)
                         for r in self.records[item]])
        return as_views(with_flips(imgs), len(imgs))


# -- training and saving ------------------------------------------------------------------------
MODES = ("partial", "end-to-end")


@dataclass
class Tuned:
    """A trained TrunkWithDecoder with what saving and scoring it need."""

    net: TrunkWithDecoder
    model: nn.Module          # the timm model whose tail (or whole) `net.trunk` trained
    prep: "PreparedDataset"          # dataset, vocabulary and the cache the training read
    mode: str
    from_block: int | None
    input_size: int
    mean: tuple
    std: tuple
    base_weights: str         # identity of the weights fine-tuning started from
    history: dict

    def split_inputs(self, split: str):
        """What `predict_outputs(self.net, ...)` reads for a split: cached activations, or images."""
        records = self.prep.dataset.splits[split]
        if self.mode == "partial":
            return self.prep.cache.load([r.key for r in records], "activations")
        return ImageViews(records, self.input_size, self.mean, self.std)


def fit_tuned(data, recipe: dict, spec: BackboneSpec, mode: str, from_block: int | None = None, *,
              fmt: str | None = None, cache: str | Path | None = None, cache_root: Path | None = None,
              batch_size: int = 16, seed: int = 0, progress: bool = True,
              resume_dir: str | Path | None = None, config_overrides: dict | None = None,
              probe_epochs: int = 0, probe_lr: float = 1e-3, crop: int = 0, freeze_bn: bool = False) -> Tuned:
    """Fine-tune `spec`'s backbone with the recipe's decoder: `partial` from block `from_block` on cached
    activations, or `end-to-end` on augmented images.

    With `probe_epochs`, the decoder first trains alone on the frozen trunk's features (a linear
    probe, then fine-tuning: Kumar et al. 2022, "Fine-tuning can distort pretrained features"), so
    that the backbone's first updates come from a fitted head rather than a random one."""
    from tagcap.data import read_dataset
    from tagcap.features.backbone import default_cache_root
    from tagcap.features.cache import FeatureCache, default_cache_dir
    from tagcap.pipeline import PreparedDataset, build_decoder
    from tagcap.metrics.annotation import mean_average_precision
    from tagcap.train.loop import TrainConfig, train_on_features, train_decoder
    from tagcap.inference.outputs import predict_outputs

    if mode not in MODES:
        raise TagcapError(f"unknown fine-tuning mode {mode!r}; choose from {MODES}")
    if spec.pool_blocks:
        raise TagcapError("--pool-blocks is for frozen features; fine-tuning trains on the last layer's output")
    dataset = read_dataset(data, fmt)  # the validation split `tagcap fit` carves (seed 0)
    vocab = dataset.vocabulary()
    config = TrainConfig.from_dict({**recipe["train"], **(config_overrides or {}), "seed": seed})
    torch.manual_seed(seed)
    if mode == "partial" and from_block is None:
        raise TagcapError("partial fine-tuning needs the block it starts from (--partial-finetune BLOCK)")
    model, weights_id = build_timm_model(spec)
    if mode == "partial":
        extractor = ActivationExtractor(spec, from_block, built=(model, weights_id))  # its prefix stays frozen
        _, trunk = split_backbone(model, from_block)
        root = Path(cache_root or default_cache_root())
        folder = Path(cache) if cache else Path(f"{default_cache_dir(dataset, spec, root)}-{extractor.layer}")
        fc = FeatureCache(folder)
        stats = fc.extract(extractor, dataset.all_records(), batch_size=batch_size, progress=progress)
    else:
        trunk = ForwardFeatures(model)
        fc, stats = None, {}
    size, mean, std = input_config(model, spec)
    facts = {"name": spec.name, "weights": weights_id, "input_size": size, "spec": spec.to_dict()}
    prep = PreparedDataset(dataset, vocab, fc, facts, stats)
    with torch.no_grad():
        feature_dim = int(trunk.eval()(torch.zeros(1, 3, 64, 64) if mode == "end-to-end" else
                                       torch.zeros(1, *extractor.shape)).shape[1])
    net = TrunkWithDecoder(trunk, build_decoder(prep, recipe, feature_dim), crop=crop if mode == "partial" else 0,
                   freeze_bn=freeze_bn)
    tuned = Tuned(net, model, prep, mode, from_block, size, mean, std, weights_id, {})
    train_y = vocab.encode(dataset.splits["train"]).astype(np.float32)
    val_inputs, val_y = tuned.split_inputs("val"), vocab.encode(dataset.splits["val"])
    train_x = tuned.split_inputs("train")
    probe = None
    if probe_epochs and not (resume_dir and (Path(resume_dir) / "last.ckpt").is_file()):
        probe_config = TrainConfig.from_dict({**recipe["train"], "epochs": probe_epochs, "lr": probe_lr, "seed": seed,
                                              "backbone_lr": None, "patience": 8, "lr_decay": 1.0})
        # the probe's features come from one pass of the frozen trunk: on the GPU when training goes there
        on_gpu = config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        net.to("cuda" if on_gpu else "cpu")
        probe_x, probe_val = net.frozen_features(train_x), net.frozen_features(val_inputs)
        net.cpu()
        probe = train_on_features(net.decoder, probe_x, train_y, probe_val, val_y, probe_config,
                                  progress=progress)
    net.train()
    if mode == "partial":
        tuned.history = train_on_features(net, train_x, train_y, val_inputs, val_y, config, progress=progress,
                                          resume_dir=resume_dir)
    else:
        images = ImageSet(dataset.splits["train"], train_y, size, mean, std)

        def validate() -> float:
            scores = predict_outputs(net, val_inputs, batch_size=32, **net.validation_kwargs())["scores"]
            return mean_average_precision(scores, val_y)

        tuned.history = train_decoder(net, images, validate, "val_mAP", config, progress, resume_dir=resume_dir)
    if probe is not None:
        tuned.history["probe"] = {k: v for k, v in probe.items() if k != "config"}
    model.eval()
    return tuned


def save_tuned(folder: str | Path, tuned: Tuned, recipe: dict, rule: dict, metrics: dict, seed: int) -> Path:
    """A checkpoint like any other, plus the tuned backbone (backbone.safetensors) that its config names."""
    import hashlib

    from safetensors.torch import save

    from tagcap.pipeline import checkpoint_meta
    from tagcap.train.checkpoint import cpu_state_dict, save_checkpoint

    blob = save(cpu_state_dict(tuned.model))  # no classifier: `build_timm_model` reads it back as such
    facts = {"name": tuned.prep.backbone["name"], "weights": f"sha256:{hashlib.sha256(blob).hexdigest()}",
             "input_size": tuned.input_size,
             "spec": {"name": tuned.prep.backbone["name"], "weights": BACKBONE_FILE, "input_size": tuned.input_size},
             "tuned": {"mode": tuned.mode, "from_block": tuned.from_block, "base_weights": tuned.base_weights}}
    meta = checkpoint_meta(tuned.prep, recipe, rule, tuned.history, metrics, seed)
    meta["backbone"] = facts
    return save_checkpoint(folder, tuned.net.decoder, meta, extra_files={BACKBONE_FILE: blob})
