"""The `onnx-int8` engine: the ONNX backbone quantized to 8 bits, calibrated on photos, checked against float32.

Static quantization with `onnxruntime.quantization` (Jacob et al. 2018's affine scheme): QDQ
format, int8 weights per output channel, uint8 activations whose ranges come from MinMax
calibration on a fixed set of photos. Percentile calibration was tried here first and rejected:
2.4x faster than float32 but a pooled-feature cosine of 0.80 (MinMax: 0.99).

The calibration photos are the first 512 images, in path order, under the folder named by
$TAGCAP_CALIBRATION (`--calibration DIR` sets it; at least 128): photos like the ones to be tagged,
since the activation ranges are learnt from them. The last 64 (a quarter, with fewer) are the check
batch, never calibrated on: the mean cosine between float32 and int8 pooled features on it must be
at least MIN_COSINE, else the int8 model is refused, with the numbers. Measured on Corel-5k train
photos: calibrated on 96 and checked on 32 others, the mean cosine was 0.985 (minimum 0.949, refused);
on 480, 0.994 (minimum 0.984): MinMax ranges need enough photos to cover the unusual ones. A model that passes is kept beside the
float32 export, named by the calibration set's content hash, with its check in a JSON file; the
same photos give the same model, other photos another.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from tagcap import atomic
from tagcap.errors import ConfigError, TagcapError
from tagcap.hashing import file_sha256

CALIBRATION_ENV = "TAGCAP_CALIBRATION"
CALIBRATION_PHOTOS = 512
MIN_PHOTOS = 128
CHECK_PHOTOS = 64
MIN_COSINE = 0.99


def calibration_set(folder: str | Path | None = None) -> tuple[list[Path], str]:
    """The calibration photos and the set's identity (a hash of their contents)."""
    folder = folder or os.environ.get(CALIBRATION_ENV)
    return _calibration_set(str(folder) if folder else "")


@functools.lru_cache(maxsize=4)
def _calibration_set(folder: str) -> tuple[list[Path], str]:
    """calibration_set's work, once per folder in a process: `prepare` and the Backbone both need the
    set's identity, and hashing 512 large photos twice would cost seconds."""
    from tagcap.data.readers.common import IMAGE_SUFFIXES

    if not folder:
        raise ConfigError(f"the onnx-int8 engine calibrates on photos like yours: give --calibration DIR (or set "
                          f"${CALIBRATION_ENV}), a folder of at least {MIN_PHOTOS} photos; the first "
                          f"{CALIBRATION_PHOTOS} in path order are used")
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--calibration {folder}: not a folder")
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    photos = photos[:CALIBRATION_PHOTOS]
    if len(photos) < MIN_PHOTOS:
        raise ConfigError(f"--calibration {folder}: {len(photos)} photos; at least {MIN_PHOTOS} are needed")
    digest = hashlib.sha256("".join(file_sha256(p) for p in photos).encode()).hexdigest()[:12]
    return photos, digest


def quantized_model(fp32: Path, backbone, photos: list[Path], identity: str) -> Path:
    """The int8 model for `fp32` calibrated on `photos`: made, checked and kept on first use."""
    out = fp32.with_name(f"{fp32.stem}-int8-{identity}.onnx")
    if out.is_file():
        return out
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batch = _pixels(backbone, photos)
    split = len(batch) - min(CHECK_PHOTOS, len(batch) // 4)
    calibrate, check = batch[:split], batch[split:]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"images": calibrate[i:i + 8]} for i in range(0, len(calibrate), 8)])

        def get_next(self):
            return next(self.rows, None)

    tmp = out.with_suffix(f".tmp{os.getpid()}")
    pre = out.with_suffix(f".pre{os.getpid()}")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        result = compare(backbone.session_for(fp32), backbone.session_for(tmp), check)
        if result["mean_cosine"] < MIN_COSINE:
            raise TagcapError(f"the int8 backbone is refused: on {len(check)} check photos its pooled features "
                              f"have a mean cosine of {result['mean_cosine']:.4f} to float32's (minimum "
                              f"{result['min_cosine']:.4f}), below {MIN_COSINE}; calibrate on other photos or use "
                              f"--engine onnx")
        atomic.write_json(out.with_suffix(".json"), {"calibration": identity, "photos": len(photos),
                                                     "calibrated_on": split, **result})
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
    return out


def compare(fp32_session, int8_session, batch: np.ndarray) -> dict:
    """Pooled-feature cosine between two sessions on a batch: mean, minimum."""
    a = fp32_session.run(None, {"images": batch})[0]
    b = int8_session.run(None, {"images": batch})[0]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "check_photos": len(batch)}


def _pixels(backbone, photos: list[Path]) -> np.ndarray:
    from tagcap.features.images import load_image, preprocess

    return np.stack([preprocess(load_image(p), backbone.input_size, backbone.mean, backbone.std) for p in photos])


def check_record(model: Path) -> dict | None:
    """The check saved beside an int8 model when it was made."""
    path = model.with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None
