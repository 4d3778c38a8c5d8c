"""Captions held to the taggers' evidence: the captioner may not name an object the taggers do not see.

The evidence for a concept comes from each tagger's calibrated confidence (the shown rule's
per-model Platt calibration) in its column for the concept, or its best column below it, and is the
least of the taggers': `dog` from the everyday-words tagger's `dog` and from the ImageNet breeds
summed up to `dog`, both of which must see one. A concept no tagger column sits under takes the
evidence of its nearest everyday broader concept that has one (`calico cat`: `cat`): if there is
no cat, there is no calico cat. A word for which neither exists is not judged. Which taggers speak
for which concept is chosen on validation photos (`sources`): a tagger whose columns do not tell
photos with the thing from photos without is not asked about it.

Decoding (`word_bias`): every object word of the captioner's vocabulary whose evidence falls below
`support` has `strength * log(evidence / support)` added to its log-probability at every step of the
beam (a product of experts: the captioner's language, the taggers' eyes), or is ruled out with an
infinite strength; object words are said at most once and no word twice in a row (pushed off its
favourite nouns, a captioner repeats itself). A decoded caption that still names an object whose
evidence is under `withhold` times its support is not shown: the output says which object and why.
The numbers (and each concept's support: a quantile of its evidence on validation photos that show
the thing) are chosen on validation photos (`benchmarks/grounded_captions.py`) and ship in
`bundled/grounding.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from tagcap.errors import CheckpointError

GROUNDING_FILE = Path(__file__).resolve().parent.parent / "bundled" / "grounding.json"
_FLOOR = 1e-4  # evidence below this counts as this (log of zero)


@dataclass(frozen=True)
class Grounding:
    """How strongly captions are held to the evidence (0: not at all, `inf`: unsupported words are
    never said); the evidence that counts as support, per concept where validation set one
    (`supports`: a quantile, chosen on validation, of the concept's evidence on validation photos
    showing the thing) and `support` for the rest; and the share of an object's support under which
    a finished caption naming it is withheld (0: never)."""

    strength: float = 0.0
    support: float = 0.3
    withhold: float = 0.0
    sources: dict[str, list[str]] | None = None  # concept -> the taggers that speak for it (`Evidence`)
    supports: dict[str, float] | None = None     # concept -> its own support

    @classmethod
    def load(cls, path: Path = GROUNDING_FILE) -> "Grounding":
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            sources = {k: list(map(str, v)) for k, v in (data.get("sources") or {}).items()}
            supports = {k: float(v) for k, v in (data.get("supports") or {}).items()}
            return cls(float(data["strength"]), float(data["support"]), float(data["withhold"]), sources, supports)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: not a tagcap grounding file ({e})") from None

    @property
    def active(self) -> bool:
        return self.strength > 0 or self.withhold > 0

    def support_for(self, synset: str) -> float:
        return (self.supports or {}).get(synset, self.support)


@lru_cache(maxsize=1)
def bundled_grounding() -> Grounding:
    """The shipped grounding, read once per process (the library asks for it for every photo)."""
    return Grounding.load()


class Evidence:
    """Which taggers' columns speak for each concept a caption can name, and how confident they are.

    `models`: per tagger (name, the concepts of its shown columns); `sources`: concept -> the taggers
    allowed to speak for it, where validation dropped some (a tagger whose columns under `person` do
    not tell photos with people from photos without is not asked about people)."""

    def __init__(self, models: list[tuple[str, list[str]]], sources: dict[str, list[str]] | None = None):
        from tagcap.concepts import concepts

        self.vocab = concepts()
        self.models = [(name, {s: j for j, s in enumerate(synsets)}) for name, synsets in models]
        self.sources = sources or {}
        self._speakers: dict[str, tuple[str, list[tuple[int, np.ndarray]]] | None] = {}

    def speaker(self, synset: str) -> tuple[str, list[tuple[int, np.ndarray]]] | None:
        """The concept whose evidence answers for this one, with (tagger index, its columns) for each
        tagger that speaks for it: the concept itself where a tagger has a column for it (ImageNet's
        `dog` sums every breed: one calibrated probability, where the best of 120 breeds' would run
        high) or columns below it, else its nearest everyday broader concept that has some (`man`,
        which no tagger tells well: `person`); None when no tagger can tell."""
        if synset not in self._speakers:
            vocab, found = self.vocab, None
            if synset in vocab:
                for candidate in (synset, *(a for a in vocab.ancestors(synset) if a in vocab.named)):
                    below = vocab.descendants(candidate)
                    allowed = self.sources.get(candidate)  # none: no tagger tells it; ask the broader one
                    columns = [(m, np.array([index[candidate]]) if candidate in index else
                                np.array(sorted(j for s, j in index.items() if s in below)))
                               for m, (name, index) in enumerate(self.models) if allowed is None or name in allowed]
                    columns = [(m, idx) for m, idx in columns if len(idx)]
                    if columns:
                        found = (candidate, columns)
                        break
            self._speakers[synset] = found
        return self._speakers[synset]

    def of(self, synset: str, confidences: list[np.ndarray]) -> np.ndarray | None:
        """The evidence [N] for a concept from each tagger's confidences [N, its columns], or None:
        the least confident of the taggers that speak for it. Every tagger that can tell must see it:
        a tagger trained on one kind of photo says odd things about another (the Flickr8k tagger
        sees a dog behind Corel-5k's jets, where the ImageNet classifier does not)."""
        found = self.speaker(synset)
        if found is None:
            return None
        return np.min([confidences[m][:, idx].max(1) for m, idx in found[1]], axis=0)


def tagger_confidences(per_model) -> tuple[list[tuple[str, list[str]]], list[np.ndarray]]:
    """From (name, calibration, scores [N, labels]) per tagger: (name, concepts of its shown columns)
    and its calibrated confidences [N, shown columns], the evidence `Evidence` reads."""
    models, confidences = [], []
    for name, cal, scores in per_model:
        shown = np.flatnonzero(cal.shown)
        models.append((name, [cal.synsets[j] for j in shown]))
        confidences.append(cal.calibrate(cal.columns(scores))[:, shown])
    return models, confidences


class CaptionGrounder:
    """One captioner's words against one model set's tagger columns."""

    def __init__(self, words, models: list[tuple[str, list[str]]], grounding: Grounding):
        from tagcap.concepts import concepts

        self.words, self.grounding = words, grounding
        self.evidence = Evidence(models, grounding.sources)
        objects = concepts().data.get("caption_objects", {})
        # (word id, concept) for every object word the taggers can judge
        self.judged = [(i, objects[w]) for i, w in enumerate(words.words)
                       if w in objects and self.evidence.speaker(objects[w]) is not None]

    @cached_property
    def _groups(self) -> list[tuple[np.ndarray, str]]:
        """(word ids, concept) per concept: words naming one concept share one evidence."""
        by_concept: dict[str, list[int]] = {}
        for i, synset in self.judged:
            by_concept.setdefault(synset, []).append(i)
        return [(np.array(ids), s) for s, ids in by_concept.items()]

    def word_bias(self, confidences: list[np.ndarray]) -> np.ndarray | None:
        """[N, words] added to the captioner's log-probabilities, from each tagger's confidences
        (`tagger_confidences`); None when the grounding is off."""
        g = self.grounding
        if g.strength <= 0:
            return None
        bias = np.zeros((len(confidences[0]), len(self.words)), np.float32)
        for ids, synset in self._groups:
            e = self.evidence.of(synset, confidences)
            support = self.support(synset)
            if math.isinf(g.strength):
                pen = np.where(e < support, -np.inf, 0.0)
            else:
                pen = g.strength * np.minimum(0.0, np.log(np.maximum(e, _FLOOR) / support))
            bias[:, ids] = pen[:, None]
        return bias

    def support(self, synset: str) -> float:
        """The evidence that supports a concept: its speaker's (`Evidence.speaker`) own support."""
        found = self.evidence.speaker(synset)
        return self.grounding.support_for(found[0]) if found else self.grounding.support

    @cached_property
    def once(self) -> np.ndarray:
        """[words] bool: the object words, said at most once per caption under grounding (pushed off
        its favourite nouns, the captioner would otherwise say `a boat and a boat`)."""
        out = np.zeros(len(self.words), bool)
        out[[i for i, _ in self.judged]] = True
        return out

    def objects(self, caption: str, confidences: list[np.ndarray]) -> list[dict]:
        """What a caption names, each object with its evidence (None: no tagger can tell), the evidence
        that would support it, and whether it does. `confidences`: each tagger's, of this one photo
        ([1, columns])."""
        from tagcap.concepts import concepts

        vocab, out = concepts(), []
        for word, synset in vocab.objects(caption):
            e = self.evidence.of(synset, confidences)
            support = None if e is None else self.support(synset)
            out.append({"word": word, "concept": synset, "name": vocab.name(synset),
                        "evidence": None if e is None else round(float(e[0]), 4), "support": support,
                        "supported": None if e is None else bool(e[0] >= support)})
        return out

    def withheld(self, objects: list[dict]) -> str | None:
        """Why a caption is not shown (an object it names has evidence under `withhold` times its
        support), or None."""
        w = self.grounding.withhold
        low = [o for o in objects if o["evidence"] is not None and o["evidence"] < w * o["support"]]
        if not low:
            return None
        named = ", ".join(f"'{o['word']}' (the least sure says {o['evidence']:.2f}; photos showing one have "
                          f"about {o['support']:.2f})" for o in low)
        return f"not shown: the taggers do not agree on what the caption names: {named}"
