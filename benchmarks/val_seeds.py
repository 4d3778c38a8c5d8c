"""One recipe on the validation split over several seeds, for a change that should move only the
random draw (a layer no longer built, an initialisation reordered): its mean ± sd before and after
the change must agree within seed noise. Test is never read.

    python benchmarks/val_seeds.py --data ../shared/datasets/corel5k --recipe cnn-rnn --seeds 0-4 \\
        --out benchmarks/results/NAME.json

Each seed trains on train with epochs chosen on validation (as `tagcap fit`), then scores validation
with the recipe's rules that fit nothing there (the emitted sequence, threshold 0.5), and mAP: MCC
thresholds fitted and scored on the same validation images would flatter them (see val_compare.py).
Run it at the commit before the change (a `git worktree`) and after; the JSON records which.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tagcap.cli_options import parse_seeds

UNFITTED_RULES = ("sequence", "threshold")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-4"), help="e.g. 0-4 or 0,2,5")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from tagcap import atomic
    from tagcap.pipeline import fit_annotator, prepare
    from tagcap.provenance import machine_info
    from tagcap.recipes import recipe_for_data

    recipe = recipe_for_data(args.recipe, args.data)
    decisions = [d for d in recipe["decisions"] if d in UNFITTED_RULES]
    if not decisions:
        ap.error(f"{args.recipe}: none of its rules ({', '.join(recipe['decisions'])}) leaves validation unfitted")
    prep = prepare(args.data)
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        fitted = fit_annotator(prep, recipe, decisions, seed=seed, progress=False)
        for m in fitted.val_metrics:
            rows.append({"seed": seed, "decision": m["decision"], "F1_L": m["per_label"]["F1"], "N+": m["n_plus"],
                         "mAP": m["mAP"], "best_epoch": fitted.history["best_epoch"],
                         "train_seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for decision in dict.fromkeys(r["decision"] for r in rows):
        mine = [r for r in rows if r["decision"] == decision]
        summary[decision] = {key: {"mean": float(np.mean([r[key] for r in mine])),
                                   "sd": float(np.std([r[key] for r in mine], ddof=1)) if len(mine) > 1 else 0.0}
                             for key in ("F1_L", "N+", "mAP")}
        print(decision, {k: f"{v['mean']:.4f} ± {v['sd']:.4f}" for k, v in summary[decision].items()})
    atomic.write_json(args.out, {"recipe": args.recipe, "split": "val", "seeds": args.seeds,
                                 "rows": rows, "summary": summary, "machine": machine_info(),
                                 "date": time.strftime("%Y-%m-%d %H:%M")})


if __name__ == "__main__":
    main()
