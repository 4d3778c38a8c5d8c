"""How fast the bundled default models tag and caption photos on this machine, from a cold start.

    python benchmarks/predict_defaults.py --data ../shared/datasets/corel5k --out benchmarks/results/predict_defaults

1. First photo: `tagcap predict PHOTO` as a new process (HF_HUB_OFFLINE=1), model loading included,
   wall time of the whole command; the median of --repeats runs. The float32 ONNX export of the
   backbone is made once per machine and cached (`~/.cache/tagcap/onnx`): the first run on a fresh
   machine pays it, and is reported apart ("first ever"); the shipped int8 backbone needs no export.
2. A batch: `tagcap predict` over --photos Corel-5k test photos to a JSON Lines file; photos/s counts
   the photos over the time from the process start to its end minus the one-photo time (so loading
   is not counted twice), and, separately, over the whole command.

Each engine of --engines (default: predict's own, the shipped int8 backbone, and float32 ONNX) is
timed in turn within each repeat. Writes OUT.json and OUT.md with the machine and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", default="auto,onnx",
                    help="engines timed in turn within each repeat (auto: predict's default, the shipped int8 "
                         "backbone; onnx: float32)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from tagcap import atomic
    from tagcap.data import read_dataset
    from tagcap.provenance import machine_info

    test = read_dataset(args.data).splits["test"]
    photos = [str(r.image) for r in test[: args.photos]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    engines = args.engines.split(",")
    runs = {e: {"one": [], "batch": []} for e in engines}
    result = {"machine": machine_info(), "photos": len(photos), "repeats": args.repeats, "engines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            tagcap = [sys.executable, "-m", "tagcap", "predict", "--device", "cpu", "--quiet", "--engine", engine]
            fresh_env = {**env, "TAGCAP_CACHE": str(Path(tmp) / f"fresh-{engine}")}  # what a fresh install pays once
            result["engines"][engine] = {"first_ever_s": round(timed(tagcap + [photos[0]], fresh_env), 2)}
        for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits both engines
            for engine in engines:
                tagcap = [sys.executable, "-m", "tagcap", "predict", "--device", "cpu", "--quiet", "--engine", engine]
                runs[engine]["one"].append(timed(tagcap + [photos[0]], env))
                out = Path(tmp) / f"tags-{engine}.jsonl"
                runs[engine]["batch"].append(timed(tagcap + photos + ["--output", str(out)], env))
                lines = out.read_text().splitlines()
                assert len(lines) == len(photos), (len(lines), len(photos))
                result["engines"][engine]["sample"] = {k: json.loads(lines[0])[k] for k in ("image", "labels", "caption")}
    for engine in engines:
        one, batch = runs[engine]["one"], runs[engine]["batch"]
        one_s, batch_s = statistics.median(one), statistics.median(batch)
        result["engines"][engine].update({
            "first_photo_s": round(one_s, 2), "first_photo_runs_s": [round(x, 2) for x in one],
            "batch_s": round(batch_s, 2), "batch_runs_s": [round(x, 2) for x in batch],
            "photos_per_s_after_loading": round(len(photos) / max(batch_s - one_s, 1e-9), 1),
            "photos_per_s_whole_command": round(len(photos) / batch_s, 1)})
    atomic.write_json(args.out + ".json", result)
    m = result["machine"]
    rows = [("one photo, whole command (model loading included)", lambda r: f"{r['first_photo_s']:.2f} s"),
            ("one photo on a fresh machine (nothing cached yet)", lambda r: f"{r['first_ever_s']:.2f} s"),
            (f"{len(photos)} photos, whole command", lambda r: f"{r['batch_s']:.2f} s ({r['photos_per_s_whole_command']} photos/s)"),
            (f"{len(photos)} photos, after loading", lambda r: f"{r['photos_per_s_after_loading']} photos/s")]
    md = ["# Default models: predict speed from a cold start", "",
          f"Machine: {m['cpu']}, {m['cores']} cores; commit {m['commit']}; `tagcap predict --device cpu --engine E` "
          f"(the three bundled models, one backbone pass per photo), medians of {args.repeats} runs, the engines "
          "interleaved. auto is predict's default: the int8 backbone shipped with tagcap; onnx is float32.", "",
          "| measure | " + " | ".join(engines) + " |", "|---|" + "---|" * len(engines)]
    md += [f"| {name} | " + " | ".join(cell(result["engines"][e]) for e in engines) + " |" for name, cell in rows]
    md += ["", f"Sample ({engines[0]}): `{json.dumps(result['engines'][engines[0]]['sample'])[:400]}`", ""]
    atomic.write_text(Path(args.out + ".md"), "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
