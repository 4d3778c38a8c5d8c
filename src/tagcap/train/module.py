"""The LightningModule and the resume callback of `train.loop.train_decoder`: module-level classes
(a decoder's training needs no class made per call), in a module of their own so that importing
`train.loop` (its samplers and `TrainConfig`) does not import Lightning."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from tagcap import atomic
from tagcap.train.loop import STATE_FILE, rng_state, set_rng_state


class DecoderModule(L.LightningModule):
    """Wraps the decoder; after each epoch scores the validation split (`validate()`, logged as
    `metric`) and keeps the best weights (with `validate=None`, none: the last epoch's stay). `loader`
    (set before fitting) counts the epoch's batches."""

    def __init__(self, decoder, validate, metric: str, config):
        super().__init__()
        self.decoder, self.validate, self.metric, self.config = decoder, validate, metric, config
        self.loader = None
        self.best, self.best_epoch, self.best_state, self.curve = -np.inf, -1, None, []
        self.plateau, self.epoch_seconds, self.stopped = None, [], False
        self.loss_curve, self.lr_curve = [], []  # per epoch: mean training loss, learning rate
        self._restored_rng, self._loss_sum, self._loss_n = None, 0.0, 0

    def training_step(self, batch, _):
        x, y = batch
        loss = self.decoder.loss(x, y)
        self.log("loss", loss, prog_bar=True, logger=False)  # the bar's; the epoch's mean is logged at its end
        self._loss_sum += float(loss.detach())
        self._loss_n += 1
        return loss

    def on_train_start(self):
        self._epoch_t0 = time.perf_counter()  # a run resumed inside an epoch does not start that epoch again
        if getattr(self, "_plateau_state", None) and self.plateau is not None:
            self.plateau.load_state_dict(self._plateau_state)
        if self.stopped:  # the saved run had already stopped early: train no further epoch
            self.trainer.should_stop = True

    def on_train_epoch_start(self):
        self._epoch_t0 = time.perf_counter()
        rates = self.config.lr_per_epoch
        if rates:  # a refit replaying its first model's rates (every group scaled alike, as the plateau does)
            scale = rates[min(self.current_epoch, len(rates) - 1)] / self.config.lr
            for group, base in zip(self.trainer.optimizers[0].param_groups, self._base_lrs):
                group["lr"] = base * scale

    def on_train_batch_start(self, batch, batch_idx):
        if self._restored_rng is not None:  # first batch after a resume: the generators as they were saved
            set_rng_state(self._restored_rng)
            self._restored_rng = None

    def on_train_epoch_end(self):
        self.loader.batches_done = 0  # before the state is saved (TrainingState runs after this hook)
        self.epoch_seconds.append(round(time.perf_counter() - self._epoch_t0, 3))  # training steps only
        # the whole epoch's mean, a resumed one's batches before the resume included (its sums are saved)
        mean_loss = self._loss_sum / max(self._loss_n, 1)
        if self.trainer.world_size > 1:  # DDP: the ranks' means averaged, every rank taking part (in float64,
            # so the mean is not rounded to float32; on the module's device, as NCCL needs)
            mean_loss = torch.tensor(mean_loss, dtype=torch.float64, device=self.device)
            mean_loss = float(self.trainer.strategy.reduce(mean_loss, reduce_op="mean"))
        self.loss_curve.append(round(mean_loss, 6))
        self.lr_curve.append(float(self.trainer.optimizers[0].param_groups[0]["lr"]))
        self._loss_sum, self._loss_n = 0.0, 0
        if self.validate is None:  # no validation split: every epoch trains on, the last one is kept
            self.best_epoch = self.current_epoch
            self._log_epoch({"train_loss": mean_loss})
            return
        value = float(self.validate())  # every rank scores the whole split with the same weights: same value
        self.decoder.train()
        self.curve.append(value)
        if value >= self.best:  # a tie goes to the later epoch, which has trained longer (a saturated metric)
            self.best, self.best_epoch = value, self.current_epoch
            self.best_state = copy.deepcopy(self.decoder.state_dict())
        if self.plateau is not None:
            self.plateau.step(value)
        self.log(self.metric, value, prog_bar=True, logger=False)  # for early stopping and the bar
        self._log_epoch({"train_loss": mean_loss, self.metric: value})

    def _log_epoch(self, values: dict) -> None:
        """The epoch's row, written to the loggers and flushed here. Lightning would write what `self.log`
        gave only after the epoch-end callbacks, TrainingState's save among them: a kill between that save
        and the write lost the row for good, since the resumed run starts after the saved epoch."""
        for logger in self.loggers:  # rank 0 writes; the loggers ignore the call on the other ranks
            logger.log_metrics({"epoch": self.current_epoch, **values}, step=self.global_step)
            logger.save()

    def configure_optimizers(self):
        config = self.config
        params = self.decoder.param_groups(config.lr, config.backbone_lr)
        opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}
        optimizer = opt[config.optimizer](params, lr=config.lr, weight_decay=config.weight_decay)
        self._base_lrs = [group["lr"] for group in optimizer.param_groups]
        # stepped by hand after validation, so it always sees this epoch's value
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.lr_decay,
                                                                   patience=config.lr_patience)
                        if config.lr_decay < 1.0 else None)
        return optimizer

    # what a resumed run needs besides the weights, the optimizer and the loops, which Lightning keeps
    def on_save_checkpoint(self, checkpoint):
        checkpoint["tagcap"] = {"best": self.best, "best_epoch": self.best_epoch, "best_state": self.best_state,
                                "curve": self.curve, "epoch_seconds": self.epoch_seconds,
                                "loss_curve": self.loss_curve, "lr_curve": self.lr_curve,
                                "loss_sum": self._loss_sum, "loss_n": self._loss_n,
                                "stopped": bool(self.trainer.should_stop), "rng": rng_state(),
                                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("tagcap", {})
        self.best, self.best_epoch = state.get("best", -np.inf), state.get("best_epoch", -1)
        self.best_state, self.curve = state.get("best_state"), list(state.get("curve", []))
        self.epoch_seconds, self.stopped = list(state.get("epoch_seconds", [])), bool(state.get("stopped"))
        self.loss_curve, self.lr_curve = list(state.get("loss_curve", [])), list(state.get("lr_curve", []))
        self._loss_sum, self._loss_n = state.get("loss_sum", 0.0), state.get("loss_n", 0)
        self._plateau_state, self._restored_rng = state.get("plateau"), state.get("rng")


class TrainingState(Checkpoint):
    """Saves the whole state to `resume_dir/last.ckpt` after every epoch (a Checkpoint runs after the
    module's epoch-end hook, so the epoch's validation is in it) and every `save_every_minutes` inside
    an epoch. Written beside the target and renamed over it: a kill at any moment leaves the previous
    state or the new one, never half a file. The epoch's batch count is the module's loader's."""

    def __init__(self, folder: Path, save_every_minutes: float):
        self.path = folder / STATE_FILE
        self.save_every_minutes = save_every_minutes
        self.last_save = time.monotonic()

    def _save(self, trainer) -> None:
        tmp = self.path.with_name(f".{STATE_FILE}.tmp")
        try:
            trainer.save_checkpoint(tmp)  # every rank takes part; rank 0 writes
        except BaseException as e:  # (a full disk) the last whole state stays; the part written goes
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):  # named by the state it was writing, not by its temporary name
                raise OSError(e.errno, e.strerror, str(self.path)) from e
            raise
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
            module = trainer.lightning_module
            # what the state holds, readable without loading it (and what tests wait for)
            atomic.write_json(self.path.with_name("state.json"), {
                "epochs_done": len(module.epoch_seconds), "batches_done": module.loader.batches_done,
                "best_epoch": module.best_epoch})
        trainer.strategy.barrier()
        self.last_save = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.loader.batches_done += 1
        due = time.monotonic() - self.last_save >= self.save_every_minutes * 60
        if trainer.world_size > 1:
            due = trainer.strategy.broadcast(due)  # the ranks agree, or the collective save would hang
        if due and pl_module.loader.batches_done < trainer.num_training_batches:  # the epoch's end saves anyway
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._save(trainer)
