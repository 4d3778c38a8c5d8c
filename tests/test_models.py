"""The decoder interface, the CNN head, training on cached-feature arrays, checkpoints."""

import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import annotation_meta
from tagcap.errors import CheckpointError, TagcapError
from tagcap.decoders import create_decoder, registered
from tagcap.train.checkpoint import save_checkpoint
from tagcap.inference.checkpoint import load_checkpoint
from tagcap.inference.outputs import predict_outputs
from tagcap.train.loop import TrainConfig, train_on_features
from tagcap.metrics.annotation import mean_average_precision


def toy_problem(n, rng, dim=16):
    """Labels are thresholded linear functions of the features: a linear head can learn them."""
    x = rng.standard_normal((n, 2, dim)).astype(np.float32)
    x[:, 1] = x[:, 0] + 0.05 * rng.standard_normal((n, dim))  # second 'view' is a near copy
    w = np.random.default_rng(42).standard_normal((dim, 4))
    y = (x[:, 0] @ w > 0.5).astype(np.uint8)
    return x, y


def test_registry_and_interface():
    assert "cnn" in registered()
    dec = create_decoder("cnn", num_labels=5, feature_dim=8, loss="asl")
    out = dec.eval().predict(torch.randn(3, 8))
    assert out.scores.shape == (3, 5) and ((out.scores >= 0) & (out.scores <= 1)).all()
    assert dec.config()["hparams"] == {"loss": "asl", "dropout": 0.3}
    with pytest.raises(TagcapError, match="unknown method"):
        create_decoder("nope", 2, 2)


@pytest.mark.parametrize("loss", ["bce", "focal", "asl", "unsym"])
def test_linear_head_learns_a_separable_problem(loss):
    rng = np.random.default_rng(0)
    (xt, yt), (xv, yv) = toy_problem(400, rng), toy_problem(100, rng)
    dec = create_decoder("cnn", 4, 16, loss=loss)
    before = mean_average_precision(predict_outputs(dec, xv)["scores"], yv)
    hist = train_on_features(dec, xt, yt, xv, yv,
                             TrainConfig(epochs=15, batch_size=32, lr=1e-2, optimizer="adamw", patience=5),
                             progress=False)
    after = mean_average_precision(predict_outputs(dec, xv)["scores"], yv)
    assert after > 0.9 and after > before + 0.1
    assert hist["best_val_mAP"] == pytest.approx(after)  # the best epoch's weights were restored


def test_training_stops_at_its_time_limit_and_keeps_the_best_epoch():
    rng = np.random.default_rng(0)
    (xt, yt), (xv, yv) = toy_problem(4000, rng), toy_problem(100, rng)
    dec = create_decoder("cnn", 4, 16, loss="bce")
    # 0.6 s of training: far fewer than the 500 epochs asked for (an epoch here takes ~0.1 s and more)
    hist = train_on_features(dec, xt, yt, xv, yv,
                             TrainConfig(epochs=500, batch_size=8, patience=500, max_minutes=0.01), progress=False)
    assert 1 <= hist["epochs_run"] < 500
    assert hist["train_seconds"] < 30
    assert hist["best_val_mAP"] == pytest.approx(mean_average_precision(predict_outputs(dec, xv)["scores"], yv))


def test_training_without_validation_runs_every_epoch_and_keeps_the_last():
    """The refit path: no validation split, so neither early stopping (patience 1 would stop a run
    whose metric stalls after two epochs) nor best-epoch selection: all epochs run, the last is kept."""
    from tagcap.errors import ConfigError

    rng = np.random.default_rng(0)
    xt, yt = toy_problem(200, rng)
    torch.manual_seed(0)
    dec = create_decoder("cnn", 4, 16, loss="bce")
    before = mean_average_precision(predict_outputs(dec, xt)["scores"], yt)
    hist = train_on_features(dec, xt, yt, None, None, TrainConfig(epochs=4, batch_size=32, lr=1e-2, patience=1),
                             progress=False)
    assert hist["epochs_run"] == 4 and hist["best_epoch"] == 3
    assert {k for k in hist if k.endswith("_curve")} == {"train_loss_curve", "lr_curve"}  # no validation curve
    assert len(hist["train_loss_curve"]) == len(hist["lr_curve"]) == 4
    assert mean_average_precision(predict_outputs(dec, xt)["scores"], yt) > before + 0.1
    with pytest.raises(ConfigError, match="give the first model's rates as lr_per_epoch"):
        train_on_features(dec, xt, yt, None, None, TrainConfig(epochs=2, lr_decay=0.5), progress=False)


def test_a_refit_replays_the_learning_rates_validation_chose():
    """A first model whose rate dropped on a validation plateau; its refit (no validation) gets the same
    rate epoch by epoch from `lr_per_epoch`, where it would otherwise keep the starting rate throughout."""
    rng = np.random.default_rng(0)
    (xt, yt), (xv, yv) = toy_problem(200, rng), toy_problem(50, rng)
    yv = np.zeros_like(yv)
    yv[:, 0] = 1  # a flat validation metric (every image has the one label): the plateau drops the rate
    dec = create_decoder("cnn", 4, 16, loss="bce")
    config = dict(epochs=5, batch_size=32, lr=1e-2, patience=10, lr_decay=0.5, lr_patience=1)
    first = train_on_features(dec, xt, yt, xv, yv, TrainConfig(**config), progress=False)
    assert first["lr_curve"][0] == 1e-2 and first["lr_curve"][-1] < 1e-2  # it did drop
    refit = train_on_features(create_decoder("cnn", 4, 16, loss="bce"), xt, yt, None, None,
                              TrainConfig(**config, lr_per_epoch=first["lr_curve"]), progress=False)
    assert refit["lr_curve"] == first["lr_curve"]


def test_checkpoint_round_trip_gives_the_same_scores(tmp_path):
    dec = create_decoder("cnn", 4, 16, loss="unsym").eval()
    x = np.random.default_rng(1).standard_normal((5, 2, 16)).astype(np.float32)
    save_checkpoint(tmp_path / "ckpt", dec, {**annotation_meta(4), "note": "x"})
    loaded, config = load_checkpoint(tmp_path / "ckpt")
    assert np.array_equal(predict_outputs(dec, x)["scores"], predict_outputs(loaded, x)["scores"])
    assert config["note"] == "x" and config["decoder"]["hparams"]["loss"] == "unsym"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    assert config["files"]["model.safetensors"] == hashlib.sha256((tmp_path / "ckpt" / "model.safetensors").read_bytes()).hexdigest()


def test_checkpoint_errors(tmp_path):
    dec = create_decoder("cnn", 4, 16)
    folder = save_checkpoint(tmp_path / "ckpt", dec, annotation_meta(4))
    (folder / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_checkpoint(folder)
    folder = save_checkpoint(tmp_path / "ckpt2", dec, annotation_meta(4))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["decoder"]["feature_dim"] = 7
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "missing")


def test_a_damaged_shipped_model_says_to_reinstall(tmp_path, monkeypatch):
    """A model inside the package cut short on disk: the error names the file and the way out, which for
    a shipped model is a reinstall (a copy stands in for the package's folder)."""
    import shutil

    from tagcap.inference import bundled

    shipped = tmp_path / "bundled"
    shutil.copytree(bundled.BUNDLED / "imagenet-classes", shipped / "imagenet-classes")
    weights = shipped / "imagenet-classes" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="SHA-256 differs") as plain:
        load_checkpoint(shipped / "imagenet-classes")
    assert "reinstall" not in str(plain.value)  # a user's own checkpoint: nothing to reinstall
    monkeypatch.setattr(bundled, "BUNDLED", shipped.resolve())
    with pytest.raises(CheckpointError, match=r"model.safetensors: its SHA-256 differs.*pip install --force-reinstall"):
        load_checkpoint(shipped / "imagenet-classes")


def test_predict_outputs_runs_without_gradients_whatever_the_decoder_does():
    """predict_outputs itself turns gradients off: a decoder's predict that forgets to still gives arrays."""
    from types import SimpleNamespace

    from tagcap.inference.outputs import predict_outputs

    class Careless(torch.nn.Module):  # duck-typed: only what predict_outputs asks of a decoder
        num_labels = 3
        combines_views = False

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def predict(self, x):
            scores = torch.sigmoid(self.linear(x))
            return SimpleNamespace(scores=scores, emitted=None, step_labels=None, step_scores=None)

    out = predict_outputs(Careless(), np.ones((5, 2, 4), np.float32))
    assert out["scores"].shape == (5, 3)
