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

Without calibration photos, the int8 model shipped in the package (`bundled/int8-backbone/`) is used
when it fits: it was made by this module from the default models' backbone (`tf_efficientnet_lite2`,
its offline weights, 260 px, no pooled blocks), calibrated on the first 512 Corel-5k train photos
(`benchmarks/default_models.py int8`), and is what `predict`, `index`, `serve` and `tagcap.load()` run
by default on an x86 CPU with VNNI or AMX (`photo_engine`). On one without, onnxruntime's 8-bit
kernels saturate, so there the engine runs the model unfused, in float32 arithmetic: close to
VNNI's features, slower than float32 (`int8_session_options` has the numbers). It became the default because cnn-unsym + MCC, trained and
scored on its features, kept Corel-5k per-label F1 within 0.005 of float32's (5 seeds each,
`benchmarks/int8.py`); the bundled models' test metrics on its features are in their cards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from tagcap import atomic, devices
from tagcap.errors import ConfigError, TagcapError
from tagcap.hashing import file_sha256

log = logging.getLogger(__name__)

CALIBRATION_ENV = "TAGCAP_CALIBRATION"
SHIPPED = Path(__file__).resolve().parent.parent / "bundled" / "int8-backbone"
SHIPPED_RECORD = "int8.json"
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
        raise ConfigError(f"the onnx-int8 engine calibrates on photos: give --calibration DIR (or set "
                          f"${CALIBRATION_ENV}), a folder of at least {MIN_PHOTOS} photos")
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--calibration {folder}: not a folder")
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    photos = photos[:CALIBRATION_PHOTOS]
    if len(photos) < MIN_PHOTOS:
        raise ConfigError(f"--calibration {folder}: {len(photos)} photos; at least {MIN_PHOTOS} are needed")
    digest = hashlib.sha256("".join(file_sha256(p) for p in photos).encode()).hexdigest()[:12]
    return photos, digest


def shipped_model() -> dict | None:
    """The shipped int8 backbone's record (what it was made from, its check; "path": the model file),
    or None when this installation has none."""
    record = SHIPPED / SHIPPED_RECORD
    if not record.is_file():
        return None
    info = json.loads(record.read_text())
    return {**info, "path": SHIPPED / info["file"]}


def shipped_fits(name: str, weights_id: str | None, input_size: int | None, pool_blocks=()) -> dict | None:
    """The shipped int8 backbone's record if it was made from this backbone (same network, weights,
    input side and pooled blocks; `input_size` None: the network's own), else None."""
    info = shipped_model()
    if info is None or weights_id is None or tuple(pool_blocks or ()) != tuple(info["pool_blocks"]):
        return None
    if name != info["backbone"] or weights_id != info["weights"] or input_size not in (None, info["input_size"]):
        return None
    return info


def int8_source(name: str, weights_id: str | None, input_size: int | None, pool_blocks=()) -> tuple[str, Path | None]:
    """Where this backbone's int8 model comes from: (its calibration identity, the shipped model file),
    or (identity, None) when it is to be calibrated here on $TAGCAP_CALIBRATION's photos, which win
    when given. Refused, naming both ways, when there are no photos and the shipped model does not fit."""
    if os.environ.get(CALIBRATION_ENV):
        return calibration_set()[1], None
    info = shipped_fits(name, weights_id, input_size, pool_blocks)
    if info is not None:
        return info["calibration"], info["path"]
    shipped = shipped_model()
    fits = (f"; the int8 backbone shipped with tagcap fits {shipped['backbone']} with its offline weights at "
            f"{shipped['input_size']} px only" if shipped else "")
    raise ConfigError(f"the onnx-int8 engine calibrates on photos like yours: give --calibration DIR (or set "
                      f"${CALIBRATION_ENV}), a folder of at least {MIN_PHOTOS} photos; the first "
                      f"{CALIBRATION_PHOTOS} in path order are used{fits}")


def photo_engine(engine: str, name: str, weights_id: str | None, input_size: int | None, pool_blocks=(),
                 device: str = "cpu") -> str:
    """The engine that tags and captions photos (`predict`, `index`, `serve`, the Python API) for
    `engine`: `auto` on a CPU is `onnx-int8` when the shipped int8 backbone fits the model's backbone,
    onnxruntime is installed and the CPU is an x86 one with VNNI or AMX, else `auto` (float32 ONNX). Research commands (`extract`, `fit`,
    `evaluate`, `bench`) keep float32 for `auto`, so that reported numbers are float32's."""
    import importlib.util

    if engine != "auto" or str(device).split(":")[0] != "cpu" or importlib.util.find_spec("onnxruntime") is None:
        return engine
    if devices.int8_arithmetic() != "vnni":  # measured to hold only there
        return engine
    return "onnx-int8" if shipped_fits(name, weights_id, input_size, pool_blocks) is not None else engine


def int8_session_options(ort, opts) -> None:
    """How an 8-bit model's session runs on this CPU. With VNNI or AMX (and on CPUs not measured),
    onnxruntime fuses each QuantizeLinear / DequantizeLinear pair around an operator into its 8-bit
    kernel. On x86 without VNNI those kernels add pairs of products in 16-bit sums that saturate
    (`devices.int8_arithmetic`), so there the graph runs as written, unfused: every convolution on
    the dequantized weights and activations in float32, each output quantized again where the model
    says. That is the arithmetic the model defines, which VNNI's 32-bit integer sums compute exactly
    and float32 sums to within their rounding (a rounding can still move a value across a
    quantization step, so the two are close, not equal). Measured on the AVX2-only EPYC: the shipped
    model's pooled features on the 499 Corel-5k test photos had a cosine to float32's of mean 0.9938,
    1st percentile 0.981, minimum 0.9716, against 0.994 / 0.981 / 0.972 with VNNI's kernels on the
    AVX-512 EPYC it was made on (fused on the AVX2 CPU: 0.957 / 0.80 / 0.72; benchmarks/int8_cpu.py),
    and the bundled annotator of then scored per-label F1 0.438 on them against 0.435 with VNNI's
    (float32 0.442; benchmarks/results/int8-reference-check.json). It is slower than float32 there,
    which is why `auto` does not pick it on such a CPU."""
    if devices.int8_arithmetic() == "saturating":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL


@functools.cache
def warn_unfused_int8() -> None:
    """Said once per process where `--engine onnx-int8` is asked for on a CPU without VNNI."""
    if devices.int8_arithmetic() == "saturating":
        log.warning("this CPU has no VNNI (AVX512-VNNI, AVX-VNNI or AMX), without which onnxruntime's 8-bit "
                    "kernels saturate: onnx-int8 runs the 8-bit model unfused in float32 instead, close to the "
                    "features a CPU with VNNI gives but slower than --engine onnx (float32), which auto picks here")


def quantized_model(fp32: Path, backbone, photos: list[Path], identity: str) -> Path:
    """The int8 model for `fp32` calibrated on `photos`: made, checked and kept on first use."""
    out = fp32.with_name(f"{fp32.stem}-int8-{identity}.onnx")
    if out.is_file():
        return out
    batch = _pixels(backbone, photos)
    split = len(batch) - min(CHECK_PHOTOS, len(batch) // 4)
    calibrate, check = batch[:split], batch[split:]
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    try:
        quantize_onnx(fp32, tmp, calibrate)
        result = compare(backbone.session_for(fp32), backbone.session_for(tmp, int8=True), check)
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
    return out


def quantize_onnx(fp32: Path, out: Path, calibrate: np.ndarray, reduce_range: bool = False) -> None:
    """The quantization itself, unchecked: QDQ, per-channel int8 weights (7-bit with `reduce_range`),
    uint8 activations with MinMax ranges over `calibrate` (preprocessed photos, in batches of 8)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"images": calibrate[i:i + 8]} for i in range(0, len(calibrate), 8)])

        def get_next(self):
            return next(self.rows, None)

    pre = out.with_suffix(f".pre{os.getpid()}")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        pre.unlink(missing_ok=True)


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
