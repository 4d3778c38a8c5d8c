"""The quality guard: a small fixed benchmark on real features whose numbers live in the repository.

A 1,000-image slice of Corel-5k (the first 800 training and 200 test images, read as a JSON-samples
folder), frozen `tf_efficientnet_lite2` features at 260 px, three recipes (cnn-unsym, cnn-bce, RIA)
and three seeds each, through `tagcap bench annotate`. `tests/test_quality_guard.py` runs it again and
fails when a recipe's mean per-label F1 or mAP moves further from the recorded mean than the seed
spread allows (`tolerance`), so a change that moves quality fails CI, whatever else it passes.

    python benchmarks/quality_guard.py --data ../shared/datasets/corel5k --write
re-records benchmarks/results/quality_guard.json (do it when a change is meant to move the numbers,
and say why in the commit).

Training's floating-point sums run through other kernels on other CPUs (AVX2, AVX-512, AMX), and the
recurrent recipes amplify the difference: the same commit gives RIA's per-label F1 0.096 on the AMD
EPYC (AVX2) the record was made on and 0.088 on an Intel Xeon with AMX. So a CPU of another kind is
compared with a record of its own kind, `quality_guard-KIND.json` (`cpu_kind`), made at a commit whose
numbers the main record vouches for and named in it; `--write --kind` makes one (with the suite's one
thread per worker: OMP_NUM_THREADS=1).
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


def cpu_kind() -> str:
    """The kind of CPU whose kernels training runs on: amx, avx512, avx2 or other (Linux's cpuinfo flags)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "other"
    for kind, flag in (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return kind
    return "other"


def record_path(kind: str | None = None) -> Path:
    """The record to compare with on a CPU of `kind` (default: this one's): its own where there is one."""
    own = RECORD.with_name(f"quality_guard-{kind or cpu_kind()}.json")
    return own if own.is_file() else RECORD


def tolerance(sd: float, n: int = len(SEEDS)) -> float:
    """How far a new n-seed mean may sit from the recorded n-seed mean: three standard errors of the
    difference of two such means (sd * sqrt(2 / n)), and never less than 0.005."""
    return max(3 * sd * math.sqrt(2 / n), 0.005)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/corel5k")
    ap.add_argument("--write", action="store_true", help=f"record the result in {RECORD}")
    ap.add_argument("--kind", action="store_true",
                    help="with --write: record it as this CPU kind's own (quality_guard-KIND.json)")
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
        path = RECORD.with_name(f"quality_guard-{cpu_kind()}.json") if args.kind else RECORD
        atomic.write_json(path, {**result, "cpu_kind": cpu_kind()})
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
