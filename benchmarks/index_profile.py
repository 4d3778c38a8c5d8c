"""Where `tagcap index` spends its model time: the backbone against each bundled model's decoder.

    python benchmarks/index_profile.py [--photos 320]

Corel-5k photos, decoded and preprocessed beforehand (so only the models are timed), in batches of
16 as `tagcap index` runs them, on this process's CPU threads. Per batch: the backbone (both views,
the engine `auto` picks), then each model's own work measured as its `ModelSet` run minus the
backbone's. Then the three models together through one `ModelSet`, once with one lane (all
threads on each batch, as `tagcap index` runs) and once with two lanes of one thread each working
on alternate batches (what a second torchrun process does, inside one process): photos/s of each.
Last, decoding one large JPEG (a Corel-5k photo enlarged to 4000x3000, quality 92) whole and at the
reduced scale the models' input size allows (`load_image(reduce_to=...)`), median of 9 each.
Writes benchmarks/results/index-profile.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "corel5k"
sys.path.insert(0, str(ROOT / "src"))


def batches(n: int, backbone) -> list:
    import numpy as np

    from tagcap.features.images import load_image, preprocess

    paths = sorted((DATA / "images").rglob("*.jpeg"))[:n]
    return [np.stack([preprocess(load_image(p), backbone.input_size, backbone.mean, backbone.std)
                      for p in paths[i:i + 16]]) for i in range(0, len(paths), 16)]


def per_model(n: int) -> dict:
    import torch

    from tagcap.inference.bundled import default_sources
    from tagcap.inference.taggers import ModelSet, encode

    models = ModelSet.load(default_sources(), device="cpu")
    work = batches(n, models.backbone)
    models.run(work[0])  # warm
    t = time.perf_counter()
    for b in work:
        encode(models.backbone, b, models.views)
    backbone_s = (time.perf_counter() - t) / len(work)
    out = {"threads": torch.get_num_threads(), "batches": len(work), "backbone_ms_per_batch": round(1000 * backbone_s, 1)}
    for m in models.models:
        one = ModelSet([m], views=models.views)
        t = time.perf_counter()
        for b in work:
            one.run(b)
        out[f"{m.name}_ms_per_batch"] = round(1000 * ((time.perf_counter() - t) / len(work) - backbone_s), 1)
    out["large_jpeg_decode"] = large_jpeg(models.decode_size)
    return out


def lanes(n: int, count: int) -> float:
    """photos/s of the three models together, `count` lanes (1: all threads on each batch)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    if count > 1:
        torch.set_num_threads(1)  # before the backbone's session is made: it takes this thread count
    from tagcap.inference.bundled import default_sources
    from tagcap.inference.taggers import ModelSet

    models = ModelSet.load(default_sources(), device="cpu")
    work = batches(n, models.backbone)
    models.run(work[0])
    t = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(models.run, work))
    return round(sum(len(b) for b in work) / (time.perf_counter() - t), 2)


def large_jpeg(decode_size: int) -> dict:
    import tempfile

    from PIL import Image

    from tagcap.features.images import load_image

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.jpg"
        Image.open(DATA / "images" / "108000" / "108007.jpeg").convert("RGB").resize((4000, 3000)).save(big, quality=92)
        out = {}
        for name, reduce_to in (("full", None), ("reduced", decode_size)):
            times = []
            for _ in range(9):
                t = time.perf_counter()
                img = load_image(big, reduce_to=reduce_to)
                times.append(time.perf_counter() - t)
            out[f"{name}_ms"] = round(1000 * statistics.median(times), 1)
            out[f"{name}_size"] = list(img.size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=320)
    ap.add_argument("--lanes", type=int, default=None, help=argparse.SUPPRESS)  # one measurement, in a fresh process
    args = ap.parse_args()
    if args.lanes:
        print(json.dumps(lanes(args.photos, args.lanes)))
        return
    from tagcap import atomic
    from tagcap.provenance import machine_info

    result = per_model(args.photos)
    for count in (1, 2):  # each in its own process: thread counts are set once per process
        rates = [json.loads(subprocess.run([sys.executable, __file__, "--photos", str(args.photos), "--lanes",
                                            str(count)], capture_output=True, text=True, check=True).stdout)
                 for _ in range(3)]
        result[f"photos_per_second_{count}_lane{'s' if count > 1 else ''}"] = statistics.median(rates)
    result.update(machine=machine_info(), date=time.strftime("%Y-%m-%d %H:%M"))
    atomic.write_json(ROOT / "benchmarks" / "results" / "index-profile.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
