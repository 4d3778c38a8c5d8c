"""The Python API and the bundled default models: photos tagged and captioned with no training data,
through `tagcap.load`, `tagcap predict` and `tagcap serve` without a checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tagcap
from conftest import COREL, needs_corel
from tagcap.api import as_rgb
from tagcap.cli import main
from tagcap.errors import CheckpointError, ConfigError, DataError, TagcapError
from tagcap.inference.bundled import BUNDLED, DEFAULT_MODELS

TRAINING_MODULES = ("lightning", "pytorch_lightning", "tagcap.train", "tagcap.pipeline", "tagcap.bench",
                    "tagcap.captioning", "tagcap.finetune", "tagcap.demo", "tagcap.recipes")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real photo: a Corel-5k test image where the dataset is there, else a drawn scene."""
    path = tmp_path_factory.mktemp("api") / "photo.jpg"
    if COREL.is_dir():
        Image.open(COREL / "images" / "108000" / "108007.jpeg").convert("RGB").save(path)  # a test-split tiger
    else:
        img = Image.new("RGB", (192, 128), (90, 140, 60))
        img.paste((240, 150, 40), (60, 30, 140, 100))
        img.save(path)
    return path


@pytest.fixture(scope="module")
def model():
    return tagcap.load(device="cpu")


def test_the_defaults_are_in_the_package_and_small():
    total = 0
    for name in DEFAULT_MODELS:
        folder = BUNDLED / name
        assert (folder / "config.json").is_file() and (folder / "MODEL_CARD.md").is_file(), name
        config = json.loads((folder / "config.json").read_text())
        assert config["card"]["test_metrics"] and config["card"]["data_terms"] and config["card"]["biases"]
        total += sum(p.stat().st_size for p in folder.iterdir())
    total += sum(p.stat().st_size for p in (BUNDLED / "int8-backbone").iterdir())  # their 8-bit backbone
    assert total <= 30 * 2 ** 20, f"bundled models take {total / 2 ** 20:.1f} MB, over the 30 MB budget"
    infos = tagcap.models()
    n = len(DEFAULT_MODELS)
    assert [i.name for i in infos[:n]] == list(DEFAULT_MODELS) and all(i.default for i in infos[:n])


def test_the_defaults_run_on_the_shipped_int8_backbone_where_the_cpu_has_vnni_unless_asked_otherwise(model, photo):
    from tagcap.devices import int8_arithmetic, native_bfloat16
    from tagcap.features.quantize import shipped_model

    # float32 ONNX on a CPU whose 8-bit sums saturate (x86 without VNNI) or that is unmeasured (not x86)
    expected = "onnx-int8" if int8_arithmetic() == "vnni" else "onnx"
    assert {i["backbone"]["engine"] for i in model.info().values()} == {expected}
    assert shipped_model()["weights"] == model.info()["corel5k-annotator"]["backbone"]["weights"]
    fp32 = tagcap.load("imagenet-classes", device="cpu", engine="onnx")
    assert fp32.info()["imagenet-classes"]["backbone"]["engine"] == "onnx"
    # on that path a captioner decodes in bfloat16 where this CPU has it; annotators, and --engine onnx, in float32
    assert {n: i["precision"] for n, i in model.info().items()} == {
        "corel5k-annotator": "float32", "imagenet-classes": "float32", "flickr8k-tagger": "float32",
        "flickr8k-captioner": "bfloat16" if native_bfloat16() and expected == "onnx-int8" else "float32"}
    assert tagcap.load("flickr8k-captioner", device="cpu", engine="onnx").info()["flickr8k-captioner"][
        "precision"] == "float32"
    a = model.tag([photo], top_k=1)[0]  # each model's best label
    b = fp32.tag([photo], top_k=1)[0]
    assert [t.label for t in a if t.source == "imagenet-classes"] == [t.label for t in b]  # the same tiger


def test_import_and_describe_pull_in_no_training_code(photo):
    """The issue's three lines, in a fresh interpreter: no Lightning, no training module imported."""
    code = ("import json, sys, tagcap\n"
            f"m = tagcap.load(device='cpu')\n"
            f"d = m.describe([{str(photo)!r}])[0]\n"
            f"bad = sorted(k for k in sys.modules if k.startswith({TRAINING_MODULES!r}))\n"
            "print(json.dumps({'bad': bad, 'tags': len(d.tags), 'caption': d.caption}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bad"] == [], f"the API imported training code: {result['bad']}"
    assert result["tags"] > 0 and len(result["caption"].split()) >= 3


def test_describe_gives_one_list_of_tags_from_every_source_and_a_caption(model, photo):
    [d] = model.describe([photo])
    assert d.image == str(photo)
    assert {t.source for t in d.tags} <= {"corel5k-annotator", "imagenet-classes", "flickr8k-tagger"}
    assert all(0.0 <= t.score <= 1.0 for t in d.tags)
    assert [t.score for t in d.tags] == sorted((t.score for t in d.tags), reverse=True)
    labels = [t.label for t in d.tags]
    assert len(labels) == len(set(labels))  # each concept once
    assert isinstance(d.caption, str) and len(d.caption.split()) >= 3
    assert d.to_dict()["tags"][0].keys() == {"label", "score", "source", "concept", "sources", "broader"}
    if COREL.is_dir():  # the photo is a tiger: both sources say so, in one tag
        tiger = next(t for t in d.tags if t.label == "tiger")
        assert {"imagenet-classes", "corel5k-annotator"} <= set(tiger.sources) and "animal" in tiger.broader


def test_threshold_and_top_k_replace_the_models_rules(model, photo):
    [one] = model.tag([photo], top_k=1)  # each model's own best label, model after model
    assert sorted(t.source for t in one) == ["corel5k-annotator", "flickr8k-tagger", "imagenet-classes"]
    [five] = model.tag([photo], top_k=5, threshold=0.0)
    assert len(five) == 15
    [none] = model.tag([photo], threshold=1.0)
    assert none == []
    with pytest.raises(ConfigError, match="between 0 and 1"):
        model.tag([photo], threshold=1.5)
    with pytest.raises(ConfigError, match="at least 1"):
        model.tag([photo], top_k=0)


def test_caption_beam_widths(model, photo):
    greedy, beam = model.caption([photo], beam=1)[0], model.caption([photo], beam=3)[0]
    assert greedy and beam
    with pytest.raises(ConfigError):
        model.caption([photo], beam=0)


def _scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    arr = np.zeros((96, 128, 3), np.uint8)
    arr[:48] = (70, 130, 200)  # sky over grass, with noise
    arr[48:] = (60, 140, 50)
    return np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)


def test_images_in_any_mode_are_converted_as_a_person_sees_them():
    rgb = _scene()
    base = Image.fromarray(rgb)
    # RGBA: opaque pixels kept, transparent ones over white
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    out = np.asarray(as_rgb(Image.fromarray(rgba, "RGBA")))
    assert (out[:10, :10] == 255).all() and (out[20:, 20:] == rgb[20:, 20:]).all()
    assert np.array_equal(np.asarray(as_rgb(rgba)), out)  # the same as an HxWx4 array
    # LA: grey with alpha
    la = Image.fromarray(rgb[:, :, 0]).convert("LA")
    la.putalpha(Image.fromarray(np.where(np.arange(128)[None, :] < 64, 0, 255).astype(np.uint8).repeat(96, 0)))
    out = np.asarray(as_rgb(la))
    assert (out[:, :64] == 255).all() and (out[:, 64:, 0] == rgb[:, 64:, 0]).all()
    # P (palette) and L (grey), and an HxW array
    assert np.abs(np.asarray(as_rgb(base.convert("P"))).astype(int) - rgb).mean() < 25
    grey = np.asarray(as_rgb(base.convert("L")))
    assert grey.shape == (96, 128, 3) and (grey[..., 0] == grey[..., 1]).all()
    assert np.array_equal(np.asarray(as_rgb(np.asarray(base.convert("L")))), grey)
    # CMYK converted, not misread as RGBA
    cmyk = np.asarray(as_rgb(base.convert("CMYK"))).astype(int)
    assert np.abs(cmyk - rgb).max() <= 2
    # 16-bit grey scaled to 8 bits (PIL's own convert would clip everything above 255 to white)
    i16 = Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257))
    assert i16.mode.startswith("I;16")
    out16 = np.asarray(as_rgb(i16))[..., 0].astype(int)
    assert np.abs(out16 - np.asarray(base.convert("L")).astype(int)).max() <= 1


def test_the_same_picture_in_other_modes_gets_the_same_tags(model):
    rgb = _scene()
    tags = [model.tag([x], top_k=3, threshold=0.0)[0] for x in
            (Image.fromarray(rgb), rgb, Image.fromarray(rgb).convert("CMYK"),
             Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA"))]
    labels = [[t.label for t in ts] for ts in tags]
    assert all(x == labels[0] for x in labels), labels


def test_a_large_jpeg_decodes_at_a_reduced_scale_with_the_same_tags(model, photo, tmp_path):
    """A 12-megapixel JPEG is decoded by DCT scaling (`draft`) to no less than the input size, and the
    model sees what it sees when the whole file is decoded (every label's score within 0.05)."""
    from tagcap.features.images import load_image

    big = tmp_path / "big.jpg"
    Image.open(photo).convert("RGB").resize((4000, 3000), Image.LANCZOS).save(big, quality=92)
    size = model._models.decode_size
    reduced, full = load_image(big, reduce_to=size), load_image(big)
    assert full.size == (4000, 3000) and size <= min(reduced.size) < 2 * size  # 1/8 scale: 500x375
    every = dict(top_k=None, threshold=0.0)  # every label of both sources, scored
    a = {(t.source, t.label): t.score for t in model.tag([big], **every)[0]}
    b = {(t.source, t.label): t.score for t in model.tag([full], **every)[0]}
    assert a.keys() == b.keys() and len(a) > 1000
    assert max(abs(a[k] - b[k]) for k in a) < 0.05  # measured: 0.015 on the tiger, 0.034 on the drawn scene


def test_an_image_files_bytes_are_decoded_as_the_file_is(model, photo):
    data = Path(photo).read_bytes()
    every = dict(top_k=None, threshold=0.0)
    from_bytes, from_file = model.tag([data, bytearray(data)], **every), model.tag([photo], **every)
    assert from_bytes[0] == from_bytes[1] == from_file[0]
    with pytest.raises(DataError, match="image 1: not an image"):
        model.tag([data, b"GIF89a but not really"], strict=True)


def test_bad_inputs_are_refused_with_their_name(model, tmp_path):
    with pytest.raises(DataError, match="image 0.*uint8"):
        model.tag([np.zeros((8, 8, 3), np.float32)], strict=True)
    with pytest.raises(DataError, match="a dict"):
        model.tag([{"not": "an image"}], strict=True)
    with pytest.raises(DataError, match="missing.jpg"):
        model.describe([tmp_path / "missing.jpg"], strict=True)
    with pytest.raises(CheckpointError, match="neither a checkpoint folder nor a bundled model"):
        tagcap.load("no-such-model")
    with pytest.raises(ConfigError, match="--device"):
        tagcap.load("imagenet-classes", device="tpu")
    with pytest.raises(ConfigError, match="cuda"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        tagcap.load("imagenet-classes", device="cuda:0")


def test_a_single_model_loads_by_name(photo):
    m = tagcap.load("imagenet-classes", device="cpu")
    assert m.names == ["imagenet-classes"]
    with pytest.raises(TagcapError, match="cannot caption: no captioning model is loaded"):
        m.caption([photo])


def test_one_view_runs_the_photo_alone(photo):
    two = tagcap.load("corel5k-annotator", device="cpu").tag([photo], top_k=260, threshold=0)[0]
    one = tagcap.load("corel5k-annotator", device="cpu", views=1).tag([photo], top_k=260, threshold=0)[0]
    a = {t.label: t.score for t in two}
    b = {t.label: t.score for t in one}
    assert a.keys() == b.keys() and a != b  # every label scored, from one view instead of the average of two
    assert np.corrcoef(list(a.values()), [b[k] for k in a])[0, 1] > 0.9  # ...and still the same picture
    with pytest.raises(ConfigError, match="--views 3"):
        tagcap.load("corel5k-annotator", device="cpu", views=3)


def test_predict_without_a_checkpoint(photo, capsys):
    assert main(["predict", str(photo), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["labels"] and result["decision"].startswith("shown:")
    assert len(result["caption"].split()) >= 3
    assert main(["predict", str(photo), "--device", "cpu", "--top-k", "2", "--threshold", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["labels"]) == 6 and "top-2 at or above 0" in result["decision"]
    assert main(["predict", str(photo), "--device", "cpu", "--rule", "model"]) == 0
    result = json.loads(capsys.readouterr().out)  # each model's own benchmark rule, as before the shown rule
    assert {t["source"] for t in result["labels"]} >= {"corel5k-annotator", "imagenet-classes"}
    assert main(["predict", str(photo), "--model", "corel5k-annotator", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "caption" not in result and {t["source"] for t in result["labels"]} == {"corel5k-annotator"}


def test_models_command_lists_metrics(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in DEFAULT_MODELS:
        assert name in out
    assert "per-label F1" in out and "BLEU4" in out
    # what predict runs, beside float32's numbers
    assert out.count("test on the shipped int8 backbone") == len(DEFAULT_MODELS)
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) >= 3 and all(m["metrics_int8"] for m in listed if m["default"])


def test_serve_without_a_checkpoint(photo):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tagcap.serve import ServeConfig, create_app

    with TestClient(create_app(None, ServeConfig(device="cpu"))) as client:
        assert set(client.get("/v1/model").json()) == set(DEFAULT_MODELS)
        files = {"image": ("p.jpg", photo.read_bytes(), "image/jpeg")}
        body = client.post("/v1/annotate", files=files).json()
        assert body["labels"] and body["decision"].startswith("shown:")
        assert body["caption"] and len(body["attention"]["words"]) == len(body["caption"].split()) + 1
        body = client.post("/v1/annotate?top_k=1", files=files).json()
        assert sorted(t["source"] for t in body["labels"]) == ["corel5k-annotator", "flickr8k-tagger",
                                                               "imagenet-classes"]
        assert client.post("/v1/annotate?threshold=2", files=files).status_code == 422


@pytest.mark.slow
@needs_corel
def test_the_imagenet_head_names_corel_animals():
    """Corel-5k words that are ImageNet class names and whose photos show that animal (the list, and
    what was left out and why, are in the model's card): top-1 right on at least 90 % of their photos."""
    from tagcap.data import read_dataset

    card = json.loads((BUNDLED / "imagenet-classes" / "config.json").read_text())["card"]
    animals = set(card["check"]["corel5k_animals"])
    assert {"tiger", "zebra"} <= animals and "lion" in " ".join(card["check"]["left_out"])
    records = [r for r in read_dataset(COREL).all_records() if set(r.labels) & animals]
    top1 = tagcap.load("imagenet-classes", device="cpu").tag([r.image for r in records], top_k=1)
    right = sum(tags[0].label in r.labels for r, tags in zip(records, top1))
    assert len(records) > 200
    assert right / len(records) >= 0.90, f"{right} of {len(records)} named right"


def test_the_wheel_carries_the_models_and_stays_under_40_mb(tmp_path):
    import zipfile

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps",
                           "-w", str(tmp_path), "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = tmp_path.glob("tagcap-*.whl")
    assert wheel.stat().st_size <= 40 * 2 ** 20, f"the wheel is {wheel.stat().st_size / 2 ** 20:.1f} MB"
    names = zipfile.ZipFile(wheel).namelist()
    for name in DEFAULT_MODELS:
        for f in ("config.json", "model.safetensors", "MODEL_CARD.md"):
            assert f"tagcap/bundled/{name}/{f}" in names
        if name != "flickr8k-captioner":  # an annotator: its labels' concepts and its calibration for the shown rule
            assert {f"tagcap/bundled/{name}/concepts.tsv", f"tagcap/bundled/{name}/shown.json"} <= set(names)
    assert {"tagcap/configs/base.yaml", "tagcap/concepts/concepts.json", "tagcap/bundled/shown-rule.json"} <= set(names)


def test_in_memory_images_meet_the_same_limits_as_files():
    """An empty image is refused (a model would tag it confidently), and an array or PIL image over the
    pixel limit is refused before it is converted, as a file of that size is."""
    from PIL import Image

    from tagcap.api import as_rgb
    from tagcap.errors import DataError

    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 40, 3), np.uint8), Image.new("RGB", (0, 0))):
        with pytest.raises(DataError, match="an empty image"):
            as_rgb(empty, "blank")
    with pytest.raises(DataError, match="over the 50,000,000 pixel limit"):
        as_rgb(np.zeros((8000, 7000, 3), np.uint8), "huge")
    small = as_rgb(np.zeros((4000, 3000, 3), np.uint8), "big", reduce_to=260)
    assert min(small.size) >= 2 * 260 and small.size == (3000 // 5, 4000 // 5)  # shrunk while held for a batch


def test_a_bad_image_among_good_ones_is_one_result_with_its_error(model, photo, tmp_path):
    """As `tagcap predict` goes on past a file it cannot read, so do describe, tag and caption."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    described = model.describe([photo, broken, photo])
    assert [d.error is None for d in described] == [True, False, True]
    assert "broken.jpg" in described[1].image and "not an image" in described[1].error
    assert described[1].tags == [] and described[1].caption is None
    assert described[0].tags == described[2].tags and described[0].caption == described[2].caption
    assert "error" not in described[0].to_dict() and described[1].to_dict()["error"] == described[1].error
    with pytest.warns(UserWarning, match="broken.jpg"):
        tags = model.tag([photo, broken])
    assert tags[0] and tags[1] == []
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert model.caption([broken, photo])[0] is None


def _on_a_terminal(cmd: list[str]) -> str:
    """What `cmd` prints to standard output when that is a terminal (a pseudo-terminal)."""
    import os
    import pty
    import subprocess

    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0
    return out.decode().replace("\r\n", "\n")


def test_predict_prints_a_table_on_a_terminal_and_json_lines_when_piped(photo):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tagcap", "predict", str(photo), "--model", "imagenet-classes", "--quiet"]
    table = _on_a_terminal(cmd)
    piped = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    result = json.loads(piped)  # one photo: one JSON object
    assert table.splitlines()[0] == str(photo) and "{" not in table
    best = max(result["labels"], key=lambda t: t["score"])
    assert f"{best['label']} {best['score']:.2f}" in table
    assert _on_a_terminal(cmd + ["--json"]) == piped  # --json on a terminal: exactly what a pipe gets
