"""Feature-extraction speed of each backbone engine on this machine.

Two figures per engine (tf_efficientnet_lite2, offline weights, 260 px):
  forward:     pure network time on random input, batch 32, median of several batches (ms per image);
  end-to-end:  `FeatureCache.extract` on real images (decode, resize, two views, forward, write),
               images per second, on the first N images of the dataset.
Plus the full dataset end to end with the engine `auto` picks. Also checks each engine's
features against eager on the CPU in float32 (max abs difference).

    python benchmarks/extract_speed.py --data ../shared/datasets/corel5k --subset 320 --full
writes benchmarks/results/extract_speed.{json,md}.

    python benchmarks/extract_speed.py --data DIR --device cuda --engines channels_last,eager \
        --cpu-engines onnx --out benchmarks/results/extract_speed-cuda
times the GPU engines (float16 autocast) and, in the same run on the same machine, the CPU engines
named by --cpu-engines: the GPU-over-CPU ratio comes from one run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from tagcap import atomic
from tagcap.data import read_dataset
from tagcap.features.backbone import Backbone, BackboneSpec
from tagcap.features.cache import FeatureCache
from tagcap.provenance import machine_info

ENGINES = ("eager", "channels_last", "onnx")


def forward_ms(backbone: Backbone, batch: int, reps: int) -> float:
    x = np.random.default_rng(0).standard_normal((batch, 3, backbone.input_size, backbone.input_size)).astype(np.float32)
    backbone(x)  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        backbone(x)
        times.append((time.perf_counter() - t) * 1000 / batch)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--subset", type=int, default=320, help="images for each engine's end-to-end run")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16, help="images per extraction batch (x2 views)")
    ap.add_argument("--full", action="store_true", help="also extract the whole dataset with engine auto")
    ap.add_argument("--device", default="cpu", help="where the engines run: cpu, cuda, cuda:N")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated (default: %(default)s)")
    ap.add_argument("--cpu-engines", default="", help="engines also timed on the CPU in the same run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "extract_speed"))
    args = ap.parse_args()

    records = read_dataset(args.data).all_records()
    spec = BackboneSpec()
    work = Path(tempfile.mkdtemp(prefix="tagcap-bench-"))
    rows = []
    x = np.random.default_rng(1).standard_normal((4, 3, 260, 260)).astype(np.float32)
    ref = Backbone(spec, engine="eager", cache_root=work)(x)
    runs = [(e, args.device) for e in args.engines.split(",") if e] + \
           [(e, "cpu") for e in args.cpu_engines.split(",") if e]
    try:
        for engine, device in runs:
            backbone = Backbone(spec, engine=engine, cache_root=work, device=device)
            out = backbone(x)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, out))
            ms = forward_ms(backbone, 32, args.reps)
            stats = FeatureCache(work / f"e2e-{engine}-{device}").extract(backbone, records[:args.subset],
                                                                 batch_size=args.batch_size, progress=False)
            rows.append({"engine": engine, "device": device, "forward_ms_per_image": round(ms, 2),
                         "forward_images_per_second": round(1000 / ms, 1),
                         "end_to_end_images_per_second": stats["images_per_second"],
                         "end_to_end_views_per_second": round(stats["images_per_second"] * 2, 1),
                         "max_abs_diff_vs_eager": diff, "subset_images": min(args.subset, len(records))})
            print(rows[-1], flush=True)
        full = None
        if args.full:
            backbone = Backbone(spec, engine="auto", cache_root=work, device=args.device)
            stats = FeatureCache(work / "full").extract(backbone, records, batch_size=args.batch_size, progress=True)
            full = {"engine": backbone.engine, "images": len(records), "views": 2, **stats}
            print(full, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {"dataset": str(Path(args.data).name), "device": args.device, "backbone": "tf_efficientnet_lite2", "input_size": 260,
              "batch_size": args.batch_size, "engines": rows, "full_dataset": full, "machine": machine_info(),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), result)
    md = [f"# Feature extraction speed: tf_efficientnet_lite2, 260 px, {result['dataset']}", "",
          f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; commit "
          f"{result['machine']['commit']}; {result['date']}.", "",
          "| engine | device | forward ms/img (batch 32, random input) | forward img/s | end-to-end img/s (2 views) "
          "| end-to-end views/s | max abs diff vs CPU eager |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['engine']} | {r['device']} | {r['forward_ms_per_image']} | {r['forward_images_per_second']} | "
                  f"{r['end_to_end_images_per_second']} | {r['end_to_end_views_per_second']} | "
                  f"{r['max_abs_diff_vs_eager']:.1e} |")
    if full:
        md += ["", f"Whole dataset, engine `{full['engine']}`: {full['images']} images x 2 views in "
                   f"{full['wall_seconds']} s ({full['images_per_second']} images/s; the network alone ran at "
                   f"{full['forward_views_per_second']} views/s)."]
    md += ["", f"End-to-end rows: the first {rows[0]['subset_images']} images, decode + resize + both views + "
               "forward + memory-mapped write, decoding in threads beside the engine (2 on a small machine, up to 8)."]
    atomic.write_text(out.with_suffix(".md"), "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
