"""A reader of the WordNet 3.0 noun database as Debian's `wordnet-base` installs it (/usr/share/wordnet):
`data.noun`, `index.noun`, `noun.exc`, `cntlist.rev`, in the format of wndb(5WN) and cntlist(5WN).

Used only at build time, to make the concept vocabulary that ships with the package
(`tagcap.concepts.build`); nothing at run time reads WordNet. Written here rather than taken from
NLTK because NLTK's reader wants its own downloaded corpus layout (it looks for files that the
Debian package does not have, and refuses paths outside its data folders); the format is a few
fields per line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tagcap.errors import DataError

DEBIAN_WORDNET = Path("/usr/share/wordnet")
_HYPERNYMS = {"@", "@i"}  # hypernym, instance hypernym
_POS_OF_SS_TYPE = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}


@dataclass
class Synset:
    """One noun synset: `id` is WordNet 3.0's offset written as ImageNet writes it (`n02084071`)."""

    id: str
    lemmas: list[str]
    gloss: str
    hypernyms: list[str] = field(default_factory=list)


class WordNet:
    """The noun synsets, the noun index (lemma -> synsets, most frequent sense first), the noun
    exception list (irregular plurals) and per-lemma sense counts for every part of speech."""

    def __init__(self, folder: str | Path = DEBIAN_WORDNET):
        self.folder = Path(folder)
        for name in ("data.noun", "index.noun", "noun.exc", "cntlist.rev"):
            if not (self.folder / name).is_file():
                raise DataError(self.folder / name, "WordNet 3.0 file not found (apt-get install wordnet-base)")
        self.synsets = self._read_data()
        self.index = self._read_index()
        self.exceptions = self._read_exceptions()
        self.counts = self._read_counts()

    def _lines(self, name: str):
        with open(self.folder / name, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.startswith("  ") or not line.strip():  # the licence header
                    continue
                yield n, line.rstrip("\n")

    def _read_data(self) -> dict[str, Synset]:
        synsets = {}
        for n, line in self._lines("data.noun"):
            fields, _, gloss = line.partition(" | ")
            parts = fields.split()
            try:
                words = int(parts[3], 16)
                lemmas = [parts[4 + 2 * i].replace("_", " ") for i in range(words)]
                lemmas = [lemma.split("(")[0] for lemma in lemmas]  # adjective markers never occur on nouns; safe
                at = 4 + 2 * words
                pointers = int(parts[at])
                hypernyms = [f"n{parts[at + 1 + 4 * i + 1]}" for i in range(pointers)
                             if parts[at + 1 + 4 * i] in _HYPERNYMS and parts[at + 1 + 4 * i + 2] == "n"]
            except (IndexError, ValueError):
                raise DataError(f"{self.folder / 'data.noun'}:{n}", "not a WordNet data line") from None
            synsets[f"n{parts[0]}"] = Synset(f"n{parts[0]}", lemmas, gloss.strip(), hypernyms)
        return synsets

    def _read_index(self) -> dict[str, list[str]]:
        index = {}
        for _, line in self._lines("index.noun"):
            parts = line.split()
            count = int(parts[2])
            index[parts[0].replace("_", " ")] = [f"n{o}" for o in parts[-count:]]
        return index

    def _read_exceptions(self) -> dict[str, list[str]]:
        exceptions = {}
        for _, line in self._lines("noun.exc"):
            inflected, *bases = line.split()
            exceptions[inflected.replace("_", " ")] = [b.replace("_", " ") for b in bases]
        return exceptions

    def _read_counts(self) -> dict[str, dict[str, int]]:
        """Tagged-corpus counts per lemma and part of speech (n, v, a, r): how often the word is which."""
        counts: dict[str, dict[str, int]] = {}
        for _, line in self._lines("cntlist.rev"):
            key, _, tally = line.split()
            lemma, _, rest = key.partition("%")
            pos = _POS_OF_SS_TYPE.get(rest[:1])
            if pos:
                per = counts.setdefault(lemma.replace("_", " ").lower(), {})
                per[pos] = per.get(pos, 0) + int(tally)
        return counts

    def lemmatize(self, word: str) -> list[str]:
        """The noun lemmas a word form can be (WordNet's morphy for nouns): the word itself, its
        exception-list bases, and the regular plural endings undone; only forms in the noun index."""
        word = word.lower().strip()
        forms = [word] + self.exceptions.get(word, [])
        for suffix, base in (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                             ("men", "man"), ("ies", "y"), ("s", "")):
            if word.endswith(suffix) and len(word) > len(suffix):
                forms.append(word[: -len(suffix)] + base)
        seen: list[str] = []
        for f in forms:
            if f in self.index and f not in seen:
                seen.append(f)
        return seen

    def mostly_noun(self, lemma: str) -> bool:
        """Whether a word is used as a noun at least as often as as any other part of speech in
        WordNet's tagged corpus (`red`, `young`, `running` are not; `man`, `dog` are)."""
        per = self.counts.get(lemma.lower(), {})
        noun = per.get("n", 0)
        return lemma in self.index and noun >= max((c for p, c in per.items() if p != "n"), default=0)

    def ancestors(self, synset: str) -> list[str]:
        """Every hypernym of a synset up to `entity`, nearest first, each once."""
        out, frontier = [], list(self.synsets[synset].hypernyms)
        while frontier:
            s = frontier.pop(0)
            if s not in out:
                out.append(s)
                frontier += self.synsets[s].hypernyms
        return out
