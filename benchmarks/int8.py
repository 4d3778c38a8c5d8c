"""The onnx-int8 engine against float32 ONNX: speed, feature agreement and Corel-5k per-label F1.

    python benchmarks/int8.py --data ../shared/datasets/corel5k

Calibration: the first 512 Corel-5k *train* photos (list order), linked into a temporary folder.
1. Speed: both sessions on the same 32 preprocessed test photos (batch 32), interleaved for
   --rounds rounds in this one process; median ms per photo each, and their ratio.
2. Agreement: pooled-feature cosine, float32 vs int8, on every test photo (499).
3. Quality: `tagcap bench annotate --methods cnn-unsym --seeds 0-4`, once with each engine (int8
   features get a cache of their own); per-label F1 with MCC thresholds, 5-seed mean and sd each.
Writes benchmarks/results/int8.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tagcap import atomic  # noqa: E402
from tagcap.provenance import machine_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "corel5k"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--skip-f1", action="store_true", help="speed and agreement only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8.json"),
                    help="where the results go (another machine's numbers: another file)")
    ap.add_argument("--work", default=None, help="working folder (default: a new temporary one); a bench "
                                                 "already finished there is read, not run again")
    args = ap.parse_args()
    data = Path(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="tagcap-int8-"))
    calib = work / "calibration"
    if not calib.is_dir():
        calib.mkdir(parents=True)
        train = json.loads((data / "train.json").read_text())["samples"]
        for s in train[:512]:
            (calib / s["image_name"].replace("/", "_")).symlink_to((data / "images" / s["image_name"]).resolve())
    os.environ["TAGCAP_CALIBRATION"] = str(calib)

    from tagcap.features.backbone import Backbone
    from tagcap.features.quantize import _pixels, check_record, compare

    fp32 = Backbone(engine="onnx")
    int8 = Backbone(engine="onnx-int8")
    test = [data / "images" / s["image_name"] for s in json.loads((data / "test.json").read_text())["samples"]]
    batch = _pixels(fp32, test[:32])
    for b in (fp32, int8):
        b(batch)  # warm-up
    times = {"fp32": [], "int8": []}
    for _ in range(args.rounds):
        for name, b in (("fp32", fp32), ("int8", int8)):
            t = time.perf_counter()
            b(batch)
            times[name].append((time.perf_counter() - t) * 1000 / len(batch))
    speed = {k: round(statistics.median(v), 2) for k, v in times.items()}
    speed["speedup"] = round(speed["fp32"] / speed["int8"], 2)
    print("speed (ms/photo, batch 32):", speed, flush=True)
    every = _pixels(fp32, test)
    agree = compare(fp32._session, int8._session, every)
    print("agreement on test:", agree, flush=True)
    int8_model = next((fp32.cache_root / "onnx").glob(f"*-int8-{int8.quantized}.onnx"))

    quality = {}
    if not args.skip_f1:
        for engine in ("onnx", "onnx-int8"):
            out = work / f"bench-{engine}"
            if not (out / "results.json").is_file():
                subprocess.run([sys.executable, "-m", "tagcap", "bench", "annotate", "--data", str(data), "--methods",
                                "cnn-unsym", "--seeds", "0-4", "--engine", engine, "--out", str(out), "--quiet"],
                               check=True)
            rows = json.loads((out / "results.json").read_text())
            quality[engine] = _f1_summary(rows)
            print(engine, quality[engine], flush=True)
        quality["int8_minus_fp32"] = round(quality["onnx-int8"]["mean"] - quality["onnx"]["mean"], 4)
    result = {"speed_ms_per_photo": speed, "agreement_test": agree, "check_at_build": check_record(int8_model),
              "calibration": "first 512 Corel-5k train photos", "quality_cnn_unsym_mcc_per_label_f1": quality,
              "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M")}
    atomic.write_json(Path(args.out), result)
    print(json.dumps(result, indent=1))


def _f1_summary(results: dict) -> dict:
    """Per-label F1 of cnn-unsym with MCC thresholds, per seed, from a bench's results.json."""
    f1 = [r["per_label"]["F1"] for r in results["rows"] if r["method"] == "cnn-unsym" and r["decision"].startswith("MCC")]
    return {"per_seed": [round(v, 4) for v in f1], "mean": round(float(np.mean(f1)), 4),
            "sd": round(float(np.std(f1, ddof=1)), 4) if len(f1) > 1 else 0.0}


if __name__ == "__main__":
    main()
