"""Decision rules: turn label scores [N, C] into label sets.

- threshold: one global threshold on probabilities;
- per-label thresholds: one threshold per label, fitted to maximise the Matthews correlation
  coefficient on the validation split (Salar & Ahmadi 2023);
- top-k: the k highest-scored labels per image, optionally only those scored at least `floor`;
- sequence: the labels a recurrent decoder emitted before STOP (RIA, CNN-RNN, ...).
"""

from __future__ import annotations

import numpy as np
from tagcap.errors import ConfigError

MCC_GRID = tuple(round(0.05 * i, 2) for i in range(1, 15))  # 0.05, 0.10, ..., 0.70


def threshold(scores: np.ndarray, t: float = 0.5) -> np.ndarray:
    return np.asarray(scores) >= t


def per_label_threshold(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return np.asarray(scores) >= np.asarray(thresholds)[None, :]


def top_k(scores: np.ndarray, k: int = 3) -> np.ndarray:
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    out = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(out, idx, True, axis=1)
    return out


def mcc_per_label(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Matthews correlation per label (column); 0 where it is undefined, as scikit-learn does."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = (pred & truth).sum(0).astype(np.float64)
    tn = (~pred & ~truth).sum(0).astype(np.float64)
    fp = (pred & ~truth).sum(0).astype(np.float64)
    fn = (~pred & truth).sum(0).astype(np.float64)
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return np.divide(tp * tn - fp * fn, den, out=np.zeros_like(den), where=den > 0)


def fit_mcc_thresholds(scores: np.ndarray, truth: np.ndarray, grid=MCC_GRID, default: float = 0.5) -> np.ndarray:
    """Per label, the grid threshold with the highest MCC on (validation) scores.

    Ties go to the smallest threshold. A label whose best MCC is not positive (for example,
    no positive example in the validation split) keeps `default`: there is no evidence to
    move it.
    """
    scores, truth = np.asarray(scores), np.asarray(truth, bool)
    table = np.stack([mcc_per_label(scores >= t, truth) for t in grid])  # [G, C]
    best = table.argmax(0)
    out = np.asarray(grid, dtype=np.float64)[best]
    out[table.max(0) <= 0] = default
    return out


def apply_rule(scores: np.ndarray, rule: dict, emitted: np.ndarray | None = None) -> np.ndarray:
    """Apply a rule described as a dict: {"kind": "threshold", "t": .5} | {"kind": "mcc", "thresholds": [...]}
    | {"kind": "top-k", "k": 3, "floor": 0.1 (optional)} | {"kind": "sequence"} (the labels a sequence
    decoder emitted)."""
    kind = rule["kind"]
    if kind == "sequence":
        if emitted is None:
            raise ConfigError("the 'sequence' rule needs a decoder that emits label sequences")
        return np.asarray(emitted, bool)
    if kind == "threshold":
        return threshold(scores, rule.get("t", 0.5))
    if kind == "mcc":
        return per_label_threshold(scores, np.asarray(rule["thresholds"]))
    if kind == "top-k":
        chosen = top_k(scores, rule.get("k", 3))
        return chosen & threshold(scores, rule["floor"]) if rule.get("floor") is not None else chosen
    raise ConfigError(f"unknown decision rule {kind!r}")


def rule_name(rule: dict) -> str:
    kind = rule["kind"]
    if kind == "threshold":
        return f"threshold {rule.get('t', 0.5):g}"
    if kind == "mcc":
        return "MCC thresholds"
    if kind == "top-k":
        floor = rule.get("floor")
        return f"top-{rule.get('k', 3)}" + (f" at or above {floor:g}" if floor is not None else "")
    if kind == "sequence":
        return "sequence"
    return kind


def override_rule(rule: dict, threshold: float | None = None, top_k: int | None = None) -> dict:
    """The rule a prediction uses when a person overrides a model's own at prediction time: a global
    `threshold`, the `top_k` labels, or both (the top k at or above the threshold); neither keeps `rule`."""
    if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
        raise ConfigError(f"threshold {threshold}: must be a probability, between 0 and 1")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ConfigError(f"top-k {top_k}: must be a whole number of at least 1")
    if top_k is not None:
        return {"kind": "top-k", "k": int(top_k), "floor": None if threshold is None else float(threshold)}
    if threshold is not None:
        return {"kind": "threshold", "t": float(threshold)}
    return rule


def make_rules(recipe_decisions, val_scores: np.ndarray, val_targets: np.ndarray) -> list[dict]:
    """Decision rules named in a recipe, with MCC thresholds fitted on the validation split."""
    rules = []
    for d in recipe_decisions:
        if d == "threshold":
            rules.append({"kind": "threshold", "t": 0.5})
        elif d == "mcc":
            rules.append({"kind": "mcc", "thresholds": fit_mcc_thresholds(val_scores, val_targets).tolist()})
        elif d == "sequence":
            rules.append({"kind": "sequence"})
        elif isinstance(d, str) and d.startswith("top-"):
            rules.append({"kind": "top-k", "k": int(d[4:])})
        else:
            raise ConfigError(f"unknown decision {d!r} (threshold, mcc, sequence, top-K)")
    return rules
