"""Resume that resumes: a real `tagcap fit` / `tagcap bench` process killed with SIGKILL mid-training,
then the same command again, ends with what an uninterrupted run gives."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tagcap.data.synthetic import make_synthetic_dataset
from tagcap.results import read_rows


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("resume-data"), n_train=240, n_test=40, size=48, seed=5)


def _recipe(folder: Path, save_every_minutes: float | None) -> Path:
    """RIA with enough epochs that a kill lands mid-run; patience beyond them, so every epoch runs."""
    from tagcap.recipes import load_recipe

    recipe = load_recipe("ria")
    recipe.pop("source")
    recipe["train"].update(epochs=12, patience=50, batch_size=16)
    recipe["decoder"].update(hidden=128, embed_dim=64)
    if save_every_minutes is not None:
        recipe["train"]["save_every_minutes"] = save_every_minutes
    path = folder / "ria-resume.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _fit_cmd(data: Path, recipe: Path, out: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "tagcap", "fit", "--data", str(data), "--recipe", str(recipe), "--out", str(out),
            "--resume-dir", str(state), "--decision", "sequence", "--quiet"]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _kill_when(cmd: list[str], ready, timeout: float = 300) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds; fail if it finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}")
            if time.monotonic() - t0 > timeout:
                pytest.fail("the run never reached the point to kill it")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _state(state: Path) -> dict:
    try:
        return json.loads((state / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _weights(ckpt: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(ckpt / "model.safetensors"))


@pytest.mark.parametrize("mid_epoch", [False, True], ids=["after-epoch-3", "inside-an-epoch"])
def test_fit_killed_with_sigkill_resumes_to_the_uninterrupted_model(small_csv, tmp_path, mid_epoch):
    recipe = _recipe(tmp_path, 0.0 if mid_epoch else None)  # 0: a save after every batch
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(_fit_cmd(small_csv, recipe, straight, tmp_path / "straight-state"))

    state = tmp_path / "state"
    cmd = _fit_cmd(small_csv, recipe, resumed, state)
    if mid_epoch:
        _kill_when(cmd, lambda: _state(state).get("epochs_done", 0) >= 3 and _state(state).get("batches_done", 0) >= 4)
    else:
        _kill_when(cmd, lambda: _state(state).get("epochs_done", 0) >= 3)
    killed_at = _state(state)
    assert (state / "last.ckpt").is_file() and not resumed.exists()
    assert killed_at["epochs_done"] < 12, "the kill came after training ended"
    _run(cmd)

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0, err_msg=k)
    ca = json.loads((straight / "config.json").read_text())
    cb = json.loads((resumed / "config.json").read_text())
    assert cb["training"]["resumed_from"] == str(state / "last.ckpt")
    assert ca["training"]["val_mAP_curve"] == pytest.approx(cb["training"]["val_mAP_curve"], abs=1e-6)
    assert ca["metrics"]["val"]["per_label"]["F1"] == pytest.approx(cb["metrics"]["val"]["per_label"]["F1"], abs=1e-6)
    assert len(cb["training"]["val_mAP_curve"]) == 12
    # the training log a checkpoint carries has every epoch, those before the kill too
    la, lb = (list(csv.DictReader((c / "training-log.csv").read_text().splitlines())) for c in (straight, resumed))
    assert [int(r["epoch"]) for r in lb] == [int(r["epoch"]) for r in la] == list(range(12))
    assert [float(r["train_loss"]) for r in lb] == pytest.approx([float(r["train_loss"]) for r in la], abs=1e-6)


def test_a_damaged_training_state_is_set_aside_and_training_starts_over(small_csv, tmp_path):
    """A real run killed after epoch 3, its saved state then cut to half its size on disk: the rerun
    says so, keeps the damaged file aside and trains all 12 epochs from the start."""
    state, out = tmp_path / "state", tmp_path / "model"
    cmd = _fit_cmd(small_csv, _recipe(tmp_path, None), out, state)
    _kill_when(cmd, lambda: _state(state).get("epochs_done", 0) >= 3)
    saved = state / "last.ckpt"
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{saved}: damaged" in done.stderr and "training from the start" in done.stderr
    assert (state / "last.ckpt.damaged").is_file()  # --resume-dir given: the folder stays, and the damaged file
    trained = json.loads((out / "config.json").read_text())["training"]
    assert trained["resumed_from"] is None and len(trained["val_mAP_curve"]) == 12


def test_ctrl_c_stops_fit_saying_so_and_the_rerun_resumes(small_csv, tmp_path):
    """A real SIGINT (what Ctrl-C sends) mid-training: Lightning turns it into a silent exit(1); the
    user must hear that it was interrupted (exit 130), find no checkpoint made of a half-trained model,
    and resume with the same command."""
    state, out = tmp_path / "state", tmp_path / "model"
    cmd = _fit_cmd(small_csv, _recipe(tmp_path, None), out, state)
    # as from a terminal: a process started in the background (a CI job may run the suite so) inherits
    # SIGINT ignored, and Python then installs no handler for it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while _state(state).get("epochs_done", 0) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, stderr[-3000:]
    assert "tagcap: interrupted (a re-run resumes where this stopped)" in stderr
    assert not out.exists() and (state / "last.ckpt").is_file()
    _run(cmd)
    trained = json.loads((out / "config.json").read_text())["training"]
    assert trained["resumed_from"] == str(state / "last.ckpt") and len(trained["val_mAP_curve"]) == 12


def test_killed_bench_keeps_finished_rows_and_reruns_only_the_missing(small_csv, tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "tagcap", "bench", "annotate", "--data", str(small_csv), "--out", str(out),
           "--methods", "cnn-bce,cnn-unsym,cnn-asl", "--seeds", "0,1", "--quiet"]

    def two_units_done():
        try:
            return len({(r["method"], r["seed"]) for r in read_rows(out / "results.json")}) >= 2
        except (OSError, ValueError, KeyError):
            return False

    _kill_when(cmd, two_units_done)
    kept = read_rows(out / "results.json")
    units_before = {(r["method"], r["seed"]) for r in kept}
    assert 2 <= len(units_before) < 6
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for unit in units_before:
        assert f"== {unit[0]}, seed {unit[1]}: done before" in done.stdout
    rows = read_rows(out / "results.json")
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("cnn-bce", "cnn-unsym", "cnn-asl") for s in (0, 1)}
    for row in kept:  # the finished rows were kept as they were, not trained again
        assert row in rows
    summary = json.loads((out / "results.json").read_text())["summary"]
    unsym = next(s for s in summary if s["method"] == "cnn-unsym" and s["decision"] == "MCC thresholds")
    f1 = [r["per_label"]["F1"] for r in rows if r["method"] == "cnn-unsym" and r["decision"] == "MCC thresholds"]
    assert unsym["seeds"] == [0, 1]
    assert unsym["per_label.F1"]["mean"] == pytest.approx(np.mean(f1), abs=1e-5)
    assert unsym["per_label.F1"]["sd"] == pytest.approx(np.std(f1, ddof=1), abs=1e-5)
    assert "mean ± sd over seeds" in (out / "results.md").read_text()
    assert not any((out / "train-state").iterdir())  # every training state spent


def test_every_epoch_a_saved_state_counts_is_already_in_the_training_log(tmp_path, monkeypatch):
    """A kill can land at any instant after the state is saved. The log rows a resumed run keeps are
    those on disk at the kill, and the resumed run trains only the epochs after the state's: so each
    epoch the state counts must have its row on disk before the state says it is done (a kill in
    between once lost epoch 2's row, in CI). Checked at every save of a real training run."""
    from tagcap.decoders import create_decoder
    from tagcap.train.loop import LOG_FILE, TrainConfig, _log_rows, train_on_features
    from tagcap.train.module import TrainingState

    seen = []
    save = TrainingState._save

    def save_and_look(self, trainer):
        save(self, trainer)
        done = json.loads((self.path.parent / "state.json").read_text())["epochs_done"]
        seen.append((done, [int(r["epoch"]) for r in _log_rows(self.path.parent / "logs", LOG_FILE)]))

    monkeypatch.setattr(TrainingState, "_save", save_and_look)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 2, 8)).astype(np.float32), (rng.random((64, 3)) > 0.5).astype(np.uint8)
    train_on_features(create_decoder("cnn", 3, 8, loss="bce"), x, y, x[:16], y[:16],
                      TrainConfig(epochs=4, batch_size=16, patience=10), progress=False, resume_dir=tmp_path)
    assert [done for done, _ in seen] == [1, 2, 3, 4]
    for done, logged in seen:
        assert logged == list(range(done)), f"state says {done} epochs done; the log on disk has {logged}"


def test_a_rerun_of_another_run_does_not_resume_its_state(small_csv, tmp_path):
    """Killed, then run again with another seed, another option or another recipe in the same folder:
    refused with the difference named and the saved state kept; --restart trains from the start."""
    recipe = _recipe(tmp_path, None)
    state, out = tmp_path / "state", tmp_path / "model"
    cmd = _fit_cmd(small_csv, recipe, out, state)
    _kill_when(cmd, lambda: _state(state).get("epochs_done", 0) >= 2)
    saved = (state / "last.ckpt").read_bytes()
    for extra, said in ((["--seed", "7"], "train.seed was 0, now 7"),
                        (["--set", "train.lr=0.01"], "train.lr was 0.001, now 0.01"),
                        (["--set", "decoder.dropout=0.1"], "model.hparams.dropout was 0.3, now 0.1"),
                        (["--recipe", "cnn-rnn"], "model.method was \"ria\", now \"cnn-rnn\"")):
        run = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=600)
        assert run.returncode == 2 and "holds the saved state of another training run" in run.stderr, run.stderr
        assert said in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not out.exists() and (state / "last.ckpt").read_bytes() == saved
    restarted = subprocess.run(cmd + ["--seed", "7", "--restart"], capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["resumed_from"] is None and config["training"]["config"]["seed"] == 7
