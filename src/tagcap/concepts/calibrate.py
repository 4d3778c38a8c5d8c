"""Fitting the shown rule on validation photos: calibrated confidences, the labels worth showing, one
threshold and a cap (numpy only; `benchmarks/shown_rule.py` runs it for the bundled models).

A tag is judged right on a photo when its concept is one of the photo's labels' concepts or a hypernym
of one (`animal` on a photo labelled `tiger`), or a hyponym of one (`Eskimo dog` on a photo labelled
`dog`: as specific as the truth can tell). Calibration is Platt scaling (Platt 1999) per label on
the logit of the model's score, shrunk toward the model's own pooled Platt fit so that a label with
few validation photos keeps the model's general calibration.
"""

from __future__ import annotations

import numpy as np

from tagcap.concepts import Concepts

_EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, np.float64), -500, 500)))


def truth_matrix(vocab: Concepts, photo_synsets: list[set[str]], columns: list[str]) -> np.ndarray:
    """[photos, columns] bool: whether a tag of each column's concept is right on each photo."""
    related: dict[str, set[str]] = {}
    for c in set(columns):
        related[c] = set(vocab.descendants(c)) | {c, *vocab.ancestors(c)}
    out = np.zeros((len(photo_synsets), len(columns)), bool)
    for i, labels in enumerate(photo_synsets):
        if labels:
            out[i] = [bool(related[c] & labels) for c in columns]
    return out


def _newton_platt(x: np.ndarray, y: np.ndarray, prior: np.ndarray, strength: float, steps: int = 100,
                  weight: np.ndarray | None = None) -> np.ndarray:
    """Per column j, (a_j, b_j) maximising sum_i weight_ij * log-likelihood of y_ij under
    sigmoid(a_j x_ij + b_j) minus strength/2 * |(a_j, b_j) - prior|^2. x, y, weight: [N, C]; prior: [2];
    returns [C, 2]."""
    n, c = x.shape
    weight = np.ones_like(x) if weight is None else weight.astype(np.float64)
    w = np.tile(prior, (c, 1)).astype(np.float64)
    for _ in range(steps):
        p = sigmoid(w[:, 0] * x + w[:, 1])
        r = (p - y) * weight
        g = np.stack([(r * x).sum(0), r.sum(0)], 1) + strength * (w - prior)
        v = p * (1 - p) * weight
        h00 = (v * x * x).sum(0) + strength
        h01 = (v * x).sum(0)
        h11 = v.sum(0) + strength
        det = h00 * h11 - h01 * h01
        step = np.stack([(h11 * g[:, 0] - h01 * g[:, 1]) / det, (h00 * g[:, 1] - h01 * g[:, 0]) / det], 1)
        # damped: a step of at most 1 per parameter (plain Newton overshoots on nearly separable data)
        step /= np.maximum(1.0, np.abs(step).max(1, keepdims=True))
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w


def fit_platt(scores: np.ndarray, truth: np.ndarray, strength: float = 10.0,
              judged: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-column Platt parameters (a, b) for scores [N, C] against truth [N, C]: first one pooled fit
    for the model (from a = 1, b = 0), then each column shrunk toward it with `strength` (in photos).
    `judged` [N, C] bool: the cells whose truth can be known (the others are left out of both fits)."""
    x, y = logit(scores), truth.astype(np.float64)
    judged = np.ones(x.shape, bool) if judged is None else judged
    pooled = _newton_platt(x[judged].reshape(-1, 1), y[judged].reshape(-1, 1), np.array([1.0, 0.0]), 1.0)[0]
    w = _newton_platt(x, y, pooled, strength, weight=judged)
    return w[:, 0], w[:, 1]


def calibrated(scores: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return sigmoid(a * logit(scores) + b)


def judgeable(vocab: Concepts, vocabulary: set[str], columns: list[str]) -> np.ndarray:
    """[columns] bool: whether a dataset whose labels are `vocabulary` (concepts) can tell a tag of each
    column right or wrong: the column's concept is one of them, above one or below one."""
    out = []
    for c in columns:
        related = set(vocab.descendants(c)) | {c, *vocab.ancestors(c)}
        out.append(bool(related & vocabulary))
    return np.array(out, bool)


def per_image_pr(shown: np.ndarray, right: np.ndarray, recalled: np.ndarray, n_truth: np.ndarray) -> tuple[float, float, float]:
    """Mean per-image precision and recall over the images with a label (as `metrics.annotation`
    defines them: an image shown no tag has precision 0), and tags per image (over all): `shown` [N, K]
    bool, `right` [N, K] bool (shown and right), `recalled` [N] labels recalled, `n_truth` [N] labels."""
    n_shown = shown.sum(1)
    labelled = n_truth > 0
    if not labelled.any():
        return 0.0, 0.0, float(n_shown.mean())
    precision = float(np.divide(right.sum(1), n_shown, out=np.zeros(len(n_shown)), where=n_shown > 0)[labelled].mean())
    recall = float((recalled[labelled] / n_truth[labelled]).mean())
    return precision, recall, float(n_shown.mean())


def expected_calibration_error(confidence: np.ndarray, right: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """ECE over `bins` equal-width confidence bins, and the reliability table behind it."""
    confidence, right = np.asarray(confidence, float), np.asarray(right, bool)
    edges = np.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence >= lo) & ((confidence < hi) if hi < 1 else (confidence <= hi))
        if inside.any():
            acc, conf = float(right[inside].mean()), float(confidence[inside].mean())
            ece += inside.mean() * abs(acc - conf)
            table.append({"bin": f"{lo:.1f}-{hi:.1f}", "tags": int(inside.sum()), "confidence": round(conf, 3),
                          "right": round(acc, 3)})
    return float(ece), table
