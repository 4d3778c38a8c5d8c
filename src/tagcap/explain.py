"""What a sequence decoder did, step by step: shared by `predict --explain` and the bench's step figures."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def top_labels(scores: np.ndarray, labels: Sequence[str], idx) -> list[dict]:
    return [{"label": labels[i], "score": round(float(scores[i]), 4)} for i in idx]


def step_trace(step_scores: np.ndarray, step_labels: np.ndarray | None, labels: Sequence[str],
               top: int = 3) -> list[dict]:
    """One image's steps [T, C] / [T]: the label picked (or STOP), its score, and the step's best labels."""
    steps = []
    for t, probs in enumerate(step_scores):
        pick = int(step_labels[t]) if step_labels is not None else -1
        steps.append({"step": t + 1,
                      "picked": labels[pick] if pick >= 0 else "STOP",
                      "score": round(float(probs[pick]), 4) if pick >= 0 else None,
                      "top": top_labels(probs, labels, np.argsort(-probs)[:top])})
        if pick < 0:
            break
    return steps
