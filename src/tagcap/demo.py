"""`tagcap demo`: the first thing a stranger runs. Offline, a few minutes on a laptop CPU.

Makes a synthetic scene set with label dependencies, extracts features with the offline
default backbone, trains CNN baselines, prints the metrics table, then tags the test images
through the same path as `tagcap predict` and draws them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tagcap import atomic
from tagcap.bench import bench_annotate
from tagcap.data import read_dataset
from tagcap.data.synthetic import make_synthetic_dataset
from tagcap.inference.taggers import Annotator, ModelSet
from tagcap.predict import predict_paths
from tagcap.report.plots import prediction_grid
from tagcap.report.tables import metrics_table

DEMO_METHODS = ["cnn-bce", "cnn-unsym", "ria"]  # two linear heads and a recurrent decoder


def run_demo(out: str | Path = "tagcap-demo", n_train: int = 480, n_test: int = 160, progress: bool = True,
             log=print) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "test.csv").is_file():
        log(f"making a synthetic scene set in {data} ({n_train} train, {n_test} test images)")
        make_synthetic_dataset(data, n_train=n_train, n_test=n_test)
    rows = bench_annotate(data, out, methods=DEMO_METHODS, cache_root=out / "cache", progress=progress, log=log)
    log("")
    log(metrics_table(rows))

    best = max(rows, key=lambda r: r["per_label"]["F1"])
    annotator = Annotator(out / best["checkpoint"])
    dataset = read_dataset(data)
    test = dataset.splits["test"]
    truth = {str(r.image): list(r.labels) for r in test}
    results = list(predict_paths(ModelSet([annotator]), [r.image for r in test]))
    atomic.write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    grid = [{"image": r["image"], "truth": truth[r["image"]], "predicted": [x["label"] for x in r["labels"]]}
            for r in results[:12]]
    prediction_grid(grid, out / "predictions.png")
    seconds = time.perf_counter() - t0
    log("")
    log(f"best: {best['method']} with {best['decision']}: per-label F1 {best['per_label']['F1']:.3f}, "
        f"per-image F1 {best['per_image']['F1']:.3f}")
    log(f"wrote {out}/results.md, results.json, per_label_f1.png, steps-ria.png, predictions.jsonl, "
        f"predictions.png, checkpoints/ ({seconds:.0f} s)")
    log(f"try: tagcap predict {out / 'checkpoints' / 'ria+sequence'} {test[0].image} --explain")
    return {"rows": rows, "best": best, "seconds": seconds, "out": str(out)}
