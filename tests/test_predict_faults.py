"""`tagcap predict` under faults, as real processes: killed with SIGKILL mid-run and resumed, output
targets that cannot be written, file names that are not UTF-8, folders it may not read, link loops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tagcap.cli import main
from tagcap.data.synthetic import make_synthetic_dataset

NOBODY = 65534


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small checkpoint and a folder of 160 photos to tag."""
    root = tmp_path_factory.mktemp("predict-faults")
    data = make_synthetic_dataset(root / "data", n_train=40, n_test=160, size=48, seed=2)
    ckpt = root / "model"
    assert main(["fit", "--data", str(data), "--recipe", "cnn-bce", "--out", str(ckpt), "--epochs", "1",
                 "--quiet"]) == 0
    photos = root / "photos"
    photos.mkdir()
    for f in sorted((data / "images").glob("test_*.png")):
        shutil.copy(f, photos / f.name)
    return ckpt, photos


def predict_cmd(ckpt, *args) -> list[str]:
    return [sys.executable, "-m", "tagcap", "predict", str(ckpt), *map(str, args)]


def lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_killed_predict_keeps_what_it_wrote_and_resume_finishes_the_rest(setup, tmp_path):
    ckpt, photos = setup
    straight = tmp_path / "straight.jsonl"
    done = subprocess.run(predict_cmd(ckpt, photos, "--output", straight, "--batch-size", "4", "--quiet"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(predict_cmd(ckpt, photos, "--output", out, "--batch-size", "4", "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not (out.is_file() and out.read_text().count("\n") >= 12):
        assert proc.poll() is None, "predict finished before it could be killed"
        assert time.monotonic() - t0 < 120
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = out.read_bytes()
    n_kept = kept.count(b"\n")
    assert 12 <= n_kept < 160  # streamed: what finished before the kill is on disk
    with open(out, "ab") as f:  # as if the kill had torn a line in half
        f.write(b'{"image": "half a li')

    done = subprocess.run(predict_cmd(ckpt, photos, "--output", out, "--batch-size", "4", "--resume", "--quiet"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{n_kept} images already in" in done.stderr
    assert out.read_bytes().startswith(kept)
    resumed, reference = lines(out), lines(straight)
    assert sorted(r["image"] for r in resumed) == sorted(r["image"] for r in reference)  # each image once
    by_image = {r["image"]: r for r in reference}
    for r in resumed:
        assert [t["label"] for t in r["labels"]] == [t["label"] for t in by_image[r["image"]]["labels"]]


@pytest.mark.parametrize("target", ["folder", "under-a-file"])
def test_a_bad_output_target_fails_before_any_work(setup, tmp_path, target):
    ckpt, photos = setup
    (tmp_path / "file.txt").write_text("x")
    path = tmp_path if target == "folder" else tmp_path / "file.txt" / "out.jsonl"
    t0 = time.monotonic()
    done = subprocess.run(predict_cmd(ckpt, photos, "--output", path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"--output {path}" in done.stderr and "Traceback" not in done.stderr
    # the check comes before the model is loaded: the time is the interpreter's start, nothing more
    assert time.monotonic() - t0 < 8


def test_csv_output_keeps_a_file_name_that_is_not_utf8(setup, tmp_path):
    ckpt, photos = setup
    folder = tmp_path / "odd"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9-\xff.png"  # Latin-1 bytes: not valid UTF-8
    shutil.copy(next(photos.glob("*.png")), raw)
    shutil.copy(next(photos.glob("*.png")), folder / "plain.png")
    out = tmp_path / "tags.csv"
    done = subprocess.run(predict_cmd(ckpt, folder, "--format", "csv", "--output", out), capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    body = out.read_bytes()
    assert b"caf\xe9-\xff.png," in body and b"plain.png," in body  # the name byte for byte, and its tags
    stdout = subprocess.run(predict_cmd(ckpt, folder), capture_output=True, timeout=120)
    assert stdout.returncode == 0 and len(stdout.stdout.splitlines()) == 2


def test_symlink_loops_are_reported_per_file(setup, tmp_path, capsys):
    ckpt, photos = setup
    folder = tmp_path / "looped"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(next(photos.glob("*.png")), folder / "sub" / "a.png")
    (folder / "sub" / "back").symlink_to(folder, target_is_directory=True)  # a folder loop
    (folder / "self.jpg").symlink_to(folder / "self.jpg")  # a file linked to itself
    assert main(["predict", str(ckpt), str(folder), "--quiet"]) == 1
    captured = capsys.readouterr()
    results = [json.loads(ln) for ln in captured.out.splitlines()]
    errors = {Path(r["image"]).name: r["error"] for r in results if "error" in r}
    assert "symbolic link loop" in errors["self.jpg"] and "symbolic link loop" in errors["back"]
    assert [Path(r["image"]).name for r in results if "labels" in r] == ["a.png"]


@pytest.mark.skipif(os.geteuid() != 0, reason="runs predict as another user, which needs root")
def test_unreadable_folders_and_files_are_reported_not_skipped(setup):
    """Run as `nobody` (root reads everything, so permissions only bite another user)."""
    ckpt, photos = setup
    root = Path(tempfile.mkdtemp(prefix="tagcap-perm-", dir="/tmp"))
    try:
        shutil.copytree(ckpt, root / "model")
        tree = root / "tree"
        (tree / "closed").mkdir(parents=True)
        (tree / "open").mkdir()
        pngs = sorted(photos.glob("*.png"))
        shutil.copy(pngs[0], tree / "open" / "ok.png")
        shutil.copy(pngs[1], tree / "closed" / "hidden.png")
        shutil.copy(pngs[2], tree / "open" / "secret.png")
        (root / "cache").mkdir()
        for p in [root, *root.rglob("*")]:
            os.chown(p, NOBODY, NOBODY)
        os.chmod(tree / "closed", 0o000)
        os.chmod(tree / "open" / "secret.png", 0o000)
        env = {**os.environ, "TAGCAP_CACHE": str(root / "cache"), "HOME": str(root)}
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        done = subprocess.run(as_nobody + predict_cmd(root / "model", tree, tree / "closed" / "hidden.png",
                                                      "--engine", "eager", "--quiet"),
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        results = {Path(r["image"]).name: r for r in map(json.loads, done.stdout.splitlines())}
        assert set(results) == {"ok.png", "closed", "secret.png", "hidden.png"}
        assert "labels" in results["ok.png"]
        for name in ("closed", "secret.png", "hidden.png"):
            assert "permission denied" in results[name]["error"], results[name]

        out_dir = root / "readonly"
        out_dir.mkdir()
        os.chown(out_dir, 0, 0)  # root's, mode 755: nobody may not write in it
        done = subprocess.run(as_nobody + predict_cmd(root / "model", tree / "open" / "ok.png", "--output",
                                                      out_dir / "tags.jsonl"),
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 2 and "cannot write there" in done.stderr and "Traceback" not in done.stderr
    finally:
        os.chmod(root / "tree" / "closed", 0o755)
        shutil.rmtree(root, ignore_errors=True)


def test_resume_counts_the_failures_already_in_the_output(setup, tmp_path):
    """A photo that failed before the resume is still a failure: the exit status says so."""
    ckpt, photos = setup
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    (folder / "aaa-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    out = tmp_path / "out.jsonl"
    first = subprocess.run(predict_cmd(ckpt, folder, "--output", out, "--quiet"), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 1 and "aaa-broken.png" in first.stderr
    again = subprocess.run(predict_cmd(ckpt, folder, "--output", out, "--resume", "--quiet"), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1 and "1 had failed in the run it resumes" in again.stderr, again.stderr
    assert sum("error" in r for r in lines(out)) == 1
