"""Compare feature options for a pooled recipe on validation only, with honest thresholds.

MCC thresholds fitted on the split they are scored on flatter that split (on Corel-5k's 450
validation images: per-label F1 about 0.49 where held-out images give about 0.38). So this
carves a second, inner validation split from train: the decoder trains on the rest, the epoch and
the MCC thresholds are chosen on the inner split, and the outer validation split scores them.
The test split is never read.

    python benchmarks/val_compare.py --data ../shared/datasets/corel5k --input-size 384 \\
        --variant plain= --variant multi=blocks.4,blocks.5 --seeds 3 \\
        --out benchmarks/results/corel5k-pool-blocks-val.json

Each --variant is NAME=POOL_BLOCKS (empty: the last layer only). With --refit, each seed's
thresholds are also applied to a model trained again on train + inner validation for the chosen
epoch count (what `tagcap fit --refit` does). Features come from (or go to) the usual cache.
Writes a JSON with every seed's row and the means.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

INNER_VAL = 450  # as many images as the outer validation split


def run_variant(data: str, input_size: int | None, pool_blocks: tuple[str, ...], recipe_name: str,
                seeds: int, refit: bool = False) -> list[dict]:
    from tagcap.decision import fit_mcc_thresholds, per_label_threshold
    from tagcap.features.backbone import BackboneSpec
    from tagcap.metrics.annotation import annotation_metrics
    from tagcap.decoders.base import decoder_class
    from tagcap.pipeline import prepare, train_annotator
    from tagcap.recipes import load_recipe
    from tagcap.inference.outputs import predict_outputs

    prep = prepare(data, spec=BackboneSpec(input_size=input_size, pool_blocks=pool_blocks))
    recipe = load_recipe(recipe_name)
    kind = decoder_class(recipe["method"]).feature_kind
    x, y = prep.split("train", kind)
    x_out, y_out = prep.split("val", kind)
    perm = np.random.default_rng(1).permutation(len(x))
    inner, rest = np.sort(perm[:INNER_VAL]), np.sort(perm[INNER_VAL:])
    rows = []
    for seed in range(seeds):
        decoder, history = train_annotator(prep, recipe, x[rest], y[rest], x[inner], y[inner], seed, progress=False)
        s_in = predict_outputs(decoder, x[inner])["scores"]
        s_out = predict_outputs(decoder, x_out)["scores"]
        thresholds = fit_mcc_thresholds(s_in, y[inner])
        held_out = annotation_metrics(per_label_threshold(s_out, thresholds), y_out, s_out)
        fitted_on = annotation_metrics(per_label_threshold(s_in, thresholds), y[inner], s_in)
        rows.append({"seed": seed, "best_epoch": history["best_epoch"],
                     "outer_F1_L": held_out["per_label"]["F1"], "outer_N+": held_out["n_plus"],
                     "outer_mAP": held_out["mAP"], "inner_F1_L_thresholds_fitted_there": fitted_on["per_label"]["F1"],
                     "feature_dim": int(x.shape[-1])})
        if refit:  # as `tagcap fit --refit`: the same thresholds, weights trained again on rest + inner
            both = np.concatenate([rest, inner])
            epochs = history["best_epoch"] + 1
            again, _ = train_annotator(prep, recipe, x[both], y[both], None, None, seed, progress=False,
                                 epochs=epochs, patience=epochs + 1)
            s_again = predict_outputs(again, x_out)["scores"]
            m = annotation_metrics(per_label_threshold(s_again, thresholds), y_out, s_again)
            rows[-1].update({"refit_outer_F1_L": m["per_label"]["F1"], "refit_outer_N+": m["n_plus"],
                             "refit_outer_mAP": m["mAP"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipe", default="cnn-unsym")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--variant", action="append", required=True, help="NAME=POOL_BLOCKS (comma-separated)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--refit", action="store_true",
                    help="also score a refit on train + inner validation for the chosen epochs (same thresholds)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from tagcap import atomic
    from tagcap.provenance import machine_info

    result = {"recipe": args.recipe, "input_size": args.input_size, "refit": args.refit, "machine": machine_info(),
              "protocol": __doc__.split("\n\n")[1].replace("\n", " "), "variants": {}}
    for spec in args.variant:
        name, _, blocks = spec.partition("=")
        pool_blocks = tuple(b for b in blocks.split(",") if b)
        t0 = time.perf_counter()
        rows = run_variant(args.data, args.input_size, pool_blocks, args.recipe, args.seeds, args.refit)
        means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("seed", "feature_dim")}
        result["variants"][name] = {"pool_blocks": list(pool_blocks), "rows": rows, "mean": means,
                                    "seconds": round(time.perf_counter() - t0, 1)}
        print(name, json.dumps(means), flush=True)
    atomic.write_text(Path(args.out), json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
