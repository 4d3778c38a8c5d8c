"""One vocabulary for every model: labels mapped to WordNet 3.0 noun synsets ("concepts").

`concepts.json` ships with the package (made by `tagcap.concepts.build` from WordNet at build time;
nothing reads WordNet at run time). It holds every concept a bundled model can name and all their
hypernyms, so that `Eskimo dog` is also a `dog` and an `animal`; the words people type for each
(`plane`, `aeroplane`, `airplanes` all reach `airplane`); and the caption words of the Flickr8k
everyday-words benchmark. A model's own mapping (label -> synset) is the `concepts.tsv` in its folder.
"""

from __future__ import annotations

import json
import re
from functools import cached_property, lru_cache
from pathlib import Path

from tagcap.errors import CheckpointError

DATA = Path(__file__).resolve().parent / "concepts.json"


class Concepts:
    """The concept graph: names, parents (hypernyms), words; ancestors and descendants by id."""

    def __init__(self, data: dict):
        self.data = data
        self.nodes: dict[str, dict] = data["concepts"]
        self.forms: dict[str, list[str]] = data["forms"]

    def __contains__(self, synset: str) -> bool:
        return synset in self.nodes

    def name(self, synset: str) -> str:
        return self.nodes[synset]["name"]

    @lru_cache(maxsize=None)
    def ancestors(self, synset: str) -> tuple[str, ...]:
        """Every hypernym up to the root, nearest first, each once."""
        out: list[str] = []
        frontier = list(self.nodes[synset]["parents"])
        while frontier:
            s = frontier.pop(0)
            if s not in out:
                out.append(s)
                frontier += self.nodes[s]["parents"]
        return tuple(out)

    @cached_property
    def named(self) -> frozenset[str]:
        """The concepts people name: every bundled model's labels and the everyday broader words."""
        return frozenset(self.data["named"])

    @cached_property
    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for synset, node in self.nodes.items():
            for parent in node["parents"]:
                out.setdefault(parent, []).append(synset)
        return out

    @lru_cache(maxsize=None)
    def descendants(self, synset: str) -> frozenset[str]:
        """The concept and every concept under it (its hyponyms, theirs, ...)."""
        out, frontier = {synset}, [synset]
        while frontier:
            for child in self.children.get(frontier.pop(), []):
                if child not in out:
                    out.add(child)
                    frontier.append(child)
        return frozenset(out)

    def is_a(self, synset: str, other: str) -> bool:
        """Whether `synset` is `other` or a kind of it."""
        return synset == other or other in self.ancestors(synset)

    def lookup(self, word: str) -> list[str]:
        """The concepts a word (any case, singular or plural, one or several words) can name, the most
        frequent sense first; [] for a word no concept has."""
        key = " ".join(word.lower().replace("_", " ").split())
        return list(self.forms.get(key, []))

    @cached_property
    def by_name(self) -> dict[str, str]:
        """A concept's shown name (lower case) -> the concept; a name two concepts share goes to the one
        people name (`named`), else to the first."""
        out: dict[str, str] = {}
        for synset in sorted(self.nodes, key=lambda s: s not in self.named):
            out.setdefault(self.nodes[synset]["name"].lower(), synset)
        return out

    def concept_of(self, label: str) -> str | None:
        """The concept a tag's label names: a shown name, else the word's most frequent sense."""
        key = " ".join(label.lower().split())
        return self.by_name.get(key) or next(iter(self.lookup(key)), None)

    @lru_cache(maxsize=4096)
    def search_words(self, label: str) -> tuple[str, ...]:
        """What a photo tagged `label` is found by, besides the label: its concept's words (synonyms:
        `plane` is also `airplane`, `aeroplane`) and those of the named concepts above it (`Eskimo dog`:
        `dog`, `animal`). Empty for a label no concept has."""
        synset = self.concept_of(label)
        if synset is None:
            return ()
        out: list[str] = []
        for s in (synset, *(a for a in self.ancestors(synset) if a in self.named)):
            for lemma in self.nodes[s]["lemmas"]:
                if lemma.lower() not in out:
                    out.append(lemma.lower())
        return tuple(out)

    def query_words(self, word: str) -> list[str]:
        """A searched word and the words it also means to find: the first word of each concept it can
        name (`children`: child; `airplane`: airplane), so plurals and synonyms reach the stored words."""
        out = [word.lower()]
        for synset in self.lookup(word)[:3]:
            first = self.nodes[synset]["lemmas"][0].lower()
            if first not in out:
                out.append(first)
        return out

    @cached_property
    def caption_words(self) -> dict[str, str]:
        """Caption word form -> the Flickr8k everyday-words label (a synset) it names."""
        return self.data["flickr8k_nouns"]["words"]

    def caption_labels(self, caption: str) -> set[str]:
        """The everyday-words labels one caption says: two-word nouns first (`tennis ball`), then words."""
        return {synset for _, synset in _said(caption, self.caption_words)}

    def objects(self, caption: str) -> list[tuple[str, str]]:
        """The physical things a sentence names, in order, as (its words, concept): two-word nouns first
        (`tennis ball`), then single words; words captions use as something else (`red`, `running`)
        name nothing. The words are those of Flickr8k's captions and the bundled models' labels."""
        return _said(caption, self.data.get("caption_objects", {}))


_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)?")


def _said(sentence: str, words: dict[str, str]) -> list[tuple[str, str]]:
    """(word or two-word phrase, concept) for each phrase of `sentence` in `words`, two words first."""
    tokens, found, i = _TOKEN.findall(sentence.lower()), [], 0
    while i < len(tokens):
        pair = f"{tokens[i]} {tokens[i + 1]}" if i + 1 < len(tokens) else None
        if pair in words:
            found.append((pair, words[pair]))
            i += 2
            continue
        if tokens[i] in words:
            found.append((tokens[i], words[tokens[i]]))
        i += 1
    return found


@lru_cache(maxsize=1)
def concepts() -> Concepts:
    """The shipped concept vocabulary, read once per process."""
    if not DATA.is_file():
        raise CheckpointError(f"{DATA}: the concept vocabulary is missing; reinstall tagcap")
    return Concepts(json.loads(DATA.read_text(encoding="utf-8")))


def read_mapping(folder: str | Path) -> dict[str, str] | None:
    """A model folder's `concepts.tsv` (label -> synset), or None where it has none. A synset the
    vocabulary does not hold is refused, naming the line."""
    path = Path(folder) / "concepts.tsv"
    if not path.is_file():
        return None
    vocab, mapping = concepts(), {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], 2):
        label, synset, *_ = line.split("\t") + [""]
        if synset not in vocab:
            raise CheckpointError(f"{path}:{n}: {synset!r} is not a concept of this tagcap's vocabulary")
        mapping[label] = synset
    return mapping
