"""Gather the rows of several `tagcap bench annotate` runs (other seeds, with and without --refit)
into one table: per-label F1 per seed, mean and standard deviation, N+.

    python benchmarks/seed_table.py RUN_DIR... --title "..." --command "..." --out benchmarks/results/NAME

Writes NAME.json (every row, with its run folder) and NAME.md.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="bench output folders (each with results.json and run.json)")
    ap.add_argument("--title", required=True)
    ap.add_argument("--command", required=True, help="the command the runs came from, for the record")
    ap.add_argument("--out", required=True, help="output path without extension")
    args = ap.parse_args()

    from tagcap import atomic
    from tagcap.results import read_rows

    rows, machines = [], set()
    for run in map(Path, args.runs):
        for row in read_rows(run / "results.json"):
            rows.append({**row, "run": run.name})
        info = json.loads((run / "run.json").read_text()).get("machine", {})
        machines.add(f"{info.get('cpu')}, {info.get('cores')} cores, commit {info.get('commit')}")
    groups = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["decision"], bool(row.get("refit")))].append(row)
    md = [f"# {args.title}", "", f"`{args.command}`", "", f"Machine: {'; '.join(sorted(machines))}.", "",
          "| recipe | rule | refit | seeds | F1_L per seed | F1_L mean ± sd | N+ per seed | F1_I mean | mAP mean |",
          "|---|---|---|---|---|---|---|---|---|"]
    for (method, decision, refit), group in groups.items():
        group = sorted(group, key=lambda r: r["seed"])
        f1 = np.array([r["per_label"]["F1"] for r in group])
        md.append(f"| {method} | {decision} | {'yes' if refit else 'no'} | {', '.join(str(r['seed']) for r in group)} "
                  f"| {' / '.join(f'{v:.3f}' for v in f1)} | {f1.mean():.3f} ± {f1.std(ddof=1) if len(f1) > 1 else 0:.3f} "
                  f"| {' / '.join(str(r['n_plus']) for r in group)} "
                  f"| {np.mean([r['per_image']['F1'] for r in group]):.3f} | {np.mean([r['mAP'] for r in group]):.3f} |")
    out = Path(args.out)
    atomic.write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    atomic.write_text(out.with_suffix(".json"), json.dumps({"command": args.command, "machines": sorted(machines),
                                                             "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
