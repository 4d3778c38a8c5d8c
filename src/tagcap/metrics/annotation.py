"""Annotation metrics exactly as the literature computes them (Jin & Nakayama 2016; Salar & Ahmadi 2023).

Precision/recall are averaged first and F1 is the harmonic mean of the two averages, not
the mean of per-label F1s: that is how the papers we compare with report it. mAP uses
scikit-learn's average precision per label.
"""

from __future__ import annotations

import numpy as np


def _harmonic(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def per_label_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-label arrays: tp, pred count, gt count, precision (0 when nothing predicted), recall, F1."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = (pred & truth).sum(0).astype(np.float64)
    n_pred, n_gt = pred.sum(0).astype(np.float64), truth.sum(0).astype(np.float64)
    p, r = _safe_div(tp, n_pred), _safe_div(tp, n_gt)
    f1 = _safe_div(2 * p * r, p + r)
    return {"tp": tp, "pred": n_pred, "gt": n_gt, "P": p, "R": r, "F1": f1}


def annotation_metrics(pred: np.ndarray, truth: np.ndarray, scores: np.ndarray | None = None) -> dict:
    """All annotation metrics for binary predictions [N, C] against ground truth [N, C].

    per_label: means over all C labels (a label never predicted has precision 0, a label with
    no test positive has recall 0, as in the seed repositories' evaluation).
    per_image: means over images that have at least one true label; an image with no
    prediction has precision 0.
    overall (micro): pooled counts over all images and labels.
    n_plus: labels with at least one correct prediction.
    mAP: mean over labels with at least one positive of average precision of `scores`.
    top1: share of images whose highest-scored label is true.
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {truth.shape}")
    lab = per_label_scores(pred, truth)
    p_l, r_l = float(lab["P"].mean()), float(lab["R"].mean())

    tp_i = (pred & truth).sum(1).astype(np.float64)
    has_gt = truth.sum(1) > 0
    p_i = _safe_div(tp_i, pred.sum(1).astype(np.float64))[has_gt]
    r_i = _safe_div(tp_i, truth.sum(1).astype(np.float64))[has_gt]
    p_img, r_img = (float(p_i.mean()), float(r_i.mean())) if has_gt.any() else (0.0, 0.0)

    tp, n_pred, n_gt = float(lab["tp"].sum()), float(pred.sum()), float(truth.sum())
    p_o, r_o = (tp / n_pred if n_pred else 0.0), (tp / n_gt if n_gt else 0.0)

    out = {
        "per_label": {"P": p_l, "R": r_l, "F1": _harmonic(p_l, r_l)},
        "per_image": {"P": p_img, "R": r_img, "F1": _harmonic(p_img, r_img)},
        "overall": {"P": p_o, "R": r_o, "F1": _harmonic(p_o, r_o)},
        "n_plus": int((lab["tp"] > 0).sum()),
        "labels_per_image": float(pred.sum(1).mean()) if len(pred) else 0.0,
    }
    if scores is not None:
        out["mAP"] = mean_average_precision(scores, truth)
        out["top1"] = top1_accuracy(scores, truth)
    return out


def mean_average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    truth = np.asarray(truth, bool)
    cols = np.flatnonzero(truth.any(0))
    if len(cols) == 0:
        return 0.0
    return float(np.mean([average_precision_score(truth[:, c], scores[:, c]) for c in cols]))


def top1_accuracy(scores: np.ndarray, truth: np.ndarray) -> float:
    truth = np.asarray(truth, bool)
    top = np.asarray(scores).argmax(1)
    return float(truth[np.arange(len(top)), top].mean()) if len(top) else 0.0
