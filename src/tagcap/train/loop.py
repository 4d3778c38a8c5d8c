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


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"      # adamw | adam | rmsprop
    patience: int = 8             # epochs without improvement of the validation metric
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
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


@torch.no_grad()
def predict_scores(decoder: Decoder, features: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Label probabilities [N, C], averaged over the cached views (test-time flip)."""
    decoder.eval()
    feats = torch.from_numpy(np.asarray(features, dtype=np.float32))
    out = []
    for start in range(0, len(feats), batch_size):
        chunk = feats[start:start + batch_size]
        views = [decoder.predict(chunk[:, v]).scores for v in range(chunk.shape[1])]
        out.append(torch.stack(views).mean(0))
    return torch.cat(out).numpy() if out else np.zeros((0, decoder.num_labels), np.float32)


def _quiet_lightning():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def fit(decoder: Decoder, train_features: np.ndarray, train_targets: np.ndarray,
        val_features: np.ndarray, val_targets: np.ndarray, config: TrainConfig | None = None,
        progress: bool = True) -> dict:
    """Train `decoder` in place; returns a history with the best epoch and timing."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    config = config or TrainConfig()
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
            value = mean_average_precision(predict_scores(self.decoder, val_features), val_targets)
            self.decoder.train()
            self.curve.append(value)
            if value > self.best:
                self.best, self.best_epoch = value, self.current_epoch
                self.best_state = copy.deepcopy(self.decoder.state_dict())
            self.log("val_mAP", value, prog_bar=True)

        def configure_optimizers(self):
            params = self.decoder.parameters()
            opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}
            return opt[config.optimizer](params, lr=config.lr, weight_decay=config.weight_decay)

    module = Module()
    trainer = L.Trainer(
        max_epochs=config.epochs, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        callbacks=[EarlyStopping("val_mAP", mode="max", patience=config.patience,
                                       check_on_train_epoch_end=True)],
        deterministic=True,
    )
    loader = DataLoader(RandomViewDataset(train_features, train_targets), batch_size=config.batch_size,
                        shuffle=True, drop_last=len(train_features) > config.batch_size)
    t0 = time.perf_counter()
    decoder.train()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - t0
    if module.best_state is not None:
        decoder.load_state_dict(module.best_state)
    decoder.eval()
    return {"best_epoch": module.best_epoch, "best_val_mAP": module.best, "epochs_run": len(module.curve),
            "val_mAP_curve": module.curve, "train_seconds": round(seconds, 2), "config": config.to_dict()}
