"""Train the captioner recipe with several seeds side by side and choose one on validation.

    python benchmarks/caption_seeds.py --data ../shared/datasets/flickr8k --seeds 0-4 --device cuda \
        --parallel 5 --out runs/sat-seeds

Extracts the features once (`tagcap extract --task caption`), then runs one `tagcap fit` per seed,
`--parallel` at a time (on one GPU several small decoders train side by side; on a 2-core CPU use 1).
Each fit chooses its epochs on validation and records its validation BLEU-4 at beam 3
(`metrics.val.BLEU4_quick` in the checkpoint). This script writes `OUT/seeds.json`: every seed's
validation BLEU-4, their mean and sd, and the seed with the best one. Nothing here reads the test
split: the chosen checkpoint is scored on test once, by `tagcap evaluate` (default_models.py caption
--checkpoint OUT/seed<N>).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tagcap.cli_options import parse_seeds

ROOT = Path(__file__).resolve().parent.parent


def tagcap(*args: str) -> list[str]:
    return [sys.executable, "-m", "tagcap", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipe", default="show-attend-tell")
    ap.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-4"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="passed on to tagcap fit")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    subprocess.run(tagcap("extract", "--data", args.data, "--task", "caption", "--device", args.device), check=True)
    extract_s = time.time() - t0

    pending = list(args.seeds)
    running: dict[int, subprocess.Popen] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    while pending or running:
        while pending and len(running) < args.parallel:
            s = pending.pop(0)
            cmd = tagcap("fit", "--data", args.data, "--recipe", args.recipe, "--epochs", str(args.epochs),
                         "--seed", str(s), "--device", args.device, "--out", str(out / f"seed{s}"), "--quiet",
                         *(["--set", *args.set] if args.set else []))
            log = open(out / f"seed{s}.log", "w")
            running[s] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            print(f"seed {s} started", flush=True)
        time.sleep(5)
        for s, proc in list(running.items()):
            if proc.poll() is not None:
                del running[s]
                print(f"seed {s} exited {proc.returncode} after {time.time() - t0:.0f} s", flush=True)
                if proc.returncode:
                    raise SystemExit(f"seed {s} failed: see {out / f'seed{s}.log'}")

    rows = {}
    for s in args.seeds:
        config = json.loads((out / f"seed{s}" / "config.json").read_text())
        rows[s] = {"val_BLEU4_beam3": config["metrics"]["val"]["BLEU4_quick"],
                   "best_epoch": config["training"]["best_epoch"],
                   "train_seconds": config["training"].get("train_seconds")}
        print(f"seed {s}: validation BLEU-4 (beam 3) {rows[s]['val_BLEU4_beam3']:.2f}, "
              f"best epoch {rows[s]['best_epoch']}", flush=True)
    vals = [r["val_BLEU4_beam3"] for r in rows.values()]
    best = max(rows, key=lambda s: rows[s]["val_BLEU4_beam3"])
    summary = {"recipe": args.recipe, "epochs": args.epochs, "device": args.device, "set": args.set,
               "per_seed": rows, "val_BLEU4_mean": statistics.mean(vals),
               "val_BLEU4_sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "chosen_seed": best,
               "extract_seconds": round(extract_s, 1), "wall_seconds": round(time.time() - t0, 1)}
    sys.path.insert(0, str(ROOT / "src"))
    from tagcap import atomic
    from tagcap.provenance import machine_info

    atomic.write_json(out / "seeds.json", {**summary, "machine": machine_info()})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
