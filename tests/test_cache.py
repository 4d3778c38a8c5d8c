"""The feature cache: reuse, mismatch errors, resuming a killed extraction, and rows tied to their
images' content (changed images extracted again, added images alone extracted)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import write_png
from tagcap.data.records import Record
from tagcap.errors import CacheMismatchError
from tagcap.features.backbone import Backbone, BackboneSpec
from tagcap.features.cache import FeatureCache

SPEC = dict(name="tf_efficientnet_lite0", weights="random", input_size=64)


def records(folder, n=24):
    return [Record(f"{i}.png", write_png(folder / f"{i}.png", i, size=(40, 30))) for i in range(n)]


@pytest.fixture(scope="module")
def backbone():
    return Backbone(BackboneSpec(**SPEC), engine="eager")


def test_extract_reuse_and_load(tmp_path, backbone):
    recs = records(tmp_path / "img", 10)
    cache = FeatureCache(tmp_path / "cache")
    stats = cache.extract(backbone, recs, batch_size=4, progress=False)
    assert not stats["reused"] and stats["images"] == 10
    assert cache.extract(backbone, recs, batch_size=4, progress=False)["reused"]
    pooled = cache.load(["3.png", "1.png"])
    grid = cache.load(["3.png"], "grid")
    assert pooled.shape == (2, 2, backbone.feature_dim) and grid.shape == (1, 2, 4, backbone.feature_dim)
    # view 1 is the flipped image: pooled features of a random image differ between views
    assert not np.allclose(pooled[0, 0], pooled[0, 1])
    assert np.allclose(grid[0].astype(np.float32).mean(1), pooled[0], atol=2e-2)


def test_mismatch_names_what_differs(tmp_path, backbone):
    recs = records(tmp_path / "img", 6)
    cache = FeatureCache(tmp_path / "cache")
    cache.extract(backbone, recs, batch_size=4, progress=False)
    with pytest.raises(CacheMismatchError, match="grid: cache has True, asked for False"):
        cache.extract(backbone, recs, grid=False, progress=False)


SCRIPT = """
import sys, time
from pathlib import Path
from tagcap.data.records import Record
from tagcap.features.backbone import Backbone, BackboneSpec
from tagcap.features.cache import FeatureCache
import tagcap.features.cache as cache_mod
folder, slow = Path(sys.argv[1]), sys.argv[2] == "slow"
recs = [Record(f"{i}.png", folder / "img" / f"{i}.png") for i in range(24)]
backbone = Backbone(BackboneSpec(name="tf_efficientnet_lite0", weights="random", input_size=64), engine="eager")
if slow:  # make each batch take a while so the test can kill us mid-way
    inner = backbone
    class Slow:
        def __getattr__(self, k): return getattr(inner, k)
        def cache_arrays(self, *a, **kw):  # what extraction calls for each batch
            time.sleep(0.4); return inner.cache_arrays(*a, **kw)
    backbone = Slow()
FeatureCache(folder / sys.argv[3]).extract(backbone, recs, batch_size=4, progress=False)
"""


def test_killed_extraction_resumes_to_the_same_arrays(tmp_path):
    records(tmp_path / "img", 24)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), "slow", "resumed"], env=env)
    progress = tmp_path / "resumed" / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if progress.is_file() and json.loads(progress.read_text())["done"] >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(progress.read_text())["done"]
    assert 8 <= done < 24, "the kill should land mid-way"
    assert not FeatureCache(tmp_path / "resumed").is_complete()
    subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), "fast", "resumed"], env=env, check=True)
    subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), "fast", "clean"], env=env, check=True)
    for kind in ("pooled", "grid"):
        a = np.load(tmp_path / "resumed" / f"{kind}.npy")
        b = np.load(tmp_path / "clean" / f"{kind}.npy")
        assert np.array_equal(a, b), kind
    assert FeatureCache(tmp_path / "resumed").is_complete()


def test_prepare_refuses_a_complete_cache_made_with_other_weights(tmp_path):
    """Reusing a finished cache checks the manifest too, not only extraction."""
    import timm
    from safetensors.torch import save_file

    from tagcap.data.synthetic import make_synthetic_dataset
    from tagcap.pipeline import prepare

    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_test=4, size=32)
    cache = tmp_path / "cache"
    prepare(data, spec=BackboneSpec(**SPEC), cache=cache, engine="eager", progress=False)
    assert prepare(data, spec=BackboneSpec(**SPEC), cache=cache, progress=False).extract_stats["reused"]
    with pytest.raises(CacheMismatchError, match="input_size: cache has 64, asked for 96"):
        prepare(data, spec=BackboneSpec(**{**SPEC, "input_size": 96}), cache=cache, progress=False)
    other = timm.create_model("tf_efficientnet_lite0")
    save_file(other.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(CacheMismatchError, match="weights: cache has 'random-init-seed0'"):
        prepare(data, spec=BackboneSpec(**{**SPEC, "weights": str(tmp_path / "w.safetensors")}), cache=cache,
                progress=False)


def test_a_damaged_cache_is_said_and_extracted_again(tmp_path, capsys):
    """Files cut short, missing or unreadable (a copy interrupted, a full disk): reusing the cache, as
    `fit` and `evaluate` do through prepare, says which file and makes the features again, equal to
    the first ones."""
    from tagcap.data.synthetic import make_synthetic_dataset
    from tagcap.pipeline import prepare

    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_test=4, size=32)
    cache = tmp_path / "cache"
    first = prepare(data, spec=BackboneSpec(**SPEC), cache=cache, engine="eager", progress=False)
    keys = first.cache.keys()
    pooled, grid = first.cache.load(keys), first.cache.load(keys, "grid")
    damages = {
        "pooled.npy is damaged (mmap length is greater than file size)":
            lambda: os.truncate(cache / "pooled.npy", os.path.getsize(cache / "pooled.npy") // 2),
        "grid.npy is missing": lambda: (cache / "grid.npy").unlink(),
        "manifest.json is not readable": lambda: (cache / "manifest.json").write_bytes(
            (cache / "manifest.json").read_bytes()[:60]),
    }
    for said, damage in damages.items():
        damage()
        again = prepare(data, spec=BackboneSpec(**SPEC), cache=cache, engine="eager", progress=False)
        err = capsys.readouterr().err
        assert f"{said}" in err and "extracting the features again" in err, err
        assert not again.extract_stats["reused"] and again.cache.damage() is None
        np.testing.assert_allclose(again.cache.load(keys), pooled, atol=1e-6)
        np.testing.assert_allclose(again.cache.load(keys, "grid").astype(np.float32), grid.astype(np.float32),
                                   atol=1e-3)
        assert prepare(data, spec=BackboneSpec(**SPEC), cache=cache, progress=False).extract_stats["reused"]


def test_rows_reads_a_selection_lazily_in_the_requested_order(tmp_path, monkeypatch):
    from tagcap.features.cache import LazyRows, _RowWriter

    path = tmp_path / "x.npy"
    full = np.arange(10 * 2 * 3, dtype=np.float32).reshape(10, 2, 3)
    np.lib.format.open_memmap(path, "w+", np.float32, full.shape).flush()
    writer = _RowWriter(path)
    writer.write(0, full[:4])
    writer.write(4, full[4:])
    writer.close()
    arr = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(arr, full)
    rows = LazyRows(arr, np.array([7, 2, 9, 0]))
    assert len(rows) == 4 and rows.shape == (4, 2, 3)
    np.testing.assert_array_equal(rows[1:3], full[[2, 9]])
    np.testing.assert_array_equal(rows[2], full[9])
    np.testing.assert_array_equal(rows[3, 1], full[0, 1])
    with pytest.raises(ValueError):
        _RowWriter(path).write(0, np.zeros((1, 5), np.float32))  # a row of the wrong width is refused


def test_pool_blocks_get_their_own_cache_and_a_plain_cache_refuses_them(tmp_path):
    """Features with extra pooled blocks are other features: their own default folder, and an explicit
    --cache made without them is refused by name rather than read with the wrong width."""
    from tagcap.data import read_dataset
    from tagcap.data.synthetic import make_synthetic_dataset
    from tagcap.features.cache import default_cache_dir
    from tagcap.pipeline import prepare

    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_test=4, size=32)
    plain, multi = BackboneSpec(**SPEC), BackboneSpec(**SPEC, pool_blocks=("blocks.5",))
    dataset = read_dataset(data)
    assert default_cache_dir(dataset, plain, tmp_path) != default_cache_dir(dataset, multi, tmp_path)
    cache = tmp_path / "cache"
    prep = prepare(data, spec=multi, cache=cache, engine="eager", progress=False)
    x, _ = prep.split("train")
    assert x.shape[-1] == 1280 + 192  # lite0's blocks.5 has 192 channels
    assert prep.backbone["spec"]["pool_blocks"] == ["blocks.5"]
    with pytest.raises(CacheMismatchError, match=r"pool_blocks: cache has \['blocks.5'\], asked for None"):
        prepare(data, spec=plain, cache=cache, progress=False)


class Counting:
    """The backbone, counting the images it is asked to extract."""

    def __init__(self, inner):
        self.inner, self.images = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def cache_arrays(self, batch, grid=True):
        self.images += len(batch)
        return self.inner.cache_arrays(batch, grid)


def test_replaced_images_are_extracted_again_and_only_they(tmp_path, backbone):
    recs = records(tmp_path / "img", 10)
    cache = FeatureCache(tmp_path / "cache")
    cache.extract(backbone, recs, batch_size=4, progress=False)
    before = cache.load([r.key for r in recs])
    for i in (2, 5, 7):  # new pictures under the same names
        write_png(recs[i].image, seed=100 + i, size=(40, 30))
    counting = Counting(backbone)
    stats = cache.extract(counting, recs, batch_size=4, progress=False)
    assert stats["reextracted"] == 3 and counting.images == 3
    after = cache.load([r.key for r in recs])
    fresh = FeatureCache(tmp_path / "fresh")
    fresh.extract(backbone, recs, batch_size=4, progress=False)
    np.testing.assert_allclose(after, fresh.load([r.key for r in recs]), atol=1e-5)
    changed = [i for i in range(10) if not np.array_equal(after[i], before[i])]
    assert changed == [2, 5, 7]

    for r in recs:  # every image replaced: every row extracted again
        write_png(r.image, seed=hash(r.key) % 1000 + 500, size=(40, 30))
    counting = Counting(backbone)
    assert cache.extract(counting, recs, batch_size=4, progress=False)["reextracted"] == 10
    assert counting.images == 10


def test_a_touched_image_is_hashed_not_extracted_and_verify_hashes_all(tmp_path, backbone):
    recs = records(tmp_path / "img", 6)
    cache = FeatureCache(tmp_path / "cache")
    cache.extract(backbone, recs, batch_size=4, progress=False)
    os.utime(recs[0].image, ns=(1, 1))  # same content, another time
    counting = Counting(backbone)
    assert cache.extract(counting, recs, progress=False)["reextracted"] == 0 and counting.images == 0
    assert cache.fingerprints()["mtime_ns"][0] == 1
    # same size and time, other content: only --verify (the content hash of every image) can tell
    st = os.stat(recs[1].image)
    data = bytearray(recs[1].image.read_bytes())
    data[-20] ^= 0xFF
    recs[1].image.write_bytes(bytes(data))
    os.utime(recs[1].image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.stale_rows(recs) == []
    assert cache.stale_rows(recs, verify=True) == [1]


def test_added_images_alone_are_extracted_and_removed_ones_cost_nothing(tmp_path, backbone):
    recs = records(tmp_path / "img", 20)
    old = recs[::2]  # 10 images first
    cache = FeatureCache(tmp_path / "cache")
    cache.extract(backbone, old, batch_size=4, progress=False)
    before = {r.key: row for r, row in zip(old, cache.load([r.key for r in old]))}
    bigger = sorted(old + recs[1:20:2][:10], key=lambda r: r.key)  # 10 added, interleaved in the row order
    counting = Counting(backbone)
    stats = cache.extract(counting, bigger, batch_size=4, progress=False)
    assert counting.images == 10 and stats["added"] == 10 and stats["reextracted"] == 0
    assert cache.keys() == [r.key for r in bigger]
    for key, row in before.items():  # the old rows were copied, not recomputed
        assert np.array_equal(cache.load([key])[0], row)
    fresh = FeatureCache(tmp_path / "fresh")
    fresh.extract(backbone, bigger, batch_size=4, progress=False)
    np.testing.assert_allclose(cache.load([r.key for r in bigger]), fresh.load([r.key for r in bigger]), atol=1e-5)
    counting = Counting(backbone)
    smaller = bigger[3:]
    assert cache.extract(counting, smaller, progress=False)["removed"] == 3 and counting.images == 0
    assert cache.keys() == [r.key for r in smaller]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "fresh", "img"]  # no rebuild folder left


def test_a_cache_from_before_fingerprints_is_adopted(tmp_path, backbone):
    recs = records(tmp_path / "img", 6)
    cache = FeatureCache(tmp_path / "cache")
    cache.extract(backbone, recs, batch_size=4, progress=False)
    (cache.folder / "fingerprints.npy").unlink()  # as an older tagcap left it
    assert cache.extract(backbone, recs, progress=False)["reextracted"] == 0
    write_png(recs[4].image, seed=99, size=(40, 30))
    assert cache.extract(backbone, recs, progress=False)["reextracted"] == 1


def test_a_dataset_with_replaced_images_gets_new_features(tmp_path):
    """The whole path `fit` takes: the same names, other pictures, other features (not the old ones)."""
    from tagcap.data.synthetic import make_synthetic_dataset
    from tagcap.pipeline import prepare

    spec = BackboneSpec(**SPEC)
    data = make_synthetic_dataset(tmp_path / "data", n_train=20, n_test=6, size=40, seed=1)
    first = prepare(data, spec=spec, engine="eager", progress=False, cache_root=tmp_path / "c")
    x1, _ = first.split("train")
    make_synthetic_dataset(tmp_path / "data", n_train=20, n_test=6, size=40, seed=2)  # every image replaced
    second = prepare(data, spec=spec, engine="eager", progress=False, cache_root=tmp_path / "c")
    x2, _ = second.split("train")
    assert second.extract_stats["reextracted"] == 26
    assert not np.allclose(x1, x2)
    assert prepare(data, spec=spec, engine="eager", progress=False, cache_root=tmp_path / "c").extract_stats["reused"]


def test_verify_keeps_an_image_whose_hash_ends_in_a_zero_byte(tmp_path, backbone):
    """numpy's S32 drops trailing NUL bytes when read: such a digest must still compare equal."""
    import hashlib

    recs = records(tmp_path / "img", 3)
    for seed in range(100_000):  # about 1 in 256 contents has a SHA-256 whose last byte is 0
        write_png(recs[0].image, seed=seed, size=(8, 8))
        if hashlib.sha256(recs[0].image.read_bytes()).digest()[-1] == 0:
            break
    else:
        pytest.fail("no image with a digest ending in 00 was found")
    cache = FeatureCache(tmp_path / "cache")
    cache.extract(backbone, recs, batch_size=4, progress=False)
    assert cache.stale_rows(recs, verify=True) == []
