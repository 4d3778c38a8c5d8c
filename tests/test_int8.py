"""The onnx-int8 engine: calibration set rules, a real quantization checked against float32, and refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import COREL, needs_corel, write_png
from tagcap.errors import ConfigError, TagcapError
from tagcap.features import quantize
from tagcap.features.backbone import Backbone


def test_int8_needs_enough_calibration_photos(tmp_path, monkeypatch):
    monkeypatch.delenv(quantize.CALIBRATION_ENV, raising=False)
    with pytest.raises(ConfigError, match="--calibration DIR"):
        Backbone(engine="onnx-int8")
    for i in range(5):
        write_png(tmp_path / f"{i}.png", seed=i)
    monkeypatch.setenv(quantize.CALIBRATION_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="5 photos; at least 128"):
        Backbone(engine="onnx-int8")


def test_a_model_below_the_cosine_bar_is_refused_and_not_kept(tmp_path, monkeypatch):
    for i in range(128):
        write_png(tmp_path / "photos" / f"{i:03d}.png", seed=i, size=(64, 48))
    monkeypatch.setenv(quantize.CALIBRATION_ENV, str(tmp_path / "photos"))
    monkeypatch.setattr(quantize, "MIN_COSINE", 0.99999)  # no 8-bit network is that close to float32
    with pytest.raises(TagcapError, match=r"int8 backbone is refused: on 32 check photos .* mean cosine of 0\.\d+"):
        Backbone(engine="onnx-int8")
    onnx_dir = Backbone(engine="onnx").cache_root / "onnx"
    assert not [p for p in onnx_dir.iterdir() if "int8" in p.name or ".tmp" in p.name or ".pre" in p.name]


@needs_corel
def test_int8_on_corel_photos_is_close_to_float32_and_made_once(tmp_path, monkeypatch):
    train = json.loads((COREL / "train.json").read_text())["samples"][:512]
    calib = tmp_path / "calibration"
    calib.mkdir()
    for s in train:
        (calib / s["image_name"].replace("/", "_")).symlink_to(COREL / "images" / s["image_name"])
    monkeypatch.setenv(quantize.CALIBRATION_ENV, str(calib))
    int8 = Backbone(engine="onnx-int8")
    fp32 = Backbone(engine="onnx")
    model = next((fp32.cache_root / "onnx").glob(f"*-int8-{int8.quantized}.onnx"))
    record = quantize.check_record(model)
    assert record["check_photos"] == 64 and record["calibrated_on"] == 448 and record["mean_cosine"] >= 0.99
    made = model.stat().st_mtime_ns

    test = json.loads((COREL / "test.json").read_text())["samples"][:16]
    batch = quantize._pixels(fp32, [COREL / "images" / s["image_name"] for s in test])
    (a, grid_a), (b, grid_b) = fp32(batch), int8(batch)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # the bar (0.99) is checked at build time on held-out calibration photos (above); here, on test photos
    # never seen, the features stay close (all 499 Corel-5k test photos: mean 0.994, benchmarks/int8.py)
    assert cos.mean() > 0.98 and cos.min() > 0.95 and grid_b.shape == grid_a.shape
    assert not np.array_equal(a, b)  # it is another network, not float32 under another name

    again = Backbone(engine="onnx-int8")
    assert again.quantized == int8.quantized and model.stat().st_mtime_ns == made
