"""Fine-tuning on Corel-5k, measured (partial on cached activations, or end to end): train with
`tagcap fit` (epoch and thresholds chosen on the validation split), then score the test split once,
with the checkpoint's own tuned backbone run on the images (not the training-time cache), under
threshold 0.5 and the MCC thresholds.

    python benchmarks/finetune.py --data ../shared/datasets/corel5k \\
        --recipe cnn-unsym-partial --out benchmarks/results/corel5k-partial
    python benchmarks/finetune.py --data DIR --recipe cnn-unsym-finetune --out OUT -- --weights FILE

Arguments after `--` go to `tagcap fit`. Writes OUT/results.{json,md}; the checkpoint goes to
OUT/checkpoint (kept out of git).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PUBLISHED = [("CNN + unsymmetrical loss (Salar & Ahmadi 2023), TResNet-M 448 px fine-tuned", "threshold 0.5", .506, 189),
             ("same + MCC thresholds", "MCC thresholds", .520, 191)]
FROZEN = "results/corel5k-annotate/results.json"  # the frozen-feature rows of the same recipe, for comparison


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipe", default="cnn-unsym-partial")
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-training", action="store_true", help="score OUT/checkpoint as it is")
    ap.add_argument("fit_args", nargs="*", help="after --: more options for `tagcap fit`")
    args = ap.parse_args()

    from tagcap import atomic
    from tagcap.data import read_dataset
    from tagcap.decision import apply_rule, rule_name
    from tagcap.features.images import load_image
    from tagcap.metrics.annotation import annotation_metrics
    from tagcap.provenance import machine_info
    from tagcap.inference.taggers import Annotator

    out = Path(args.out)
    ckpt = out / "checkpoint"
    wall = None
    if not args.skip_training:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tagcap", "fit", "--data", args.data, "--recipe", args.recipe,
                        "--out", str(ckpt), "--decision", "mcc", *args.fit_args], check=True)
        wall = time.perf_counter() - t0
    config = json.loads((ckpt / "config.json").read_text())
    annotator = Annotator(ckpt)
    dataset = read_dataset(args.data)
    test = dataset.splits["test"]
    t0 = time.perf_counter()
    scores = np.concatenate([annotator.outputs([load_image(r.image) for r in test[i:i + 32]])["scores"]
                             for i in range(0, len(test), 32)])
    score_s = time.perf_counter() - t0
    targets = annotator.vocab.encode(test)
    rows = []
    for rule in ({"kind": "threshold", "t": 0.5}, config["decision"]):
        m = annotation_metrics(apply_rule(scores, rule), targets, scores)
        rows.append({"decision": rule_name(rule), **m})
    training = config["training"]
    result = {"machine": machine_info(), "command": " ".join(sys.argv), "recipe": config["recipe"],
              "wall_seconds_fit": wall, "train_seconds": training["train_seconds"],
              "probe": training.get("probe"), "best_epoch": training["best_epoch"],
              "epochs_run": training["epochs_run"], "epoch_seconds": training.get("epoch_seconds"),
              "val": config["metrics"]["val"], "test": rows, "test_scoring_seconds": score_s}
    atomic.write_json(out / "results.json", result)

    frozen = {}
    frozen_path = Path(__file__).parent / FROZEN
    if frozen_path.is_file():
        frozen = {r["decision"]: r for r in json.loads(frozen_path.read_text()) if r["method"] == "cnn-unsym"}
    m, tuned = result["machine"], config["backbone"]["tuned"]
    what = ("the whole backbone trained with the decoder on augmented images (random resized crops, flips)"
            if tuned["mode"] == "end-to-end" else
            f"stages from block {tuned['from_block']} trained with the decoder on cached activations")
    lines = [f"# {'End-to-end' if tuned['mode'] == 'end-to-end' else 'Partial'} fine-tuning on Corel-5k: "
             f"`{config['recipe']['name']}`", "",
             f"`{result['command']}` on {m['cpu']} ({m['cores']} cores)"
             + (f" with {m['gpu']}" if m.get("gpu") else "") + f", commit {m['commit']}.",
             f"Backbone {config['backbone']['name']} at {config['backbone']['input_size']} px, offline ImageNet weights; "
             f"{what}. Epoch and MCC thresholds chosen on the validation split (450 images carved from train); "
             "test (499 images) scored once, by the checkpoint's tuned backbone on the images.", "",
             f"Training: {training['train_seconds'] / 60:.1f} min for the fine-tuning stage"
             + (f", {training['probe']['train_seconds'] / 60:.1f} min for the linear probe" if training.get("probe") else "")
             + (f"; the whole `tagcap fit` (activation cache reused or extracted, probe, fine-tuning, validation scoring) "
                f"{wall / 60:.1f} min" if wall else "")
             + f". Best epoch {training['best_epoch']} of {training['epochs_run']}.", "",
             "| model | rule | F1_L | P_L | R_L | N+ | F1_I | mAP |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {tuned['mode']} fine-tuning (ours) | {r['decision']} | {r['per_label']['F1']:.3f} | {r['per_label']['P']:.3f} | "
                     f"{r['per_label']['R']:.3f} | {r['n_plus']} | {r['per_image']['F1']:.3f} | {r['mAP']:.3f} |")
    for decision, r in frozen.items():
        lines.append(f"| frozen features, same loss (ours, `corel5k-annotate`) | {decision} | {r['per_label']['F1']:.3f} | "
                     f"{r['per_label']['P']:.3f} | {r['per_label']['R']:.3f} | {r['n_plus']} | {r['per_image']['F1']:.3f} | "
                     f"{r['mAP']:.3f} |")
    for name, decision, f1, n_plus in PUBLISHED:
        lines.append(f"| {name} | {decision} | {f1:.3f} | | | {n_plus} | | |")
    atomic.write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
