"""The quality guard: a small fixed benchmark on real features whose numbers live in the repository.

A 1,000-image slice of Corel-5k (the first 800 training and 200 test images, read as a JSON-samples
folder), frozen `tf_efficientnet_lite2` features at 260 px, three recipes (cnn-unsym, cnn-bce, RIA)
and three seeds each, through `tagcap bench annotate`. `tests/test_quality_guard.py` runs it again and
fails when a recipe's mean per-label F1 or mAP moves further from the recorded mean than the seed
spread allows (`tolerance`), so a change that moves quality fails CI, whatever else it passes.

    python benchmarks/quality_guard.py --data ../shared/datasets/corel5k --write
re-records benchmarks/results/quality_guard.json (do it when a change is meant to move the numbers,
and say why in the commit).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

RECORD = Path(__file__).parent / "results" / "quality_guard.json"
RECIPES = ("cnn-unsym", "cnn-bce", "ria")
SEEDS = (0, 1, 2)
N_TRAIN, N_TEST = 800, 200
METRICS = ("per_label.F1", "mAP")


def make_slice(corel: Path, out: Path) -> Path:
    """The first N_TRAIN training and N_TEST test images of Corel-5k as a JSON-samples folder (images linked)."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():
        (out / "images").symlink_to(Path(corel).resolve() / "images")
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        data = json.loads((Path(corel) / f"{split}.json").read_text())
        (out / f"{split}.json").write_text(json.dumps({"labels": data["labels"], "samples": data["samples"][:n]}))
    return out


def run(corel: Path, work: Path, cache_root: Path | None = None) -> dict:
    """Run the guard bench; {"groups": {"recipe, rule": {metric: {"mean", "sd", "values"}}}, "seconds"}."""
    from tagcap.bench import bench_annotate

    data = make_slice(corel, work / "corel-slice")
    t0 = time.perf_counter()
    rows = bench_annotate(data, work / "bench", methods=list(RECIPES), seeds=list(SEEDS), progress=False,
                          cache_root=cache_root, log=lambda *a: None)
    groups: dict[str, dict] = {}
    for row in rows:
        group = groups.setdefault(f"{row['method']}, {row['decision']}", {m: {"values": []} for m in METRICS})
        for m in METRICS:
            value = row
            for part in m.split("."):
                value = value[part]
            group[m]["values"].append(round(float(value), 5))
    for group in groups.values():
        for stat in group.values():
            v = stat["values"]
            mean = sum(v) / len(v)
            stat["mean"] = round(mean, 5)
            stat["sd"] = round(math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)), 5)
    return {"groups": groups, "seconds": round(time.perf_counter() - t0, 1)}


def tolerance(sd: float, n: int = len(SEEDS)) -> float:
    """How far a new n-seed mean may sit from the recorded n-seed mean: three standard errors of the
    difference of two such means (sd * sqrt(2 / n)), and never less than 0.005."""
    return max(3 * sd * math.sqrt(2 / n), 0.005)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/corel5k")
    ap.add_argument("--write", action="store_true", help=f"record the result in {RECORD}")
    args = ap.parse_args()
    from tagcap import atomic
    from tagcap.provenance import machine_info

    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.data), Path(tmp), cache_root=Path(tmp) / "cache")
    result.update(recipes=list(RECIPES), seeds=list(SEEDS), slice={"train": N_TRAIN, "test": N_TEST},
                  machine=machine_info(), command="python benchmarks/quality_guard.py --write")
    for name, group in result["groups"].items():
        print(f"{name:>28}: " + "  ".join(f"{m} {s['mean']:.4f} ± {s['sd']:.4f} (tolerance {tolerance(s['sd']):.4f})"
                                          for m, s in group.items()))
    if args.write:
        atomic.write_json(RECORD, result)
        print(f"wrote {RECORD}", file=sys.stderr)


if __name__ == "__main__":
    main()
