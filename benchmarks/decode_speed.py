"""Decoding time and outputs of the sequence decoders on cached features, to compare two commits.

    python benchmarks/decode_speed.py --annotators runs/corel5k --out A.json
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/decode_speed.py --annotators runs/corel5k --out B.json

Captions the Flickr8k test split (1,000 images) with the bundled captioner at beam 3 in batches of
16 (as `index` and `predict` do), and decodes the Corel-5k test split with the sequence decoders
of a `bench annotate` run folder (`checkpoints/<method>+sequence`), each twice, on one thread. Writes
each timing and a SHA-256 of each output (captions; scores rounded to 6 decimals and label sets),
so two runs show whether a change kept the outputs and what it did to the time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", required=True, help="a bench annotate run folder (its checkpoints/)")
    ap.add_argument("--methods", default="ria,cnn-rnn,order-free,attention-rnn")
    ap.add_argument("--captioner", default="flickr8k-captioner",
                    help="a bundled model name or checkpoint folder (give a path when comparing commits whose "
                         "bundles differ)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import tagcap
    from tagcap import atomic
    from tagcap.data.captions import WordVocabulary
    from tagcap.features.prepare import prepare
    from tagcap.inference.bundled import resolve
    from tagcap.inference.checkpoint import load_checkpoint
    from tagcap.inference.outputs import caption_grid, predict_outputs
    from tagcap.provenance import machine_info

    torch.set_num_threads(1)
    result: dict = {"tagcap": str(Path(tagcap.__file__).parent)}
    flickr = prepare(Path(args.data) / "flickr8k", None, None, task="caption", progress=False)
    grid = flickr.cache.load([r.key for r in flickr.dataset.splits["test"]], "grid")
    decoder, config = load_checkpoint(resolve(args.captioner)[0])
    words = WordVocabulary.from_dict(config["words"])
    seconds = []
    for _ in range(2):
        t = time.perf_counter()
        captions, _ = caption_grid(decoder, grid, words, beam_width=3, batch_size=16)
        seconds.append(round(time.perf_counter() - t, 3))
    result["captioner"] = {"images": len(grid), "seconds": seconds, "captions_sha256": digest(captions)}
    corel = prepare(Path(args.data) / "corel5k", None, None, progress=False)
    for method in args.methods.split(","):
        decoder, _ = load_checkpoint(Path(args.annotators) / "checkpoints" / f"{method}+sequence")
        x, _ = corel.split("test", decoder.feature_kind)
        seconds = []
        for _ in range(2):
            t = time.perf_counter()
            out = predict_outputs(decoder, x)
            seconds.append(round(time.perf_counter() - t, 3))
        result[method] = {"images": len(x), "seconds": seconds,
                          "scores_sha256": digest(np.asarray(out["scores"]).round(6).tolist()),
                          "labels_sha256": digest(np.asarray(out["emitted"]).astype(int).tolist())}
    atomic.write_json(args.out, {**result, "machine": machine_info()})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
