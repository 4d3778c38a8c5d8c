"""The quality regression guard (benchmarks/quality_guard.py): a small fixed benchmark on real Corel-5k
features, three recipes x three seeds, against the numbers recorded in the repository. A change that
moves a recipe's mean per-label F1 or mAP by more than its seed spread allows fails here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import COREL, needs_corel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality_guard  # noqa: E402


@needs_corel
@pytest.mark.slow
def test_quality_has_not_moved(tmp_path):
    recorded = json.loads(quality_guard.record_path().read_text())  # this kind of CPU's own, where there is one
    now = quality_guard.run(COREL, tmp_path)
    assert now["groups"].keys() == recorded["groups"].keys()
    moved = []
    for name, group in recorded["groups"].items():
        for metric, stat in group.items():
            new = now["groups"][name][metric]["mean"]
            tol = quality_guard.tolerance(stat["sd"])
            if abs(new - stat["mean"]) > tol:
                moved.append(f"{name} {metric}: {new:.4f} now, {stat['mean']:.4f} ± {stat['sd']:.4f} recorded "
                             f"(tolerance {tol:.4f}; per seed now {now['groups'][name][metric]['values']})")
    assert not moved, "quality moved:\n" + "\n".join(moved)


def test_the_tolerance_follows_the_seed_spread():
    assert quality_guard.tolerance(0.0) == 0.005
    assert quality_guard.tolerance(0.01) == pytest.approx(3 * 0.01 * (2 / 3) ** 0.5)
