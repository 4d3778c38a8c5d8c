"""A full disk, for real: each command writes onto a file system of its own (a tmpfs mounted for the
test, so small that the writes fail with ENOSPC part-way), must stop with the file named and no
traceback, leave no half-written file, and, once the disk has room again, the same command (with
--resume for predict) must end where an uninterrupted run ends. A read-only one is named too.
Needs root to mount; skips without."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_png
from tagcap.data.synthetic import make_synthetic_dataset
from tagcap.library.store import Library

FULL = "No space left on device"


class SmallDisk:
    """A tmpfs mounted at `root`; `resize` grows (or shrinks) it in place, its files kept."""

    def __init__(self, root: Path):
        self.root = root

    def mount(self, size: str, *options: str) -> None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                               str(self.root)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the disk-full tests need root")

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.root)], check=True)

    def leftovers(self) -> list[str]:
        """Temporary files or folders a writer left behind (each writes `.NAME.*` beside its target)."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob(".*"))


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    root = tmp_path / "disk"
    root.mkdir()
    small = SmallDisk(root)
    yield small
    subprocess.run(["umount", "-l", str(root)], capture_output=True)


def tagcap(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagcap", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


def refused(done: subprocess.CompletedProcess, names: str, reason: str = FULL) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"tagcap: error: {names}") and reason in error, error


def test_predict_on_a_full_disk_keeps_whole_lines_and_resume_finishes(disk, tmp_path):
    photos = tmp_path / "photos"
    for i in range(24):
        write_png(photos / f"{i:02d}.png", seed=i, size=(64, 48))
    model = ["--model", "imagenet-classes", "--batch-size", "4", "--quiet"]
    whole = tmp_path / "whole.jsonl"
    assert tagcap("predict", photos, *model, "--output", whole).returncode == 0

    disk.mount("8k")  # a few results' worth
    out = disk.root / "out.jsonl"
    done = tagcap("predict", photos, *model, "--output", out)
    refused(done, f"--output {out}")
    assert "--resume" in done.stderr
    written = out.read_bytes()
    kept = [json.loads(line) for line in written[: written.rfind(b"\n") + 1].splitlines()]
    assert 0 < len(kept) < 24
    assert disk.leftovers() == []

    disk.resize("1m")
    again = tagcap("predict", photos, *model, "--output", out, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(kept)} images already in {out}" in again.stderr
    resumed, unbroken = ([json.loads(line) for line in f.read_text().splitlines()] for f in (out, whole))
    assert len(resumed) == 24
    assert {r["image"]: r["labels"] for r in resumed} == {r["image"]: r["labels"] for r in unbroken}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("disk-full-data"), n_train=48, n_test=8, size=48, seed=3)


def test_a_checkpoint_that_does_not_fit_is_not_left_half_written(disk, tiny_set, tmp_path):
    state, out = tmp_path / "state", disk.root / "model"
    cmd = ["fit", "--data", tiny_set, "--recipe", "cnn-bce", "--out", out, "--resume-dir", state,
           "--set", "train.epochs=3", "--quiet"]
    disk.mount("32k")  # the training state fits elsewhere; the weights do not fit here
    refused(tagcap(*cmd), str(out))
    assert disk.leftovers() == [] and not out.exists()

    disk.resize("64m")
    again = tagcap(*cmd)  # training had ended: the rerun resumes from its state and only saves
    assert again.returncode == 0, again.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["resumed_from"] == str(state / "last.ckpt")
    log = list(csv.DictReader((out / "training-log.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in log] == [0, 1, 2]  # the log of the run before the failure travels with it


def test_a_read_only_place_is_named_not_a_traceback(disk, tiny_set, tmp_path):
    disk.mount("1m", "ro")
    out = disk.root / "model"
    done = tagcap("fit", "--data", tiny_set, "--recipe", "cnn-bce", "--out", out, "--set", "train.epochs=1", "--quiet")
    refused(done, str(out), "Read-only file system")


def test_extraction_on_a_full_disk_resumes_to_the_same_arrays(disk, tiny_set, tmp_path):
    cmd = ["extract", "--data", tiny_set, "--engine", "eager", "--input-size", "96", "--batch-size", "8"]
    clean = tmp_path / "clean-cache"
    assert tagcap(*cmd, env={**os.environ, "TAGCAP_CACHE": str(clean)}).returncode == 0

    disk.mount("1m")  # the pooled rows fit, the grid does not
    env = {**os.environ, "TAGCAP_CACHE": str(disk.root)}
    refused(tagcap(*cmd, env=env), str(disk.root / "features"))
    assert disk.leftovers() == []

    disk.resize("256m")
    assert tagcap(*cmd, env=env).returncode == 0
    (a,), (b,) = (list((root / "features").iterdir()) for root in (disk.root, clean))
    for kind in ("pooled", "grid"):
        assert np.array_equal(np.load(a / f"{kind}.npy"), np.load(b / f"{kind}.npy")), kind


def test_indexing_on_a_full_disk_undoes_the_cut_batch_and_goes_on(disk, tmp_path):
    photos = tmp_path / "photos"
    for i in range(48):
        write_png(photos / f"{i:02d}.png", seed=i, size=(64, 48))
    index = ["--model", "imagenet-classes", "--batch-size", "8", "--quiet", "--device", "cpu"]
    whole = tmp_path / "whole.sqlite"
    assert tagcap("index", photos, "--library", whole, *index).returncode == 0

    disk.mount("320k")
    lib = disk.root / "lib.sqlite"
    done = tagcap("index", photos, "--library", lib, *index)
    refused(done, str(lib), "the disk is full")
    assert "Free some space" in done.stderr
    with Library(lib, mode="read") as half:
        assert half.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = half.db.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
    assert stored % 8 == 0 and stored < 48  # whole batches only

    disk.resize("64m")
    again = tagcap("index", photos, "--library", lib, *index)
    assert again.returncode == 0, again.stderr[-3000:]
    with Library(lib, mode="read") as a, Library(whole, mode="read") as b:
        assert a.contents() == b.contents()


def test_the_gallery_shows_a_thumbnail_it_cannot_keep(disk, tmp_path):
    """Thumbnails are kept beside the library (LIB.thumbs), here a link to a disk that is full: each is
    sent all the same, not a 500, and nothing is left half-written there."""
    from fastapi.testclient import TestClient

    from tagcap.serve.app import create_app

    photos = tmp_path / "photos"
    for i in range(2):
        write_png(photos / f"{i}.png", seed=i, size=(640, 480))
    lib = tmp_path / "lib.sqlite"
    assert tagcap("index", photos, "--library", lib, "--model", "imagenet-classes", "--quiet").returncode == 0
    disk.mount("64k")
    with open(disk.root / "filler", "wb", buffering=0) as f:  # filled to the last block
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    lib.with_name(lib.name + ".thumbs").symlink_to(disk.root)
    client = TestClient(create_app(["imagenet-classes"], library=lib))
    hits = client.get("/v1/library/search").json()["hits"]
    assert len(hits) == 2
    for hit in hits:
        thumb = client.get(f"/v1/library/photos/{hit['id']}/thumb")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumb.content)).size) == 256
    assert disk.leftovers() == [] and sorted(p.name for p in disk.root.iterdir()) == ["filler"]
