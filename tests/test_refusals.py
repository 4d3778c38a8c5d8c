"""Readers and checkpoints refuse bad input clearly: the file, line or key at fault, never a traceback,
and a checkpoint path that always holds a whole checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import annotation_meta, write_png
from tagcap.cli import main
from tagcap.data import read_dataset
from tagcap.errors import CheckpointError, DataError
from tagcap.decoders import create_decoder
from tagcap.train.checkpoint import save_checkpoint
from tagcap.inference.checkpoint import backbone_spec, load_checkpoint


def csv_folder(tmp_path: Path, train: bytes, test: bytes = b"image,labels\nimages/a.png,sky\n") -> Path:
    root = tmp_path / "data"
    for name in ("a", "b", "c"):
        write_png(root / "images" / f"{name}.png")
    (root / "train.csv").write_bytes(train)
    (root / "test.csv").write_bytes(test)
    return root


def test_a_byte_order_mark_is_fine(tmp_path):
    root = csv_folder(tmp_path, "\ufeffimage,labels\nimages/a.png,sky\nimages/b.png,café\n".encode("utf-8"))
    ds = read_dataset(root, val_fraction=0)
    assert [r.labels for r in ds.splits["train"]] == [("sky",), ("café",)]


def test_latin1_csv_names_file_line_and_encoding(tmp_path, capsys):
    root = csv_folder(tmp_path, "image,labels\nimages/a.png,sky\nimages/b.png,café\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_dataset(root)
    assert f"{root / 'train.csv'}:3" in str(err.value) and "not UTF-8" in str(err.value)
    assert "Latin-1" in str(err.value)
    assert main(["extract", "--data", str(root)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "images/../../outside.png"])
def test_image_paths_leaving_the_dataset_are_refused(tmp_path, name):
    write_png(tmp_path / "outside.png")
    root = csv_folder(tmp_path, f"image,labels\nimages/a.png,sky\n{name},sea\n".encode())
    with pytest.raises(DataError, match="leads outside the dataset folder") as err:
        read_dataset(root)
    assert str(err.value).startswith(f"{root / 'train.csv'}:3")


def test_outside_paths_are_accepted_when_asked(tmp_path, capsys):
    write_png(tmp_path / "outside.png")
    root = csv_folder(tmp_path, b"image,labels\nimages/a.png,sky\n../outside.png,sea\nimages/b.png,sky\n")
    ds = read_dataset(root, val_fraction=0, allow_outside=True)
    assert ds.splits["train"][1].image == root / "../outside.png"
    assert main(["extract", "--data", str(root), "--allow-outside-paths", "--no-grid", "--engine", "eager"]) == 0


def test_duplicate_and_unknown_label_errors_name_the_line(tmp_path):
    root = csv_folder(tmp_path, b"image,labels\nimages/a.png,sky\nimages/b.png,sea\nimages/a.png,sky\n")
    with pytest.raises(DataError, match="duplicate image") as err:
        read_dataset(root)
    assert str(err.value).startswith(f"{root / 'train.csv'}:4") and f"{root / 'train.csv'}:2" in str(err.value)
    root = csv_folder(tmp_path / "u", b"image,labels\nimages/a.png,sky\n",
                      b"image,labels\nimages/b.png,sky\nimages/c.png,tiger\n")
    with pytest.raises(DataError, match="unknown label 'tiger'") as err:
        read_dataset(root)
    assert str(err.value).startswith(f"{root / 'test.csv'}:3")


def test_an_unterminated_quote_is_reported_where_it_starts(tmp_path):
    root = csv_folder(tmp_path, b'image,labels\nimages/a.png,sky\n"images/b.png,sea\nimages/c.png,sky\n')
    with pytest.raises(DataError, match="quote") as err:
        read_dataset(root)
    assert str(err.value).startswith(f"{root / 'train.csv'}:3")


# -- checkpoints ---------------------------------------------------------------------------------

def make_ckpt(folder: Path, seed: int = 0, **meta) -> Path:
    import torch

    torch.manual_seed(seed)
    return save_checkpoint(folder, create_decoder("cnn", 4, 16), {**annotation_meta(4), **meta})


def edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("change, key", [
    (lambda c: c.pop("vocabulary"), "'vocabulary.labels'"),
    (lambda c: c.pop("decision"), "'decision.kind'"),
    (lambda c: c.pop("backbone"), "'backbone.spec'"),
    (lambda c: c["decision"].update(kind="mcc", thresholds=[0.5, "high", 0.5, 0.5]), "'decision.thresholds'[1]"),
    (lambda c: c["decision"].update(kind="threshold", t="0.5"), "'decision.t'"),
    (lambda c: c.update(task="caption"), "'words'"),
    (lambda c: c.update(format="tagcap-checkpoint/9"), "'format'"),
])
def test_incomplete_configs_are_refused_naming_the_key(tmp_path, change, key):
    folder = make_ckpt(tmp_path / "ckpt")
    edit_config(folder, change)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    assert key in str(err.value) and str(folder / "config.json") in str(err.value)


def test_weights_from_another_checkpoint_of_the_same_shape_are_refused(tmp_path):
    a, b = make_ckpt(tmp_path / "a", seed=0), make_ckpt(tmp_path / "b", seed=1)
    shutil.copy(b / "model.safetensors", a / "model.safetensors")
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_checkpoint(a)


@pytest.mark.parametrize("weights", ["../../etc/passwd", "/etc/passwd"])
def test_a_tuned_backbone_must_stay_inside_the_checkpoint(tmp_path, weights):
    folder = make_ckpt(tmp_path / "ckpt")
    edit_config(folder, lambda c: c["backbone"].update(tuned=True, spec={"name": "x", "weights": weights}))
    _, config = load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="inside the checkpoint folder"):
        backbone_spec(folder, config)


def test_overwriting_a_checkpoint_never_leaves_the_path_without_one(tmp_path):
    """Another process rewrites the checkpoint 40 times while this one keeps loading it: every load finds
    a whole, consistent checkpoint, and no temporary folder is left behind."""
    folder = make_ckpt(tmp_path / "ckpt")
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from test_refusals import make_ckpt\nfrom pathlib import Path\n"
              f"for i in range(40): make_ckpt(Path({str(folder)!r}), seed=i % 3)\n")
    writer = subprocess.Popen([sys.executable, "-c", script])
    loads = 0
    while writer.poll() is None:
        load_checkpoint(folder)  # raises if the folder is missing or half-written
        loads += 1
    assert writer.returncode == 0 and loads > 5
    load_checkpoint(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_save_killed_half_way_leaves_nothing_the_next_save_keeps(tmp_path):
    folder = make_ckpt(tmp_path / "ckpt")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    stale = tmp_path / f".ckpt.tmp{proc.pid}"  # what a save killed with SIGKILL leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    proc.kill()
    proc.wait()
    time.sleep(0.1)
    make_ckpt(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("change, said", [
    (lambda c: c["backbone"]["spec"].update(dilation=2), "unknown key(s) 'dilation'"),
    (lambda c: c["decoder"].update(num_labels=-5), "'decoder.num_labels' is -5"),
    (lambda c: c["decoder"].update(num_labels=10 ** 12), "'decoder.num_labels' is 1000000000000"),
    (lambda c: c["backbone"]["spec"].update(input_size=100_000), "'backbone.spec.input_size' is 100000"),
    (lambda c: c["decision"].update(kind="mcc", thresholds=[0.5, float("nan"), 0.5, 0.5]), "thresholds'[1"),
    (lambda c: c["decision"].update(t=float("nan")), "'decision.t' is nan"),
    (lambda c: c["decision"].update(kind="top-k", k=0), "'decision.k' is 0"),
    (lambda c: c.pop("files"), "'files'"),  # hashes removed from a checkpoint that had them: not loaded
    (lambda c: c["files"].pop("model.safetensors"), "no SHA-256 for model.safetensors"),
])
def test_configs_that_would_crash_or_never_choose_are_refused(tmp_path, change, said):
    folder = make_ckpt(tmp_path / "ckpt")
    edit_config(folder, change)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    assert said in str(err.value), str(err.value)


def test_a_config_that_is_a_list_is_named(tmp_path):
    from tagcap.inference.checkpoint import checkpoint_task

    folder = make_ckpt(tmp_path / "ckpt")
    (folder / "config.json").write_text("[1, 2]")
    for read in (load_checkpoint, checkpoint_task):
        with pytest.raises(CheckpointError, match="expected a JSON object"):
            read(folder)


def test_a_huge_decoder_in_the_config_is_refused_before_it_is_built(tmp_path):
    """hidden = 10^6 would make a 16 GB LSTM: the shapes are compared on the meta device first."""
    import resource

    import torch

    torch.manual_seed(0)
    folder = save_checkpoint(tmp_path / "ckpt", create_decoder("ria", 4, 16, hidden=8, embed_dim=8),
                             annotation_meta(4))
    edit_config(folder, lambda c: c["decoder"]["hparams"].update(hidden=10 ** 6))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="do not fit the configured decoder"):
        load_checkpoint(folder)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KiB: under 1 GB more


def test_a_checkpoint_from_before_hashes_loads_with_a_warning(tmp_path):
    folder = make_ckpt(tmp_path / "ckpt")
    edit_config(folder, lambda c: (c.pop("files"), c.update(format="tagcap-checkpoint/1")))
    with pytest.warns(UserWarning, match="before tagcap recorded SHA-256"):
        decoder, _ = load_checkpoint(folder)
    assert decoder.num_labels == 4
