"""Distributed runs on the CPU with the gloo backend: two processes must give what one gives.

Training goes through Lightning's DDP launcher (`tagcap fit --devices 2`), sharded extraction
through torchrun (`python -m torch.distributed.run ... -m tagcap extract`), as a user would run them.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tagcap.data.synthetic import make_synthetic_dataset
from tagcap.train.loop import GlobalBatchSampler

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=240, n_test=80, size=64, seed=5)


def run(*args, launcher=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *launcher, "-m", "tagcap", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}"
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
    run(*common, "--cache", tmp_path / "two",
        launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    one, two = json.loads((tmp_path / "one/manifest.json").read_text()), json.loads((tmp_path / "two/manifest.json").read_text())
    assert one["complete"] and two["complete"] and two["stats"]["shards"] == 2
    assert sorted(p.name for p in (tmp_path / "two").glob("progress*")) == ["progress-0-of-2.json", "progress-1-of-2.json"]
    assert (tmp_path / "one/images.txt").read_text() == (tmp_path / "two/images.txt").read_text()
    for name in ("pooled", "grid"):
        a, b = np.load(tmp_path / f"one/{name}.npy"), np.load(tmp_path / f"two/{name}.npy")
        assert a.shape == b.shape and np.abs(a).sum(axis=tuple(range(1, a.ndim))).min() > 0  # no row left empty
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)


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
