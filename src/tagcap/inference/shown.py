"""The shown rule: the tags a person sees by default, from every annotator of a model set at once.

Each model's scores become calibrated confidences (per-label Platt scaling fitted on validation photos,
`shown.json` in the model's folder: "when it says 0.7, about 7 in 10 such tags are right"); a model
over a softmax (the ImageNet head) also scores the broader concepts its classes roll up to, summing
their probabilities (`dog` from every breed). Tags are merged by concept, each concept once at its
best confidence with every source kept; a tag is shown at or above one threshold, at most a cap per
photo, best first; labels that never reached useful precision on validation are never shown.
The benchmark rules (MCC, top-k, sequence) are untouched: `bench` and `evaluate` use the models' own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tagcap.concepts.calibrate import calibrated
from tagcap.errors import CheckpointError

SHOWN_FILE = "shown.json"
RULE_FILE = Path(__file__).resolve().parent.parent / "bundled" / "shown-rule.json"


@dataclass(frozen=True)
class ShownRule:
    """One threshold on calibrated confidence and a cap on the count, fitted on validation; `knots`:
    a last, isotonic calibration of a concept's merged confidence (the best of several models'
    calibrated ones runs high: the maximum of noisy estimates), fitted on validation photos' candidates
    and applied by linear interpolation between its knots."""

    threshold: float = 0.5
    max_tags: int = 5
    knots: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0, 1.0), (0.0, 1.0))  # merged -> final, increasing

    @classmethod
    def load(cls, path: Path = RULE_FILE) -> "ShownRule":
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            merged = data.get("merged") or {"x": [0.0, 1.0], "y": [0.0, 1.0]}
            return cls(float(data["threshold"]), int(data["max_tags"]),
                       (tuple(map(float, merged["x"])), tuple(map(float, merged["y"]))))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: not a tagcap shown rule ({e})") from None

    def name(self) -> str:
        return f"shown: confidence at least {self.threshold:.2f}, at most {self.max_tags}"


@dataclass(frozen=True)
class Calibration:
    """One model's columns (its labels, then the concepts its classes roll up to) with their Platt
    parameters and whether each may be shown."""

    names: list[str]
    synsets: list[str]
    a: np.ndarray
    b: np.ndarray
    shown: np.ndarray
    rollup: np.ndarray | None  # [labels, rolled-up columns] 0/1: which classes each broader concept sums
    # (only a model over a softmax has one; its classes exclude each other: it names one thing per photo)

    @classmethod
    def load(cls, folder: str | Path) -> "Calibration | None":
        path = Path(folder) / SHOWN_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            cols = data["columns"]
            rollup = None
            if data.get("rollup"):
                rollup = np.zeros((data["labels"], len(data["rollup"])), np.float32)
                for j, members in enumerate(data["rollup"]):
                    rollup[members, j] = 1.0
            return cls([c["label"] for c in cols], [c["synset"] for c in cols],
                       np.array([c["a"] for c in cols]), np.array([c["b"] for c in cols]),
                       np.array([c["shown"] for c in cols], bool), rollup)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise CheckpointError(f"{path}: not a tagcap calibration file ({e})") from None

    def columns(self, scores: np.ndarray) -> np.ndarray:
        """The model's scores [N, labels] with the rolled-up concepts' summed scores appended."""
        scores = np.asarray(scores, np.float64)
        return np.concatenate([scores, scores @ self.rollup], 1) if self.rollup is not None else scores

    def calibrate(self, columns: np.ndarray) -> np.ndarray:
        """Calibrated confidences of the model's columns (`columns(scores)`), each by its Platt fit."""
        return calibrated(columns, self.a, self.b)


def union(per_model: list[tuple[str, Calibration, np.ndarray]], rule: ShownRule | None = None):
    """The showable concepts of several models as one table: (concepts, best confidence [N, concepts],
    the model giving it [N, concepts] as an index into `per_model`, each model's raw column scores,
    a [concepts] mask of a softmax model's classes, of which `choose` shows one). With `rule`, the
    best confidences pass through its last calibration."""
    concepts_: list[str] = []
    where: dict[str, int] = {}  # concept -> its column
    for _, cal, _ in per_model:
        for j in np.flatnonzero(cal.shown):
            if cal.synsets[j] not in where:
                where[cal.synsets[j]] = len(concepts_)
                concepts_.append(cal.synsets[j])
    n = len(per_model[0][2])
    best = np.zeros((n, len(concepts_)))
    source = np.zeros((n, len(concepts_)), np.int32)
    raws = []
    for m, (_, cal, scores) in enumerate(per_model):
        raw = cal.columns(scores)
        conf = cal.calibrate(raw)
        raws.append(raw)
        for j in np.flatnonzero(cal.shown):
            k = where[cal.synsets[j]]
            better = conf[:, j] > best[:, k]
            best[better, k], source[better, k] = conf[better, j], m
    if rule is not None:
        best = np.interp(best, *rule.knots)
    exclusive = np.zeros(len(concepts_), bool)
    for _, cal, _ in per_model:
        if cal.rollup is not None:
            for j in np.flatnonzero(cal.shown[:cal.rollup.shape[0]]):
                exclusive[where[cal.synsets[j]]] = True
    return concepts_, best, source, raws, exclusive


def choose(best: np.ndarray, rule: ShownRule, synsets: list[str], exclusive: np.ndarray | None = None) -> np.ndarray:
    """[N, concepts] bool: the tags the rule shows: best first, at or above its threshold, at most
    `max_tags`; a concept above one already shown (`synsets`: the columns' concepts) is left out
    (`animal` after `dog`: the dog tag says it, and the photo is found by `animal` all the same), and
    of the `exclusive` columns (a softmax's classes: one answer per photo) only the best is shown
    (one dog breed, not four guesses)."""
    shown = np.zeros(best.shape, bool)
    k = min(rule.max_tags, best.shape[1])
    from tagcap.concepts import concepts

    vocab = concepts()
    for i, row in enumerate(best):
        chosen: list[str] = []
        one_class = False
        for j in np.argsort(-row, kind="stable"):
            if row[j] < rule.threshold or len(chosen) == k:
                break
            if any(synsets[j] in vocab.ancestors(c) for c in chosen):
                continue
            if exclusive is not None and exclusive[j]:
                if one_class:
                    continue
                one_class = True
            chosen.append(synsets[j])
            shown[i, j] = True
    return shown


def merge(per_model: list[tuple[str, Calibration, np.ndarray]], rule: ShownRule, candidates: int = 8,
          ) -> list[tuple[list[dict], list[dict]]]:
    """Per image (shown tags, best candidates), best first: each concept once, at its best calibrated
    confidence, naming the model that gave it (`source`), every model's raw score for it (`sources`)
    and the named concepts above it (`broader`). `per_model`: (model name, calibration, scores [N, labels])."""
    from tagcap.concepts import concepts

    vocab = concepts()
    synsets, best, source, raws, exclusive = union(per_model, rule)
    shown = choose(best, rule, synsets, exclusive)
    columns = [{s: j for j, s in reversed(list(enumerate(cal.synsets)))} for _, cal, _ in per_model]
    results = []
    for i in range(len(best)):
        order = np.argsort(-best[i], kind="stable")[:max(candidates, rule.max_tags)]
        tags = [{"label": vocab.name(synsets[k]), "score": round(float(best[i, k]), 4), "concept": synsets[k],
                 "source": per_model[source[i, k]][0],
                 "sources": {name: round(float(raws[m][i, columns[m][synsets[k]]]), 4)
                             for m, (name, _, _) in enumerate(per_model) if synsets[k] in columns[m]},
                 "broader": broader(synsets[k])} for k in order]
        results.append(([t for t, k in zip(tags, order) if shown[i, k]], tags[:candidates]))
    return results


def broader(synset: str) -> list[str]:
    """The named concepts above one, nearest first (`Eskimo dog`: dog, animal): what a tag also is,
    stored and searchable, shown compactly."""
    return list(_broader(synset))


@lru_cache(maxsize=4096)
def _broader(synset: str) -> tuple[str, ...]:  # every candidate of every photo asks: worked out once
    from tagcap.concepts import concepts

    vocab = concepts()
    return tuple(vocab.name(s) for s in vocab.ancestors(synset) if s in vocab.named)
