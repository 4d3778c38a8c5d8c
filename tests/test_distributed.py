"""Distributed runs on the CPU with the gloo backend: two processes must give what one gives.

Training goes through Lightning's DDP launcher (`tagcap fit --devices 2`), sharded extraction
and photo-library indexing through torchrun (`python -m torch.distributed.run ... -m tagcap extract`), as a
user would run them.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tagcap.data.synthetic import make_synthetic_dataset
from tagcap.inference.bundled import DEFAULT_MODELS
from tagcap.train.loop import GlobalBatchSampler

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=240, n_test=80, size=64, seed=5)


TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")


def run(*args, launcher=(), returncode=0, threads=1):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, *launcher, "-m", "tagcap", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == returncode, f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def test_global_batches_are_the_same_for_any_number_of_processes():
    for n, batch, drop_last in ((103, 8, True), (21, 8, False)):
        one = list(GlobalBatchSampler(n, batch, seed=3, views=2, drop_last=drop_last))
        ranks = [list(GlobalBatchSampler(n, batch, seed=3, rank=r, world=2, views=2, drop_last=drop_last))
                 for r in range(2)]
        assert len(ranks[0]) == len(ranks[1]) == len(one)  # DDP hangs if ranks take different numbers of steps
        for whole, part0, part1 in zip(one[:-1], *ranks):
            assert part0 + part1 == whole
        assert len(ranks[0][-1]) == len(ranks[1][-1])
    codes = [c for b in one for c in b]
    assert len(set(c // 2 for c in codes)) == len(codes)  # each image once per epoch...
    assert {c % 2 for c in codes} == {0, 1}               # ...in either view
    s = GlobalBatchSampler(103, 8, seed=3, views=2)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    with pytest.raises(Exception, match="multiple of 2"):
        GlobalBatchSampler(103, 7, seed=0, world=2)


def test_sharded_extraction_matches_one_process(synth, tmp_path):
    common = ["extract", "--data", synth, "--input-size", 96, "--engine", "eager", "--batch-size", 8]
    run(*common, "--cache", tmp_path / "one")
    run(*common, "--cache", tmp_path / "two", launcher=TORCHRUN)
    one, two = json.loads((tmp_path / "one/manifest.json").read_text()), json.loads((tmp_path / "two/manifest.json").read_text())
    assert one["complete"] and two["complete"] and two["stats"]["shards"] == 2
    assert sorted(p.name for p in (tmp_path / "two").glob("progress*")) == ["progress-0-of-2.json", "progress-1-of-2.json"]
    assert (tmp_path / "one/images.txt").read_text() == (tmp_path / "two/images.txt").read_text()
    for name in ("pooled", "grid"):
        a, b = np.load(tmp_path / f"one/{name}.npy"), np.load(tmp_path / f"two/{name}.npy")
        assert a.shape == b.shape and np.abs(a).sum(axis=tuple(range(1, a.ndim))).min() > 0  # no row left empty
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)


def test_sharded_indexing_writes_the_library_one_process_writes(tmp_path):
    """Two ranks, the default models, five batches (rank 0 takes three, rank 1 two, one with a file
    that is no image): the library rank 0 writes is the single process's, row for row. The single
    process has two threads, so its models work on two batches at once (two lanes of one thread):
    that gives the same rows too."""
    from conftest import write_png
    from tagcap.library.store import Library

    photos = tmp_path / "photos"
    for i in range(19):
        write_png(photos / f"{i:02d}.png", seed=i, size=(64, 48))
    (photos / "05.png").write_bytes(b"not a png")  # in batch 1: rank 1's
    common = ["index", photos, "--batch-size", 4, "--quiet", "--device", "cpu", "--json"]
    one = run(*common, "--library", tmp_path / "one.sqlite", returncode=1, threads=2)
    two = run(*common, "--library", tmp_path / "two.sqlite", launcher=TORCHRUN, returncode=1)
    assert "05.png" in two.stderr
    counts = [json.loads(p.stdout.strip().splitlines()[-1]) for p in (one, two)]
    for c in counts:
        assert (c["photos"], c["indexed"], c["unreadable"]) == (19, 18, 1)
    assert counts[0]["by_rank"] == [19] and counts[1]["by_rank"] == [4 + 4 + 3, 4 + 4]  # batches 0, 2, 4 | 1, 3
    assert counts[0]["lanes"] == 2 and counts[1]["lanes"] == 1
    with Library(tmp_path / "one.sqlite", mode="read") as a, Library(tmp_path / "two.sqlite", mode="read") as b:
        rows_a, rows_b = a.contents(), b.contents()
        ids = "SELECT id, path FROM photos ORDER BY id"
        assert a.db.execute(ids).fetchall() == b.db.execute(ids).fetchall()  # written in the same order
    assert len(rows_a["captions"]) == 18 and len(rows_a["done"]) == 19 * len(DEFAULT_MODELS)
    for key in ("photos", "tags", "captions", "done"):
        assert rows_a[key] == rows_b[key], key
    again = run(*common, "--library", tmp_path / "two.sqlite", launcher=TORCHRUN)  # nothing changed
    assert json.loads(again.stdout.strip().splitlines()[-1])["skipped"] == 19
    gone = run("index", tmp_path / "gone", "--library", tmp_path / "two.sqlite", launcher=TORCHRUN, returncode=1)
    assert "gone: no such file or folder" in gone.stderr  # rank 1 is told, not left waiting for a plan


def test_two_process_ddp_matches_one_process(synth, tmp_path):
    """Same global batches, gradients averaged over the two halves: the weights and metrics of one
    process. Dropout is off here, since its masks are drawn per process."""
    recipe = tmp_path / "cnn-unsym-nodrop.yaml"
    recipe.write_text("name: cnn-unsym-nodrop\nmethod: cnn\ndecoder: {loss: unsym, dropout: 0.0}\n"
                      "train: {epochs: 6, batch_size: 16, lr: 0.003, patience: 100}\ndecisions: [threshold]\n")
    cache = tmp_path / "cache"
    base = ["--data", synth, "--recipe", recipe, "--cache", cache, "--input-size", 96, "--decision", "threshold",
            "--quiet"]
    run("fit", *base, "--out", tmp_path / "one")
    run("fit", *base, "--out", tmp_path / "two", "--devices", 2)
    from safetensors.torch import load_file

    configs = {k: json.loads((tmp_path / k / "config.json").read_text()) for k in ("one", "two")}
    assert configs["one"]["training"]["world_size"] == 1 and configs["two"]["training"]["world_size"] == 2
    assert configs["one"]["training"]["epochs_run"] == configs["two"]["training"]["epochs_run"] == 6
    w1, w2 = load_file(str(tmp_path / "one/model.safetensors")), load_file(str(tmp_path / "two/model.safetensors"))
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-4, rtol=1e-3)
    scores = {}
    for k in ("one", "two"):
        out = tmp_path / f"{k}.json"
        run("evaluate", tmp_path / k, "--data", synth, "--cache", cache, "--split", "test", "--json", out)
        scores[k] = json.loads(out.read_text())
    assert scores["one"]["mAP"] > 0.5
    assert abs(scores["one"]["per_label"]["F1"] - scores["two"]["per_label"]["F1"]) <= 0.005
    assert abs(scores["one"]["per_image"]["F1"] - scores["two"]["per_image"]["F1"]) <= 0.005
