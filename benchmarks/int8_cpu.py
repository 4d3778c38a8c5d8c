"""Does the 8-bit backbone hold on this CPU? The shipped int8 model against float32 ONNX, run here.

    python benchmarks/int8_cpu.py    # about 3 minutes on 2 cores

onnxruntime runs 8-bit convolutions with VNNI (or AMX) where the CPU has it, summing products in
32 bits; on x86 without it, its AVX2 kernels add pairs of products in 16-bit lanes that saturate.
The shipped model was made and checked on a CPU with VNNI. This script measures, on this CPU, with
the sessions made directly:

1. agreement: pooled-feature cosine between float32 and the shipped int8 model on the 499 Corel-5k
   test photos (never calibrated on): mean, 1st percentile, minimum; `shipped_int8` is run by
   onnxruntime's own (fused) kernels, `shipped_int8_engine` as the onnx-int8 engine runs it here
   (unfused where the fused kernels saturate: `quantize.int8_session_options`);
2. the same for a model quantized here with 7-bit weights (`reduce_range=True`, onnxruntime's advice
   for non-VNNI CPUs), calibrated on the first 448 Corel-5k train photos, as the shipped one was on 512;
3. speed: ms per photo at batch 32, the four sessions interleaved for --rounds rounds (medians).

Writes benchmarks/results/int8-<arithmetic>.json (`tagcap.devices.int8_arithmetic()`: vnni,
saturating or other) with the machine, its CPU features and the commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tagcap import atomic  # noqa: E402
from tagcap.devices import int8_arithmetic  # noqa: E402
from tagcap.provenance import machine_info  # noqa: E402


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"mean": round(float(cos.mean()), 4), "p1": round(float(np.percentile(cos, 1)), 4),
            "min": round(float(cos.min()), 4), "photos": len(cos)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "corel5k"))
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    from tagcap.features.backbone import Backbone
    from tagcap.features.quantize import _pixels, quantize_onnx, shipped_model

    data = Path(args.data)
    samples = {split: json.loads((data / f"{split}.json").read_text())["samples"] for split in ("train", "test")}
    train = [data / "images" / s["image_name"] for s in samples["train"][:448]]
    test = [data / "images" / s["image_name"] for s in samples["test"]]
    fp32 = Backbone(engine="onnx")
    shipped = shipped_model()["path"]
    sessions = {"float32": fp32._session, "shipped_int8": fp32.session_for(shipped),
                "shipped_int8_engine": fp32.session_for(shipped, int8=True)}

    with tempfile.TemporaryDirectory(prefix="tagcap-int8-cpu-") as work:
        seven = Path(work) / "reduce-range.onnx"
        quantize_onnx(fp32._onnx_path(), seven, _pixels(fp32, train), reduce_range=True)
        sessions["reduce_range_int8"] = fp32.session_for(seven)

        pixels = _pixels(fp32, test)
        pooled = {name: np.concatenate([s.run(None, {"images": pixels[i:i + 32]})[0] for i in range(0, len(pixels), 32)])
                  for name, s in sessions.items()}
        agreement = {name: cosines(pooled["float32"], pooled[name]) for name in sessions if name != "float32"}
        print("agreement:", agreement, flush=True)

        batch = pixels[:32]
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for s in sessions.values():
            s.run(None, {"images": batch})  # warm-up
        for _ in range(args.rounds):
            for name, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {"images": batch})
                times[name].append((time.perf_counter() - t) * 1000 / len(batch))
    speed = {name: round(statistics.median(v), 2) for name, v in times.items()}
    speed.update({f"{name}_speedup": round(speed["float32"] / speed[name], 2) for name in sessions if name != "float32"})
    print("speed (ms/photo, batch 32):", speed, flush=True)
    arithmetic = int8_arithmetic()
    result = {"int8_arithmetic": arithmetic, "agreement_test_cosine": agreement, "speed_ms_per_photo": speed,
              "rounds": args.rounds, "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M")}
    atomic.write_json(ROOT / "benchmarks" / "results" / f"int8-{arithmetic}.json", result)


if __name__ == "__main__":
    main()
