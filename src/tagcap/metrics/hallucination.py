"""Object hallucination in captions: CHAIR (Rohrbach et al. 2018, "Object Hallucination in Image
Captioning"), with caption words mapped to concepts through tagcap's WordNet vocabulary.

The objects a caption mentions are the physical things its words name (`Concepts.objects`: plurals
and synonyms reach one concept), each concept once per caption. Only objects the ground truth can
judge count: a mention is judged when its concept is one of the dataset's label concepts or a kind of
one (`puppy` where the labels know `dog`), or an everyday broader word above one (`animal` where they
know `tiger`). A judged mention is right when the photo's truth holds its concept, a kind of it or a
concept above it (as the shown rule judges tags); else it is hallucinated.

    CHAIR_i = hallucinated mentions / judged mentions
    CHAIR_s = captions with at least one hallucinated mention / captions

Truth: a dataset's labels (Corel-5k) or the objects its reference captions name (Flickr8k: all five).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from tagcap.concepts import Concepts, concepts

_DOG = re.compile(r"\bdogs?\b")


class ChairJudge:
    """Judges captions against one dataset whose truth can name `vocabulary` (label concepts)."""

    def __init__(self, vocabulary: set[str], vocab: Concepts | None = None):
        self.vocab = vocab or concepts()
        self.vocabulary = frozenset(vocabulary)
        self._judged = lru_cache(maxsize=None)(self._judges)
        self._same = {s: tuple(group) for group in self.vocab.data.get("same_objects", []) for s in group}

    def _judges(self, synset: str) -> bool:
        if synset not in self.vocab:
            return False
        if synset in self.vocabulary or self.vocabulary & set(self.vocab.ancestors(synset)):
            return True
        return synset in self.vocab.named and bool(self.vocabulary & self.vocab.descendants(synset))

    def mentions(self, caption: str) -> list[tuple[str, str]]:
        """(word, concept) of each judged object the caption names, each concept once."""
        seen, out = set(), []
        for word, synset in self.vocab.objects(caption):
            if synset not in seen and self._judged(synset):
                seen.add(synset)
                out.append((word, synset))
        return out

    def present(self, synset: str, truth: set[str]) -> bool:
        """Whether the truth holds the concept, a kind of it, or a concept above it (or so of a concept
        the same word also means: `same_objects`, a caption's `water` and the sea)."""
        for s in self._same.get(synset, (synset,)):
            if truth & self.vocab.descendants(s) or truth & {s, *self.vocab.ancestors(s)}:
                return True
        return False


    def score(self, captions: list[str], truths: list[set[str]]) -> dict:
        """CHAIR_i and CHAIR_s (x100) over captions, one truth (concepts) per caption; with the judged
        mentions per caption, the share of captions that say `dog`, and the words hallucinated most."""
        if len(captions) != len(truths):
            raise ValueError(f"{len(captions)} captions but {len(truths)} truths")
        mentioned = wrong = wrong_captions = dogs = 0
        words: Counter = Counter()
        for caption, truth in zip(captions, truths):
            said = self.mentions(caption or "")
            bad = [w for w, s in said if not self.present(s, truth)]
            mentioned += len(said)
            wrong += len(bad)
            wrong_captions += bool(bad)
            dogs += bool(_DOG.search((caption or "").lower()))
            words.update(bad)
        n = max(len(captions), 1)
        return {"CHAIR_i": round(100 * wrong / max(mentioned, 1), 2), "CHAIR_s": round(100 * wrong_captions / n, 2),
                "objects_per_caption": round(mentioned / n, 3), "says_dog": round(100 * dogs / n, 2),
                "hallucinated_most": [f"{w} {k}" for w, k in words.most_common(10)]}


def reference_objects(references: list[str], vocab: Concepts | None = None) -> set[str]:
    """The concepts a photo's reference captions name (all of them): its truth for CHAIR."""
    vocab = vocab or concepts()
    return {synset for ref in references for _, synset in vocab.objects(ref)}


# the columns `bench caption` and the model card show beside BLEU, METEOR and CIDEr-D
CHAIR_COLUMNS = ("CHAIR_i", "CHAIR_s")
MIN_PHOTOS = 20  # a concept judges captions where references name it in at least this many train photos


def reference_vocabulary(records, vocab: Concepts | None = None) -> set[str]:
    """The concepts a caption dataset's references can judge: those said in at least 2 of a photo's
    captions in at least MIN_PHOTOS photos of `records` (its training split), as the everyday-words
    vocabulary is made from Flickr8k's."""
    vocab = vocab or concepts()
    photos: Counter = Counter()
    for r in records:
        said = Counter(s for c in r.captions for s in {s for _, s in vocab.objects(c)})
        photos.update(s for s, k in said.items() if k >= 2)
    return {s for s, n in photos.items() if n >= MIN_PHOTOS}


def caption_chair(captions: list[str], records, train_records, dataset: str) -> dict[str, float]:
    """CHAIR_i and CHAIR_s of one caption per record, judged by the records' references. The judged
    concepts: for `dataset` flickr8k the shipped everyday-words labels (made the same way from its
    training captions), for another its training split's `reference_vocabulary`."""
    vocab = concepts()
    known = (set(vocab.data["flickr8k_nouns"]["labels"]) if dataset == "flickr8k"
             else reference_vocabulary(train_records, vocab))
    scores = ChairJudge(known, vocab).score(captions, [reference_objects(list(r.captions), vocab) for r in records])
    return {k: scores[k] for k in CHAIR_COLUMNS}
