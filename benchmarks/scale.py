"""How cost grows with the number of images and of labels.

Each measurement runs in a fresh Python process, which reports its own wall time and peak
resident memory (ru_maxrss), so one measurement's memory never hides another's:

  reader      a 200,000-image list in the Multi-order release's NUS-WIDE shape (81 labels);
  extract     `FeatureCache.extract` (default backbone, offline weights, both views, grid kept) on
              1k / 5k / 20k synthetic images (a few hundred distinct PNGs, hard-linked);
  train       one decoder (cnn: linear head; ria: LSTM) on random features, N = 1k / 5k / 20k
              images with 260 labels, and 80 / 260 / 1000 / 5000 labels with 5k images; the
              median time of a training epoch (validation excluded; the first epoch is warm-up).

Fitted exponents are the slopes of log(time) against log(N). Writes
benchmarks/results/scale.{json,md,png}.

    python benchmarks/scale.py                     # everything (about 30 min on 2 cores)
    python benchmarks/scale.py --images 500,1000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


# -- data made on the fly --------------------------------------------------------------------------
def distinct_images(folder: Path, count: int, size: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"src{i:04d}.png"
        if not path.is_file():
            base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # smooth colour fields, not noise
            Image.fromarray(base).resize((size, size), Image.BICUBIC).save(path)
        paths.append(path)
    return paths


def linked_images(root: Path, n: int, sources: list[Path]) -> list[str]:
    """n image names under root/images, hard links to the distinct sources in turn."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{i:07d}.png"
        if not (images / name).exists():
            os.link(sources[i % len(sources)], images / name)
        names.append(name)
    return names


def csv_dataset(root: Path, n: int, sources: list[Path], labels: int = 20) -> Path:
    names = linked_images(root, n, sources)
    rng = np.random.default_rng(n)
    cut = int(n * 0.9)
    for split, part in (("train", names[:cut]), ("test", names[cut:])):
        rows = ["image,labels"] + [f"images/{name},{';'.join(f'l{j}' for j in rng.choice(labels, 3, replace=False))}"
                                   for name in part]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def nuswide_lists(root: Path, n: int, sources: list[Path]) -> Path:
    names = linked_images(root, n, sources)
    rng = np.random.default_rng(1)
    (root / "nus1_dict81.txt").write_text("\n".join(f"concept{i}" for i in range(81)) + "\n")
    cut = int(n * 0.8)
    for split, part in (("train", names[:cut]), ("test", names[cut:])):
        (root / f"nus1_{split}_list.txt").write_text("".join(f"{name} 0\n" for name in part))
        with open(root / f"nus1_{split}_annot.txt", "w") as f:
            for _ in part:
                row = np.zeros(81, np.uint8)
                row[rng.choice(81, 3, replace=False)] = 1
                f.write(" ".join("01"[v] for v in row) + "\n")
    return root


# -- one measurement, in its own process ------------------------------------------------------------
def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_reader(root: str) -> dict:
    from tagcap.data import read_dataset

    t0 = time.perf_counter()
    ds = read_dataset(root)
    return {"images": len(ds.all_records()), "labels": len(ds.labels), "seconds": time.perf_counter() - t0}


def measure_extract(root: str, cache: str, input_size: int) -> dict:
    from tagcap.data import read_dataset
    from tagcap.features.backbone import Backbone, BackboneSpec
    from tagcap.features.cache import FeatureCache

    records = read_dataset(root).all_records()
    backbone = Backbone(BackboneSpec(input_size=input_size))
    before = peak_mb()
    stats = FeatureCache(cache).extract(backbone, records, batch_size=16, progress=False)
    return {"images": len(records), "seconds": stats["wall_seconds"], "engine": stats["engine"],
            "peak_mb_before_extract": before}


def measure_train(method: str, n: int, labels: int, epochs: int) -> dict:
    import torch

    from tagcap.decoders import create_decoder
    from tagcap.train.loop import TrainConfig, train_on_features

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    freq = 1.0 / np.arange(1, labels + 1)  # Zipf-like label frequencies, 3.4 labels an image
    freq /= freq.sum()
    y = np.zeros((n, labels), np.float32)
    for i in range(n):
        y[i, rng.choice(labels, 3 + int(rng.random() < 0.4), replace=False, p=freq)] = 1
    x = rng.standard_normal((n, 2, 1280)).astype(np.float32)
    nv = max(n // 10, 50)
    extra = {"label_counts": y.sum(0).astype(int).tolist(), "max_len": 6} if method == "ria" else {}
    decoder = create_decoder(method, labels, 1280, **extra)
    history = train_on_features(decoder, x, y, x[:nv], y[:nv],
                                TrainConfig(epochs=epochs, patience=100, batch_size=32),
                                progress=False)
    steady = history["epoch_seconds"][1:] or history["epoch_seconds"]
    return {"images": n, "labels": labels, "method": method, "seconds": float(np.median(steady)),
            "epoch_seconds": history["epoch_seconds"]}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"measurement {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def exponent(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


# -- the report ---------------------------------------------------------------------------------------
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    e = results["exponents"]
    ext = [(results["extract"], "o-", "C0", "extraction")]  # extraction is C0 everywhere
    by_method = {key: [([r for r in results[key] if r["method"] == m], "s--", f"C{i + 1}", m)
                       for i, m in enumerate(results["methods"])] for key in ("train_images", "train_labels")}

    def panel(ax, series, x, y, title, ylabel, logy=True):
        for rows, style, colour, label in series:
            ax.plot([r[x] for r in rows], [r[y] for r in rows], style, color=colour, label=label)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set(xlabel=x, ylabel=ylabel, title=title)
        ax.legend(fontsize=8)

    panel(axes[0], [(r, s_, c, f"{m} (exponent {e['extract']:.2f})") for r, s_, c, m in ext]
          + [(r, s_, c, f"{m}: one epoch (exponent {e[f'train_{m}']:.2f})") for r, s_, c, m in by_method["train_images"]],
          "images", "seconds", "time against images", "seconds")
    panel(axes[1], ext + [(r, s_, c, f"{m} training") for r, s_, c, m in by_method["train_images"]],
          "images", "peak_mb", "memory against images", "peak resident memory (MB)", logy=False)
    panel(axes[2], [(r, s_, c, f"{m}: one epoch, 5k images (exponent {e[f'labels_{m}']:.2f})")
                    for r, s_, c, m in by_method["train_labels"]],
          "labels", "seconds", "time against labels", "seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: dict) -> str:
    m = results["machine"]
    e = results["exponents"]
    lines = [
        "# Cost growth: images and labels", "",
        f"`python benchmarks/scale.py` on {m['cpu']} ({m['cores']} cores), commit {m['commit']}, "
        f"torch {m['torch']}. Each row is a fresh process; memory is its peak resident set.", "",
        f"Fitted exponents (slope of log time on log images): extraction **{e['extract']:.2f}**, "
        + ", ".join(f"{k} training **{e[f'train_{k}']:.2f}**" for k in results["methods"])
        + "; on log labels: " + ", ".join(f"{k} **{e[f'labels_{k}']:.2f}**" for k in results["methods"]) + ".", "",
        f"## Reading a {results['reader']['images']:,}-image list (NUS-WIDE shape, 81 labels)", "",
        f"{results['reader']['seconds']:.1f} s, peak memory {results['reader']['peak_mb']:.0f} MB.", "",
        f"## Extraction ({results['extract'][0]['engine']}, {results['input_size']} px, two views, grid kept)", "",
        "| images | seconds | images/s | peak MB |", "|---|---|---|---|"]
    for r in results["extract"]:
        lines.append(f"| {r['images']:,} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.1f} | {r['peak_mb']:.0f} |")
    lines += ["", "## Decoder training: one epoch (median after the first), random 1280-d features", "",
              "| method | images | labels | seconds/epoch | peak MB |", "|---|---|---|---|---|"]
    for r in results["train_images"] + results["train_labels"]:
        lines.append(f"| {r['method']} | {r['images']:,} | {r['labels']:,} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |")
    lines += ["", "![cost growth](scale.png)", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="1000,5000,20000")
    ap.add_argument("--labels", default="80,260,1000,5000")
    ap.add_argument("--methods", default="cnn,ria")
    ap.add_argument("--reader-images", type=int, default=200_000)
    ap.add_argument("--input-size", type=int, default=128, help="backbone input side for the extraction runs")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=str(RESULTS / "scale"))
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        kind, *rest = args.child
        result = {"reader": lambda: measure_reader(*rest),
                  "extract": lambda: measure_extract(rest[0], rest[1], int(rest[2])),
                  "train": lambda: measure_train(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))}[kind]()
        print(json.dumps({**result, "peak_mb": peak_mb()}))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tagcap import atomic
    from tagcap.provenance import machine_info

    work = Path(args.work or tempfile.mkdtemp(prefix="tagcap-scale-"))
    os.environ.setdefault("TAGCAP_CACHE", str(work / "cache"))
    sources = distinct_images(work / "sources", 300, 160)
    images = [int(v) for v in args.images.split(",")]
    methods = args.methods.split(",")
    results = {"machine": machine_info(), "input_size": args.input_size, "methods": methods}

    print(f"reader: {args.reader_images:,} images")
    results["reader"] = run_child("reader", str(nuswide_lists(work / "nuswide", args.reader_images, sources)))
    results["extract"] = []
    for n in images:
        root = csv_dataset(work / f"csv{n}", n, sources)
        results["extract"].append(run_child("extract", str(root), str(work / f"features{n}"), str(args.input_size)))
        print("extract", results["extract"][-1])
    results["train_images"] = [run_child("train", m, str(n), "260", str(args.epochs)) for m in methods for n in images]
    results["train_labels"] = [run_child("train", m, "5000", l, str(args.epochs)) for m in methods
                               for l in args.labels.split(",")]
    for r in results["train_images"] + results["train_labels"]:
        print("train", {k: r[k] for k in ("method", "images", "labels", "seconds", "peak_mb")})
    ex = results["exponents"] = {"extract": exponent(images, [r["seconds"] for r in results["extract"]])}
    for m in methods:
        rows = [r for r in results["train_images"] if r["method"] == m]
        ex[f"train_{m}"] = exponent([r["images"] for r in rows], [r["seconds"] for r in rows])
        rows = [r for r in results["train_labels"] if r["method"] == m]
        ex[f"labels_{m}"] = exponent([r["labels"] for r in rows], [r["seconds"] for r in rows])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out.with_suffix(".json"), results)
    plot(results, out.with_suffix(".png"))
    atomic.write_text(out.with_suffix(".md"), markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
