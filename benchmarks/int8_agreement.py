"""How close the shipped int8 backbone's features stay to float32's on photos unlike its calibration set.

    python benchmarks/int8_agreement.py [--photos 500]

The shipped int8 backbone (`src/tagcap/bundled/int8-backbone/`) was calibrated on Corel-5k train
photos: 1990s stock photography. Its activation ranges were learnt there, so photos of another kind
could fall outside them. This runs float32 ONNX and the shipped int8 model on the first --photos
test photos of each dataset (Corel-5k test, never calibrated on; Flickr8k test, amateur photos of
people and dogs) and reports the cosine between their features: pooled vectors (what the
annotators read) and grid cells (what the captioner reads), mean, 1st percentile and minimum.
No label or caption is read. Writes benchmarks/results/int8-agreement.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def summary(c: np.ndarray) -> dict:
    return {"mean": round(float(c.mean()), 4), "p1": round(float(np.percentile(c, 1)), 4),
            "min": round(float(c.min()), 4), "n": int(c.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=500)
    args = ap.parse_args()

    from tagcap import atomic
    from tagcap.data import read_dataset
    from tagcap.features.backbone import Backbone
    from tagcap.features.quantize import _pixels, shipped_model
    from tagcap.provenance import machine_info

    fp32, int8 = Backbone(engine="onnx"), Backbone(engine="onnx-int8")
    assert int8.quantized == shipped_model()["calibration"], "set no $TAGCAP_CALIBRATION: this checks the shipped model"
    result: dict = {"int8_backbone": int8.quantized, "photos_per_dataset": args.photos, "datasets": {}}
    for name, task in (("corel5k", "annotation"), ("flickr8k", "caption")):
        records = read_dataset(DATA / name, task=task).splits["test"][: args.photos]
        pooled, grid = [], []
        for i in range(0, len(records), 32):
            batch = _pixels(fp32, [r.image for r in records[i:i + 32]])
            (pa, ga), (pb, gb) = fp32(batch), int8(batch)
            pooled.append(cosines(pa, pb))
            grid.append(cosines(ga, gb).ravel())
        result["datasets"][name] = {"photos": len(records), "pooled": summary(np.concatenate(pooled)),
                                    "grid_cells": summary(np.concatenate(grid))}
        print(name, result["datasets"][name], flush=True)
    result.update(machine=machine_info(), date=time.strftime("%Y-%m-%d %H:%M"))
    atomic.write_json(ROOT / "benchmarks" / "results" / "int8-agreement.json", result)


if __name__ == "__main__":
    main()
