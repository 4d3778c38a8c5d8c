"""Train any decoder on cached features with PyTorch Lightning.

Features come as [N, V, ...] (V views: original and flipped image); each training step
draws one view per image at random, a free augmentation. Model selection is early stopping
on a validation metric computed from the *validation split* (never test), and the weights of
the best epoch are kept.

Distributed runs (Lightning DDP: several CPU processes, GPUs or nodes) see the same global
batches as one process: `GlobalBatchSampler` draws one permutation (and one view per image)
from the seed and hands each rank its share of every batch, so with mean-reduced losses the
averaged gradients are those of the single-process batch.

Resuming (`resume_dir`): `TrainingState` (train/module.py, beside the LightningModule) writes
Lightning's whole state (weights, optimizer, loop counters, early stopping, the best weights so
far, the learning-rate schedule, and the random number generators) to `resume_dir/last.ckpt`
atomically after every epoch and every `save_every_minutes` inside an epoch. The batches of an epoch are a function of (seed, epoch) and
the DataLoader draws from its own generator, so the only global random stream is the decoder's
(dropout, random label orders); restoring it makes a resumed run end with the same weights as
an uninterrupted one (tests/test_resume.py kills a real run with SIGKILL to check it). Not exact:
fine-tuning with DataLoader workers, whose augmentation draws restart from the loader's seed.

Where training starts. A task is trained by its `fit_*`, the three entry points (what `tagcap fit`
runs, and `bench annotate` per seed): `pipeline.fit_annotator` (a recipe trained, its decision rules
fitted on validation, optionally refit on train + validation), `captioning.fit_captioner` (the same
for a captioner) and `finetune.fit_tuned` (the backbone trained too). Their steps are public for code
that splits the data its own way (the benches): `pipeline.train_annotator` and
`captioning.train_captioner` (one recipe on given data), `train_on_features` here (a built decoder on
annotation feature arrays, epochs chosen by validation mAP), and under everything `train_decoder`,
the one Lightning loop every path ends in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tagcap.metrics.annotation import mean_average_precision
from tagcap.inference.outputs import predict_outputs
from tagcap.decoders.base import Decoder
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
    lr_per_epoch: list[float] | None = None  # each epoch's rate, replayed from a first model's `lr_curve` by a
                                  #   refit, which has no validation split to drop the rate on
    grad_clip: float = 0.0        # clip gradients to this norm (0: no clipping)
    precision: str = "32"         # or "bf16-mixed" (autocast); on this AMX CPU it was no faster for Show-Attend-Tell;
                                  #   "16-mixed" for fine-tuning on a GPU
    backbone_lr: float | None = None  # fine-tuning: the backbone's learning rate (None: `lr`)
    accumulate: int = 1           # gradient accumulation: optimizer steps every `accumulate` batches
    accelerator: str = "cpu"      # cpu | gpu | auto (Lightning's names)
    devices: int = 1              # processes per node (CPU) or GPUs per node
    num_nodes: int = 1
    workers: int = 0              # DataLoader worker processes (end-to-end fine-tuning decodes images in them)
    max_minutes: float | None = None  # stop training after this wall time (a batch job's limit); best epoch kept
    save_every_minutes: float = 10.0  # with a resume folder: also save the state inside an epoch this often
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "train") -> "TrainConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"{where}: unknown training option(s) {', '.join(map(repr, unknown))}; the options "
                              f"are {', '.join(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def refit_options(history: dict) -> dict:
    """Training options for a refit after the run `history` describes: the epoch count its validation
    chose, every one of them trained (no early stopping), each at the first model's learning rate."""
    epochs = int(history["best_epoch"]) + 1
    return {"epochs": epochs, "patience": epochs + 1, "lr_per_epoch": history["lr_curve"][:epochs]}


def with_refit(history: dict, refit: dict, images: int) -> dict:
    """The first model's history, with the refit's (`refit`, trained on `images` images) under "refit"."""
    return {**history, "refit": {"epochs": refit["epochs_run"], "images": int(images),
                                 "train_seconds": refit["train_seconds"],
                                 "note": "weights refit on train + val; the validation metrics are the first model's"}}


class RandomViewDataset(Dataset):
    """Rows of features [N, V, ...] (a memory map is fine: rows are read as they are asked for). Index
    `i * V + v` is view v of row i; `GlobalBatchSampler` chooses the views."""

    def __init__(self, features, targets: np.ndarray):
        self.features = features
        self.views = int(features.shape[1])
        self.targets = torch.from_numpy(np.asarray(targets))

    def __len__(self):
        return len(self.features)

    def fingerprint(self) -> str:
        """A digest of the training data: every target and 64 feature rows spread over the set
        (reading them all would cost as much as an epoch on a large cache)."""
        h = hashlib.sha256(repr((tuple(self.features.shape), tuple(self.targets.shape))).encode())
        h.update(self.targets.numpy().tobytes())
        for i in np.unique(np.linspace(0, len(self.features) - 1, num=min(64, len(self.features)), dtype=int)):
            h.update(np.ascontiguousarray(self.features[i], dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    def __getitem__(self, code):
        i, v = divmod(int(code), self.views)
        return torch.from_numpy(np.asarray(self.features[i, v], dtype=np.float32)), self.targets[i]


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices, the same global sequence for any number of processes: epoch e's
    permutation comes from (seed, e); each global batch of `batch_size` is split into `world` equal
    parts and this rank takes part `rank`. With `views`, each index is coded `i * views + v`
    with a random view v (see RandomViewDataset)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, views: int = 1,
                 drop_last: bool = True):
        if batch_size % world:
            raise ConfigError(f"batch size {batch_size} does not split over {world} processes; "
                              f"choose a multiple of {world}")
        self.n, self.batch_size, self.seed, self.rank, self.world, self.views = n, batch_size, seed, rank, world, views
        self.drop_last = drop_last and n > batch_size
        self.epoch = 0
        self.skip = 0  # batches of the next epoch already trained before a mid-epoch resume

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before each epoch
        self.epoch = epoch

    def _batches(self) -> list[tuple[int, int]]:
        """(start, size) of each global batch; a short last batch is cut to a multiple of `world` so that
        every rank runs the same number of steps (DDP needs that)."""
        full, rest = divmod(self.n, self.batch_size)
        batches = [(b * self.batch_size, self.batch_size) for b in range(full)]
        rest -= rest % self.world
        if rest and not self.drop_last:
            batches.append((full * self.batch_size, rest))
        return batches

    def __len__(self):
        return len(self._batches())

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        view = torch.randint(self.views, (self.n,), generator=g)
        codes = (order * self.views + view[order]).tolist()
        batches, self.skip = self._batches()[self.skip:], 0
        for start, size in batches:
            share = size // self.world
            yield codes[start + self.rank * share:start + (self.rank + 1) * share]


class ResumableLoader(DataLoader):
    """A DataLoader whose place inside an epoch is saved with Lightning's state (Lightning asks any loader
    with `state_dict`/`load_state_dict`): a run resumed from a mid-epoch save skips the batches done."""

    batches_done = 0  # set by the training module after each batch; 0 at an epoch's end

    def state_dict(self) -> dict:
        return {"batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.batches_done = int(state.get("batches_done", 0))
        self.batch_sampler.skip = self.batches_done


def rng_state() -> dict:
    """Every global random generator, in types `torch.load(weights_only=True)` accepts (Lightning loads so)."""
    import random

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    import random

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _quiet_lightning():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")  # we log per epoch only
    # a resumed run: the earlier rows were set aside first and are put back at the end (`_merge_logs`)
    warnings.filterwarnings("ignore", ".*Previous log files in this directory will be deleted.*")


def train_on_features(decoder: Decoder, train_features: np.ndarray, train_targets: np.ndarray,
                      val_features: np.ndarray, val_targets: np.ndarray, config: TrainConfig | None = None,
                      progress: bool = True, resume_dir: str | Path | None = None) -> dict:
    """Train an annotation decoder in place, selecting epochs by validation mAP; returns a history with
    the best epoch and timing.

    Without validation features (`val_features=None`: a refit on train + validation for an epoch count
    chosen before) it trains exactly `config.epochs` epochs and keeps the last."""
    config = config or TrainConfig()

    if val_features is None:
        if config.lr_decay < 1.0 and not config.lr_per_epoch:
            raise ConfigError("training without a validation split cannot drop the learning rate on a plateau "
                              "(lr_decay < 1): give the first model's rates as lr_per_epoch")
        if resume_dir is not None:
            raise ConfigError("training without a validation split does not resume (its epoch count is fixed)")
        validate, metric = None, None  # every epoch trained, the last kept
    else:
        def validate() -> float:
            # greedy decoding is enough to rank epochs, and several times cheaper than beams
            scores = predict_outputs(decoder, val_features, **decoder.validation_kwargs())["scores"]
            return mean_average_precision(scores, val_targets)

        metric = "val_mAP"

    dataset = RandomViewDataset(train_features, np.asarray(train_targets, dtype=np.float32))
    return train_decoder(decoder, dataset, validate, metric, config, progress, resume_dir)


STATE_FILE = "last.ckpt"
RUN_FILE = "run.json"  # beside it: what the saved state is a run of (`run_identity`)
OPERATIONAL = {"max_minutes", "save_every_minutes", "workers", "accelerator", "devices", "num_nodes", "epochs"}
# training options a resume may change: how the run is carried out, not what it computes, and `epochs`,
# so that a finished run can be given more (no learning-rate schedule here depends on the epoch count)
LOG_FILE = "metrics.csv"  # Lightning's CSVLogger, under the training state folder's logs/
EARLIER_LOG = "before-resume.csv"  # beside it: the rows of the runs a resumed one continues


def _readable_state(path: Path) -> str | None:
    """The saved training state to resume from, if there is one that loads. One damaged on disk since
    (it is written atomically, so by a bad sector or a copy cut short) is said, set aside as
    `last.ckpt.damaged` and training starts from the beginning: the same model, later."""
    import os
    import sys

    from tagcap import distributed

    if not path.is_file():
        return None
    try:
        # as Lightning loads it, but mapped: the archive's index is read, not every tensor (Lightning reads them next)
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch's errors for a cut or overwritten file vary
        if distributed.rank_and_world()[0] == 0:
            print(f"{path}: damaged ({str(e).splitlines()[0][:160]}); set aside as {path.name}.damaged, training "
                  f"from the start", file=sys.stderr)
            os.replace(path, path.with_name(path.name + ".damaged"))
        return None
    return str(path)


def run_identity(decoder, dataset, config: TrainConfig) -> dict:
    """What makes a training run this run and no other: the model (its class and constructor
    arguments: the recipe's decoder section, resolved), the training options but the operational
    ones (the recipe's train section and the seed), and a fingerprint of the training data."""
    describe = getattr(decoder, "config", None)
    model = describe() if callable(describe) else {"class": type(decoder).__name__,
                                                    **({"decoder": decoder.decoder.config()}
                                                       if hasattr(decoder, "decoder") else {})}
    fingerprint = getattr(dataset, "fingerprint", None)
    identity = {"model": model, "train": {k: v for k, v in config.to_dict().items() if k not in OPERATIONAL},
                "data": fingerprint() if callable(fingerprint) else {"type": type(dataset).__name__,
                                                                    "rows": len(dataset)}}
    return json.loads(json.dumps(identity, default=str))  # as it reads back from the file


def _check_same_run(folder: Path, identity: dict, has_state: bool) -> None:
    """Refuse to resume a saved state of another run (another recipe, seed, option or data), naming
    what differs; otherwise record this run's identity beside the state it is about to save."""
    from tagcap import atomic, distributed

    path = folder / RUN_FILE
    if has_state:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        if saved != identity:
            differences = _differences(saved, identity) if isinstance(saved, dict) else [
                f"{path} is missing or unreadable, so what run the state belongs to is unknown"]
            raise ConfigError(f"{folder}: holds the saved state of another training run, so this one would not "
                              f"resume it: {'; '.join(differences[:8])}. Run the command as before to resume it, or "
                              f"with --restart (or with {folder} removed) to train from the start")
    if distributed.rank_and_world()[0] == 0:
        atomic.write_text(path, json.dumps(identity, indent=1, sort_keys=True))


def _differences(saved, now, where: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now), key=str):
            out += _differences(saved.get(key, "(none)"), now.get(key, "(none)"), f"{where}.{key}" if where else key)
        return out
    if saved == now:
        return []
    short = lambda v: (s if len(s := json.dumps(v)) <= 60 else s[:57] + "...")  # noqa: E731
    return [f"{where or 'the run'} was {short(saved)}, now {short(now)}"]


def _merge_logs(folder: Path, into: str) -> None:
    """Lightning's CSVLogger starts its file (LOG_FILE) anew in every run, so a resumed run would log
    only the epochs after its resume. A resumed run therefore first merges the rows already logged into
    EARLIER_LOG, and at its end merges them back in front of its own into LOG_FILE: EARLIER_LOG's rows,
    then LOG_FILE's, one row per (epoch, step) (the latest run's where an epoch cut short by the kill
    was trained again), written to `into`; the other file is removed."""
    rows = _log_rows(folder, EARLIER_LOG, LOG_FILE)
    if rows:
        _write_log(folder / into, rows)
    (folder / (LOG_FILE if into == EARLIER_LOG else EARLIER_LOG)).unlink(missing_ok=True)


def _log_rows(folder: Path, *names: str) -> list[dict]:
    import csv

    rows: dict[tuple, dict] = {}
    for name in names:  # a later file's row replaces an earlier one's
        if (folder / name).is_file():
            with open(folder / name, newline="") as f:
                rows.update({(r.get("epoch"), r.get("step")): r for r in csv.DictReader(f)})
    return sorted(rows.values(), key=lambda r: (int(r.get("epoch") or 0), int(r.get("step") or 0)))


def _write_log(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    from tagcap import atomic

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, out.getvalue())


def training_loggers(folder: Path) -> list:
    """Lightning's CSVLogger (logs/metrics.csv: training loss and the validation metric per epoch), and
    TensorBoard's when it is installed (logs/events.*)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(folder, name="", version="")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(folder, name="", version="tensorboard"))
    except ImportError:
        pass
    return loggers


def train_decoder(decoder: Decoder, dataset: Dataset, validate, metric: str | None, config: TrainConfig,
                  progress: bool = True, resume_dir: str | Path | None = None) -> dict:
    """The one training loop: Lightning runs the epochs; after each, `validate()` scores the validation
    split (higher is better), drives early stopping and the learning-rate schedule, and the best
    epoch's weights are kept. `validate=None` (and `metric=None`): no validation and no early stopping;
    all `config.epochs` epochs are trained and the last one's weights kept (a refit).

    `decoder` may also be a `finetune.TrunkWithDecoder` (its `param_groups` give the trunk its own learning rate).
    With `resume_dir`, the whole training state is saved there atomically after every epoch (and every
    `config.save_every_minutes` inside one), and a rerun resumes from it to the same final weights.
    With `devices` or `num_nodes` above one, Lightning runs DDP (its own launcher, or torchrun/SLURM);
    every rank returns, and callers write outputs on global rank 0 only (`history["global_rank"]`)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from tagcap import distributed
    from tagcap.train.module import DecoderModule, TrainingState

    _quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)

    world = config.devices * config.num_nodes
    callbacks = ([] if validate is None else
                 [EarlyStopping(metric, mode="max", patience=config.patience, check_on_train_epoch_end=True)])
    last, loggers = None, False
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        resume_dir.mkdir(parents=True, exist_ok=True)
        callbacks.append(TrainingState(resume_dir, config.save_every_minutes))
        last = _readable_state(resume_dir / STATE_FILE)
        _check_same_run(resume_dir, run_identity(decoder, dataset, config), has_state=last is not None)
        logs, first_rank = resume_dir / "logs", distributed.rank_and_world()[0] == 0
        if first_rank and last is None:  # from the beginning: no earlier rows
            (logs / EARLIER_LOG).unlink(missing_ok=True)
        elif first_rank and (logs / LOG_FILE).is_file():
            _merge_logs(logs, into=EARLIER_LOG)
        loggers = training_loggers(logs)
    module = DecoderModule(decoder, validate, metric, config)
    trainer = L.Trainer(
        max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices,
        num_nodes=config.num_nodes,
        # DDP through a launcher that re-runs the command (the model here is a local class, which
        # ddp_spawn could not pickle); some decoders leave parameters unused on a step
        strategy="ddp_find_unused_parameters_true" if world > 1 else "auto",
        use_distributed_sampler=False,  # GlobalBatchSampler shards the batches itself
        logger=loggers, enable_checkpointing=resume_dir is not None, enable_model_summary=False,
        enable_progress_bar=progress, callbacks=callbacks,
        gradient_clip_val=config.grad_clip or None, precision=config.precision,
        # one process: deterministic algorithms (bit-for-bit reruns on a CPU); "warn" rather than refuse
        # where a GPU kernel has no deterministic variant
        accumulate_grad_batches=config.accumulate, deterministic="warn" if world == 1 else False,
        max_time=timedelta(minutes=config.max_minutes) if config.max_minutes else None,
    )
    sampler = GlobalBatchSampler(len(dataset), config.batch_size, config.seed, trainer.global_rank, trainer.world_size,
                                 views=getattr(dataset, "views", 1), drop_last=len(dataset) > config.batch_size)
    # the loader's own generator (not the global one) seeds its iterators: the global stream is the decoder's alone
    loader = ResumableLoader(dataset, batch_sampler=sampler, num_workers=config.workers,
                             persistent_workers=config.workers > 0,
                             generator=torch.Generator().manual_seed(config.seed))
    module.loader = loader  # its batch counter is what a resumed epoch skips (TrainingState saves it)
    t0 = time.perf_counter()
    decoder.train()
    try:
        trainer.fit(module, loader, ckpt_path=last)
    except SystemExit:
        if trainer.interrupted:  # Lightning turns a Ctrl-C into exit(1), silently: say it was interrupted
            raise KeyboardInterrupt from None
        raise
    seconds = time.perf_counter() - t0
    if resume_dir is not None and trainer.global_rank == 0 and (resume_dir / "logs" / EARLIER_LOG).is_file():
        _merge_logs(resume_dir / "logs", into=LOG_FILE)
    if module.best_state is not None:
        decoder.load_state_dict(module.best_state)
    decoder.eval()
    validated = {f"best_{metric}": module.best} if metric else {}
    curve = {f"{metric}_curve": module.curve} if metric else {}
    return {"best_epoch": module.best_epoch, **validated, "epochs_run": len(module.epoch_seconds),
            **curve, "train_loss_curve": module.loss_curve, "lr_curve": module.lr_curve,
            "train_seconds": round(seconds, 2), "epoch_seconds": module.epoch_seconds,
            "config": config.to_dict(),
            "world_size": trainer.world_size, "global_rank": trainer.global_rank,
            "resumed_from": last,
            "log": str(resume_dir / "logs" / LOG_FILE) if resume_dir and (resume_dir / "logs" / LOG_FILE).is_file()
            else None}
