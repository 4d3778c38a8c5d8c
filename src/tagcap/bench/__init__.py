"""The benches: every method of a task on one dataset, trained, chosen on validation and scored once
on test, per seed, with the literature's rows beside ours (`tagcap bench annotate`, `tagcap bench caption`).
They train, so inference code never imports this package."""

from tagcap.bench.annotate import bench_annotate
from tagcap.bench.caption import bench_caption

__all__ = ["bench_annotate", "bench_caption"]
