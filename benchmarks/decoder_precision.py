"""The captioner decoded in bfloat16 on a CPU: how much faster, and whether its captions get worse.

    python benchmarks/decoder_precision.py speed [--photos 320]
    python benchmarks/decoder_precision.py rule --checkpoint CKPT     # Flickr8k dev, a train-only captioner
    python benchmarks/decoder_precision.py test                       # the bundled captioner, Flickr8k test

The captioner's beam search is most of what `tagcap index` adds to the backbone once the backbone
runs in 8 bits. bfloat16 decoding runs its matrix products in bfloat16 (`torch.autocast`) while the
LSTM state and the log-probabilities the beam search adds stay in float32 (decoders/show_attend_tell.py).

`speed`: the bundled captioner on the shipped int8 backbone's grids of the first --photos Corel-5k
photos, in batches of 16 as `tagcap index` runs them, on one thread (one lane of `index`):
milliseconds per batch in float32, bfloat16 and, for the record, PyTorch's dynamic int8 weights
(`torch.ao.quantization`, deprecated; measured earlier in decoder-int8.json), the kinds alternating,
the better of two passes each; and how many captions (beam 3) equal float32's. No reference is read.

`rule`, fixed before any caption quality was measured (this file's first commit says so):
  bfloat16 decoding becomes what `--engine auto` runs on a CPU with bfloat16 arithmetic (the paths
  where auto already picks the shipped 8-bit backbone: predict, index, serve, the Python API) only
  if, for a Show-Attend-Tell captioner trained on Flickr8k train alone (the bundled recipe, seed 0,
  at most 5 epochs, `tagcap fit` without --refit) and scored by `tagcap evaluate` on the Flickr8k
  dev split (tagcap's `val`) at beam 3 on the shipped 8-bit backbone's features:
    BLEU-4 (bfloat16) >= BLEU-4 (float32) - 0.25   (half the recipe's seed-to-seed sd of 0.49,
                                                    results/caption-seeds-h100.json), and
    CIDEr-D (bfloat16) >= CIDEr-D (float32) - 1.0.
  The bundled captioner cannot be judged on dev: it was trained on train + dev.
`test`: only after the rule passed, the bundled captioner on Flickr8k test, once per precision; the
bfloat16 row goes into its model card (`test_metrics_bf16`) beside float32's and the int8 backbone's. `tagcap evaluate` keeps float32 unless `--decoder-precision bfloat16` is given.
Writes benchmarks/results/decoder-precision.json (each part its own key).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "benchmarks" / "results" / "decoder-precision.json"
BLEU4_DROP, CIDER_DROP = 0.25, 1.0


def save(part: str, row: dict) -> None:
    from tagcap import atomic
    from tagcap.provenance import machine_info

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[part] = {**row, "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M")}
    atomic.write_json(RESULTS, results)
    print(json.dumps(row, indent=1), flush=True)


def speed(args) -> None:
    import numpy as np
    import torch

    from tagcap.devices import decoding
    from tagcap.features.images import load_image, preprocess
    from tagcap.inference.bundled import BUNDLED
    from tagcap.inference.taggers import encode, load_model

    torch.set_num_threads(1)
    captioner = load_model(BUNDLED / "flickr8k-captioner", engine="onnx-int8", device="cpu")
    backbone = captioner.backbone
    paths = sorted((DATA / "corel5k" / "images").rglob("*.jpeg"))[: args.photos]
    grids = []
    for i in range(0, len(paths), 16):
        batch = np.stack([preprocess(load_image(p), backbone.input_size, backbone.mean, backbone.std)
                          for p in paths[i:i + 16]])
        grids.append(torch.from_numpy(np.ascontiguousarray(encode(backbone, batch, views=1)[1][:, 0], np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        int8 = torch.ao.quantization.quantize_dynamic(captioner.decoder, {torch.nn.Linear, torch.nn.LSTMCell},
                                                      dtype=torch.qint8)
    kinds = {"float32": (captioner.decoder, contextlib.nullcontext),
             "bfloat16": (captioner.decoder, lambda: decoding("bfloat16", "cpu")),
             "int8-dynamic": (int8, contextlib.nullcontext)}
    times: dict = {k: [] for k in kinds}
    outs: dict = {}
    for _ in range(2):
        for kind, (decoder, context) in kinds.items():
            t = time.perf_counter()
            with context():
                outs[kind] = [s for g in grids for s in decoder.predict(g, beam_width=3).sequences]
            times[kind].append((time.perf_counter() - t) / len(grids) * 1000)
    best = {k: min(v) for k, v in times.items()}
    save("speed", {"photos": len(paths), "threads": 1, "batch": 16, "beam": 3, "features": "onnx-int8 view 0",
                   "ms_per_batch": {k: round(v, 1) for k, v in best.items()},
                   "speedup_over_float32": {k: round(best["float32"] / v, 2) for k, v in best.items()},
                   "identical_captions": {k: sum(a == b for a, b in zip(outs["float32"], outs[k])) for k in kinds},
                   "runs_ms": {k: [round(x, 1) for x in v] for k, v in times.items()}})


def evaluate(checkpoint: str, split: str, precision: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "tagcap", "evaluate", checkpoint, "--data", str(DATA / "flickr8k"), "--split",
               split, "--beam", "3", "--engine", "onnx-int8", "--decoder-precision", precision, "--json", str(out)]
        print("+", " ".join(cmd), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        row = json.loads(out.read_text())
        return {**{k: round(row[k], 2) for k in ("BLEU1", "BLEU4", "METEOR", "ROUGE_L", "CIDEr")},
                "wall_s": round(time.perf_counter() - t, 1)}


def rule(args) -> None:
    rows = {p: evaluate(args.checkpoint, "val", p) for p in ("float32", "bfloat16")}  # Flickr_8k.devImages.txt
    f, b = rows["float32"], rows["bfloat16"]
    passed = b["BLEU4"] >= f["BLEU4"] - BLEU4_DROP and b["CIDEr"] >= f["CIDEr"] - CIDER_DROP
    trained = json.loads((Path(args.checkpoint) / "config.json").read_text())
    save("rule", {"checkpoint": "show-attend-tell, Flickr8k train only, seed "
                                f"{trained.get('seed')}, `tagcap fit` without --refit",
                  "split": "val (Flickr8k dev)", "beam": 3, "features": "onnx-int8 (shipped)", "metrics": rows,
                  "rule": f"BLEU4 drop <= {BLEU4_DROP} and CIDEr drop <= {CIDER_DROP}",
                  "BLEU4_drop": round(f["BLEU4"] - b["BLEU4"], 2), "CIDEr_drop": round(f["CIDEr"] - b["CIDEr"], 2),
                  "passed": passed})


def test(args) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not results.get("rule", {}).get("passed"):
        sys.exit("decoder_precision.py test: run `rule` first; test is read only once the rule has passed")
    from default_models import add_card_metrics  # beside this script

    from tagcap.inference.bundled import BUNDLED

    folder = BUNDLED / "flickr8k-captioner"
    rows = {p: evaluate(str(folder), "test", p) for p in ("float32", "bfloat16")}
    save("test", {"checkpoint": "bundled flickr8k-captioner", "split": "test", "beam": 3,
                  "features": "onnx-int8 (shipped)", "metrics": rows})
    add_card_metrics(folder, "test_metrics_bf16", {"beam": 3, **{k: round(rows["bfloat16"][k], 1)
                                                                 for k in ("BLEU1", "BLEU4", "METEOR", "ROUGE_L", "CIDEr")}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    sub.add_parser("speed").add_argument("--photos", type=int, default=320)
    sub.add_parser("rule").add_argument("--checkpoint", required=True)
    sub.add_parser("test")
    args = ap.parse_args()
    {"speed": speed, "rule": rule, "test": test}[args.part](args)


if __name__ == "__main__":
    main()
