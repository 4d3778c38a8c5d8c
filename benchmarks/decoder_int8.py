"""The bundled captioner with 8-bit weights (PyTorch dynamic quantization): speed and agreement.

    python benchmarks/decoder_int8.py [--photos 320]

Not used by tagcap yet: this measures whether it is worth doing. The captioner's beam search is
most of what `tagcap index` adds to the backbone. The decoder as shipped (float32 arithmetic) and
after `torch.ao.quantization.quantize_dynamic` of its `Linear` and `LSTMCell` layers to int8, on
the cached float32 grids of the first --photos Corel-5k photos (view 0), in batches of 16 as
`tagcap index` runs them, on one thread (one lane of `index`): milliseconds per batch (the better
of two passes, the two kinds alternating), and how many captions (beam 3) are identical. No
reference caption is read. Writes benchmarks/results/decoder-int8.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "corel5k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=320)
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()

    import numpy as np
    import torch

    from tagcap import atomic
    from tagcap.inference.bundled import BUNDLED
    from tagcap.inference.taggers import load_model
    from tagcap.pipeline import prepare
    from tagcap.provenance import machine_info

    torch.set_num_threads(1)
    captioner = load_model(BUNDLED / "flickr8k-captioner", engine="onnx", device="cpu")
    prep = prepare(args.data, progress=False)  # the float32 feature cache, extracted if missing
    keys = [r.key for r in prep.dataset.all_records()][: args.photos]
    grids = torch.from_numpy(np.asarray(prep.cache.load(keys, "grid")[:, 0], np.float32))
    q = torch.ao.quantization.quantize_dynamic(captioner.decoder, {torch.nn.Linear, torch.nn.LSTMCell},
                                               dtype=torch.qint8)

    def run(decoder):
        return [s for i in range(0, len(grids), 16) for s in decoder.predict(grids[i:i + 16], beam_width=3).sequences]

    times: dict = {"float32": [], "int8": []}
    outs = {}
    for _ in range(2):
        for kind, decoder in (("float32", captioner.decoder), ("int8", q)):
            t = time.perf_counter()
            outs[kind] = run(decoder)
            times[kind].append((time.perf_counter() - t) / -(-len(grids) // 16) * 1000)
    same = sum(a == b for a, b in zip(outs["float32"], outs["int8"]))
    result = {"photos": len(keys), "threads": 1, "batch": 16, "beam": 3,
              "float32_ms_per_batch": round(min(times["float32"]), 1), "int8_ms_per_batch": round(min(times["int8"]), 1),
              "speedup": round(min(times["float32"]) / min(times["int8"]), 2),
              "identical_captions": same, "runs_ms": {k: [round(x, 1) for x in v] for k, v in times.items()}}
    print(result, flush=True)
    result["machine"] = machine_info()
    atomic.write_json(ROOT / "benchmarks" / "results" / "decoder-int8.json", result)


if __name__ == "__main__":
    main()
