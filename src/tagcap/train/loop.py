"""Train any decoder on cached features with PyTorch Lightning.

Features come as [N, V, ...] (V views: original and flipped image); each training step
draws one view per image at random, a free augmentation. Model selection is early stopping
on a validation metric computed from the *validation split* (never test), and the weights of
the best epoch are kept.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tagcap.metrics.annotation import mean_average_precision
from tagcap.models.base import Decoder
from tagcap.errors import ConfigError


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"      # adamw | adam | rmsprop
    patience: int = 8             # epochs without improvement of the validation metric
    lr_decay: float = 1.0         # multiply the learning rate by this after `lr_patience` epochs without
    lr_patience: int = 2          #   improvement of the validation metric (1.0: constant rate)
    grad_clip: float = 0.0        # clip gradients to this norm (0: no clipping)
    precision: str = "32"         # or "bf16-mixed" (autocast); on this AMX CPU it was no faster for Show-Attend-Tell
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown training options {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class RandomViewDataset(Dataset):
    def __init__(self, features: np.ndarray, targets: np.ndarray):
        self.features = torch.from_numpy(np.asarray(features, dtype=np.float32))
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.float32))

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        v = int(torch.randint(self.features.shape[1], (1,)))
        return self.features[i, v], self.targets[i]


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


@torch.no_grad()
def predict_outputs(decoder: Decoder, features: np.ndarray, batch_size: int = 128, **predict_kwargs) -> dict[str, np.ndarray]:
    """Run `decoder.predict` over cached features [N, V, ...] (views combined): scores [N, C], and where
    the decoder gives them emitted [N, C], step_labels [N, T], step_scores [N, T, C]."""
    decoder.eval()
    parts: dict[str, list] = {}
    for start in range(0, len(features), batch_size):
        chunk = torch.from_numpy(combine_views(features[start:start + batch_size]))
        out = decoder.predict(chunk, **predict_kwargs)
        for key in ("scores", "emitted", "step_labels", "step_scores"):
            value = getattr(out, key)
            if value is not None:
                parts.setdefault(key, []).append(value.numpy())
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


def predict_scores(decoder: Decoder, features: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Label probabilities [N, C] for cached features [N, V, ...]."""
    return predict_outputs(decoder, features, batch_size)["scores"]


def _quiet_lightning():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def fit(decoder: Decoder, train_features: np.ndarray, train_targets: np.ndarray,
        val_features: np.ndarray, val_targets: np.ndarray, config: TrainConfig | None = None,
        progress: bool = True) -> dict:
    """Train an annotation decoder in place, selecting epochs by validation mAP; returns a history with
    the best epoch and timing."""
    config = config or TrainConfig()

    def validate() -> float:
        # greedy decoding is enough to rank epochs, and several times cheaper than beams
        scores = predict_outputs(decoder, val_features, **decoder.validation_kwargs())["scores"]
        return mean_average_precision(scores, val_targets)

    dataset = RandomViewDataset(train_features, train_targets)
    return train_decoder(decoder, dataset, validate, "val_mAP", config, progress)


def train_decoder(decoder: Decoder, dataset: Dataset, validate, metric: str, config: TrainConfig,
                  progress: bool = True) -> dict:
    """The one training loop: Lightning runs the epochs; after each, `validate()` scores the validation
    split (higher is better), drives early stopping and the learning-rate schedule, and the best
    epoch's weights are kept."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    _quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)

    class Module(L.LightningModule):
        """Wraps the decoder; after each epoch scores the validation split and keeps the best weights."""

        def __init__(self):
            super().__init__()
            self.decoder = decoder
            self.best, self.best_epoch, self.best_state, self.curve = -np.inf, -1, None, []

        def training_step(self, batch, _):
            x, y = batch
            loss = self.decoder.loss(x, y)
            self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
            return loss

        def on_train_epoch_end(self):
            value = float(validate())
            self.decoder.train()
            self.curve.append(value)
            if value > self.best:
                self.best, self.best_epoch = value, self.current_epoch
                self.best_state = copy.deepcopy(self.decoder.state_dict())
            if self.plateau is not None:
                self.plateau.step(value)
            self.log(metric, value, prog_bar=True)

        def configure_optimizers(self):
            params = self.decoder.parameters()
            opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}
            optimizer = opt[config.optimizer](params, lr=config.lr, weight_decay=config.weight_decay)
            # stepped by hand after validation, so it always sees this epoch's value
            self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.lr_decay,
                                                                       patience=config.lr_patience)
                            if config.lr_decay < 1.0 else None)
            return optimizer

    module = Module()
    trainer = L.Trainer(
        max_epochs=config.epochs, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        callbacks=[EarlyStopping(metric, mode="max", patience=config.patience, check_on_train_epoch_end=True)],
        gradient_clip_val=config.grad_clip or None, precision=config.precision,
        deterministic=True,
    )
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                        drop_last=len(dataset) > config.batch_size)
    t0 = time.perf_counter()
    decoder.train()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - t0
    if module.best_state is not None:
        decoder.load_state_dict(module.best_state)
    decoder.eval()
    return {"best_epoch": module.best_epoch, f"best_{metric}": module.best, "epochs_run": len(module.curve),
            f"{metric}_curve": module.curve, "train_seconds": round(seconds, 2), "config": config.to_dict()}
