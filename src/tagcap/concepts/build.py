"""Make the concept vocabulary that ships with tagcap, from WordNet 3.0 (build time only).

    python -m tagcap.concepts.build [--wordnet /usr/share/wordnet] [--flickr8k ../shared/datasets/flickr8k]

Writes `tagcap/concepts/concepts.json` (every concept the bundled models can name, with its
WordNet hypernyms up to the root, its lemmas and their plural forms, and the caption nouns of the
Flickr8k everyday-words benchmark) and, in each bundled annotator's folder, `concepts.tsv`: the
reviewed mapping of its labels to WordNet noun synsets (label, synset, WordNet's words, gloss).

How a label finds its synset: ImageNet classes are WordNet synsets already (their ids are WordNet
3.0 offsets); any other label takes its word's most frequent noun sense, except where
`REVIEWED` below says otherwise after a person read the glosses (Corel-5k's `tiger` is the cat, not
"a fierce or audacious person"). Every entry there names the sense chosen and why.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from tagcap.concepts.wordnet import DEBIAN_WORDNET, WordNet

HERE = Path(__file__).resolve().parent
BUNDLED = HERE.parent / "bundled"

# label -> (WordNet lemma, sense number in WordNet's order), read against the glosses
REVIEWED = {
    # Corel-5k
    "people": ("person", 1),        # Corel's `people` photos show persons; judged as `person`
    "branch": ("branch", 2),        # of a tree, not of an organization
    "palm": ("palm", 3),            # the tree
    "land": ("land", 4),            # the solid part of the earth's surface
    "peaks": ("peak", 4),           # of a mountain
    "runway": ("runway", 4),        # where planes take off
    "prop": ("propeller plane", 1), # Corel's airshow photos: propeller aircraft
    "f-16": ("fighter", 2),         # the F-16 is a fighter aircraft; WordNet has no entry of its own
    "tails": ("tail", 7),           # of an aircraft
    "polar": ("polar bear", 1),     # Corel's `polar` goes with `bear`
    "reflection": ("reflection", 5),  # the image in water or a mirror
    "cubs": ("cub", 3),             # young carnivores (bear cubs)
    "hut": ("hut", 2),              # a small crude dwelling
    "plants": ("plant", 2),         # flora, not factories
    "coral": ("coral", 4),          # the animal of the reefs
    "fan": ("sea fan", 1),          # Corel's `fan` photos are reef sea fans
    "anemone": ("sea anemone", 1),  # on the reefs, beside coral and fish
    "path": ("path", 2),            # a way made for walking
    "tiger": ("tiger", 2),          # the cat
    "bengal": ("Bengal tiger", 1),  # Corel's `bengal` goes with `tiger`
    "kit": ("kit fox", 1),          # Corel's `kit` goes with `fox`
    "tables": ("table", 2),         # the furniture
    "nets": ("net", 6),             # netting (fishing nets on quays)
    "crafts": ("handicraft", 1),    # things made by hand, sold in markets
    "ruins": ("ruin", 2),           # a ruined building
    "castle": ("castle", 2),        # the fortified building
    "sign": ("signboard", 1),       # a board showing a message
    "balcony": ("balcony", 2),      # on a building's wall
    "post": ("post", 4),            # an upright pole
    "market": ("marketplace", 2),   # the place with stalls
    "church": ("church", 2),        # the building
    "arch": ("arch", 4),            # the masonry construction
    "pillar": ("column", 7),        # the architectural support
    "column": ("column", 7),        # the architectural support
    "canal": ("canal", 3),          # the waterway
    "dock": ("dock", 5),            # where boats land
    "interior": ("interior", 2),    # the inside of a building or room
    "relief": ("relief", 10),       # carved sculpture
    "frozen": ("ice", 1),           # an adjective in Corel; what it shows is ice
    "albatross": ("albatross", 2),  # the bird
    "booby": ("booby", 2),          # the bird
    "marine": ("marine iguana", 1), # Corel's `marine` goes with `iguana`
    "iguana": ("iguanid", 1),       # iguanas in general (Corel's are marine iguanas, not the common one)
    "white-tailed": ("Virginia deer", 1),  # the white-tailed deer
    "horns": ("horn", 2),           # of an animal
    "stems": ("stem", 2),           # of a plant
    "blooms": ("bloom", 2),         # flowers
    "sphinx": ("sphinx", 3),        # the stone statue
    "lynx": ("lynx", 2),            # the cat
    "whales": ("whale", 2),         # the animal
    "tracks": ("track", 3),         # railway rails
    "railroad": ("railroad", 2),    # the track
    "formula": ("racer", 2),        # Formula One racing cars
    "prototype": ("racer", 2),      # Corel's prototype racing cars
    "turn": ("bend", 1),            # a bend in the road (the racing photos)
    "display": ("display", 2),      # something shown to the public
    "detail": ("detail", 2),        # a small part
    "light": ("light", 7),          # the effect of light on a scene
    "flight": ("flight", 1),        # a formation of aircraft
    "glass": ("glass", 1),          # the material (stained glass, windows)
    "close-up": ("closeup", 1),     # a photograph taken at close range
    "pool": ("pool", 2),            # Corel's pools are ponds and rock pools
    "stone": ("stone", 2),          # building stone
    "pots": ("pot", 1),
}
# the same for the words of Flickr8k's captions (a person's photos: `pool` there is a swimming pool)
CAPTION_REVIEWED = {
    "people": ("person", 1),        # counted as persons
    "bike": ("bicycle", 1),         # in Flickr8k's captions nearly always a bicycle
    "swimming pool": ("swimming pool", 1),
    "football": ("football", 2),    # the ball
}
# broader concepts every person uses, shown above a tag (`Eskimo dog`: dog, animal) and scored by summing
# the ImageNet classes under them, beside every label of a bundled model: (lemma, sense number)
EVERYDAY = [("animal", 1), ("person", 1), ("plant", 2), ("vehicle", 1), ("building", 1), ("food", 1),
            ("dog", 1), ("cat", 1), ("big cat", 1), ("bird", 1), ("fish", 1), ("insect", 1), ("reptile", 1),
            ("primate", 2), ("bear", 1), ("car", 1), ("boat", 1), ("aircraft", 1), ("bicycle", 1), ("flower", 1),
            ("tree", 1), ("furniture", 1), ("musical instrument", 1), ("clothing", 1), ("fruit", 1)]
STOP_NOUNS = set("""a an the i it at are is was be being been hi ha doe s while past upside front side top
edge area line number point object course background middle way lot one other something thing end part
tan orange blonde left right bottom near look view shot image picture photo photograph time day air
type kind sort set pair couple group""".split())
MIN_PHOTOS = 20  # a caption noun becomes a label when at least this many train photos carry it


def sense(wn: WordNet, lemma: str, number: int) -> str:
    senses = wn.index.get(lemma) or wn.index.get(lemma.lower())
    if not senses or number > len(senses):
        raise SystemExit(f"REVIEWED: WordNet has no sense {number} of {lemma!r}")
    return senses[number - 1]


def label_synset(wn: WordNet, label: str, reviewed: dict = REVIEWED) -> str | None:
    """A non-ImageNet label's synset: the reviewed sense, else its word's most frequent noun sense."""
    if label in reviewed:
        return sense(wn, *reviewed[label])
    lemmas = wn.lemmatize(label.replace("-", " ")) or wn.lemmatize(label)
    return wn.index[lemmas[0]][0] if lemmas else None


_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


def caption_nouns(wn: WordNet, caption: str) -> list[str]:
    """The noun lemmas a caption says, in order: two-word WordNet nouns (`tennis ball`) before single
    words, words used mostly as something else (`red`, `young`, `running`) and `STOP_NOUNS` left out."""
    tokens, out, i = _WORD.findall(caption.lower()), [], 0
    while i < len(tokens):
        if i + 1 < len(tokens) and not ({tokens[i], tokens[i + 1]} & STOP_NOUNS):
            pair = wn.lemmatize(f"{tokens[i]} {tokens[i + 1]}")
            first = wn.counts.get(tokens[i], {})
            if pair and first.get("a", 0) <= first.get("n", 0):  # `tennis ball`, not `young girl`
                out.append(pair[0])
                i += 2
                continue
        lemmas = _singular_first(wn, tokens[i])
        if lemmas and lemmas[0] not in STOP_NOUNS and wn.mostly_noun(lemmas[0]) and not _gerund(wn, tokens[i]):
            out.append(lemmas[0])
        i += 1
    return out


KEEP_PLURAL = {"glasses", "sunglasses", "jeans", "shorts", "pants", "trousers", "clothes"}


def _singular_first(wn: WordNet, word: str) -> list[str]:
    """A word's noun lemmas with the singular first where WordNet also lists the plural as a noun of
    its own (`men`, `hands`, `arms`), except for words that are plural by nature (`KEEP_PLURAL`)."""
    lemmas = wn.lemmatize(word)
    if word in KEEP_PLURAL or len(lemmas) < 2:
        return lemmas
    return sorted(lemmas, key=lambda lemma: -wn.counts.get(lemma, {}).get("n", 0))


def _gerund(wn: WordNet, word: str) -> bool:
    """`swimming`, `riding`: an -ing form whose verb is used more than the noun it also is."""
    if not word.endswith("ing") or len(word) < 6:
        return False
    stem = word[:-3]
    verbs = [stem, stem + "e", stem[:-1]] if len(stem) > 2 and stem[-1] == stem[-2] else [stem, stem + "e"]
    verb = max(wn.counts.get(v, {}).get("v", 0) for v in verbs)
    return verb > wn.counts.get(word, {}).get("n", 0)


def flickr8k_labels(wn: WordNet, token_file: Path, train_list: Path) -> dict[str, dict]:
    """Caption-noun labels of the Flickr8k everyday-words benchmark: a synset is a photo's label when
    at least 2 of its 5 captions say one of its words, and a label of the vocabulary when at least
    `MIN_PHOTOS` train photos carry it. Returns synset -> {"name": the word captions use most for it,
    "photos": train photos}."""
    from tagcap.data.readers.flickr8k import read_token_file

    captions = read_token_file(token_file)
    train = train_list.read_text().split()
    photos, words = Counter(), Counter()
    for name in train:
        said = Counter()
        for caption in captions.get(name, []):
            concepts = {}
            for lemma in caption_nouns(wn, caption):
                concepts.setdefault(label_synset(wn, lemma, CAPTION_REVIEWED), lemma)
            for synset, lemma in concepts.items():
                said[synset] += 1
                words[synset, lemma] += 1
        photos.update(s for s, k in said.items() if k >= 2)
    labels = {}
    for synset, n in photos.most_common():
        if n >= MIN_PHOTOS and synset:
            name = max((w for (s, w) in words if s == synset), key=lambda w: words[synset, w])
            labels[synset] = {"name": name, "photos": n}
    return labels


PHYSICAL_ENTITY = "n00001930"  # WordNet's `physical entity`: what a photo can show
# caption words WordNet knows as nouns that captions use as something else (`he`: helium, `or`: Oregon)
NOT_OBJECTS = set("he she me us or am was wa is la oh re res id jr ca ti nd mp dc ac german english american".split())
# caption words whose most frequent noun sense is not the one captions mean: (lemma, sense number)
OBJECT_REVIEWED = {"jersey": ("jersey", 3)}  # the shirt, not New Jersey
# words for people together, which WordNet files under groups (not things a photo shows) and captions
# use for persons: `a couple stands on a rock` claims people as much as `a man` does
PERSON_WORDS = ("couple", "crowd", "family", "team", "audience")
# concepts a caption's word means either of: (lemma, sense) pairs judged as one object (a caption's
# `water` is the substance to WordNet, and the sea or the lake a photo shows to a person)
SAME_OBJECTS = [(("water", 1), ("body of water", 1))]


def caption_objects(wn: WordNet, token_file: Path, labels: dict[str, str]) -> dict[str, str]:
    """Caption word form -> the synset it names, for the nouns of Flickr8k's captions (all of them: a
    word list, not labels) that name a physical thing, for the caption words that are a bundled model's
    label (`train`: WordNet counts it as a verb more often; `church`: the building, as Corel-5k's), and
    for the words for people together (`PERSON_WORDS`): the objects a caption can be right or wrong
    about (`tagcap.metrics.hallucination`), found at run time without WordNet. `labels`: label word ->
    synset."""
    from tagcap.data.readers.flickr8k import read_token_file

    exceptions: dict[str, list[str]] = {}
    for inflected, bases in wn.exceptions.items():
        for base in bases:
            exceptions.setdefault(base, []).append(inflected)
    captions = [c for caps in read_token_file(token_file).values() for c in caps]
    chosen: dict[str, str] = {}  # lemma -> synset
    for lemma in sorted({lemma for c in captions for lemma in caption_nouns(wn, c)}):
        chosen[lemma] = label_synset(wn, lemma, {**CAPTION_REVIEWED, **OBJECT_REVIEWED})
    said = {t for c in captions for t in _WORD.findall(c.lower())}
    physical = lambda synset: synset is not None and PHYSICAL_ENTITY in wn.ancestors(synset)  # noqa: E731
    for label, synset in labels.items():  # a label's reviewed sense where WordNet's first is not a thing
        if label.lower() in said and not physical(chosen.get(label.lower())):
            chosen[label.lower()] = synset
    out: dict[str, str] = {}
    person = sense(wn, "person", 1)
    for word in PERSON_WORDS:
        for form in (word, *plurals(word)):
            out[form] = person
    for lemma, synset in sorted(chosen.items()):
        if lemma in NOT_OBJECTS or len(lemma) < 2 or not physical(synset):
            continue
        for form in [lemma, *plurals(lemma), *exceptions.get(lemma, [])]:
            back = wn.lemmatize(form) if " " in form else _singular_first(wn, form)
            if form == lemma or (back and back[0] == lemma):
                out.setdefault(form.lower(), synset)
    return out


def plurals(word: str) -> list[str]:
    """English regular plural forms of a noun (the inverse of WordNet's morphy rules)."""
    last = word.split()[-1] if word else word
    head = word[: len(word) - len(last)]
    if last.endswith(("s", "x", "z", "ch", "sh")):
        forms = [last + "es"]
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        forms = [last[:-1] + "ies"]
    elif last.endswith("man"):
        forms = [last[:-3] + "men"]
    else:
        forms = [last + "s"]
    return [head + f for f in forms]


def build(wn: WordNet, flickr8k: Path | None) -> dict:
    models: dict[str, dict[str, str]] = {}
    names: dict[str, str] = {}  # synset -> the name people see: a bundled label's own word where one has it
    for model in ("corel5k-annotator", "imagenet-classes"):
        config = json.loads((BUNDLED / model / "config.json").read_text())
        labels = config["vocabulary"]["labels"]
        if config.get("synsets"):
            mapping = dict(zip(labels, config["synsets"]))
        else:
            mapping = {label: label_synset(wn, label) for label in labels}
            missing = [label for label, s in mapping.items() if s is None]
            if missing:
                raise SystemExit(f"{model}: no WordNet noun for {missing}; add them to REVIEWED")
        models[model] = mapping
    caption_labels, objects = {}, {}
    if flickr8k is not None:
        caption_labels = flickr8k_labels(wn, flickr8k / "Flickr8k.token.txt", flickr8k / "Flickr_8k.trainImages.txt")
        labels = {label: s for m in ("corel5k-annotator", "imagenet-classes") for label, s in models[m].items()}
        objects = caption_objects(wn, flickr8k / "Flickr8k.token.txt", labels)
    names_used = [i["name"] for i in caption_labels.values()]
    if len(set(names_used)) != len(names_used):
        raise SystemExit(f"two caption-noun labels share a name: {sorted(n for n in names_used if names_used.count(n) > 1)}")
    models["flickr8k-tagger"] = {i["name"]: s for s, i in caption_labels.items()}
    for model, mapping in models.items():
        for label, synset in mapping.items():
            names.setdefault(synset, label)  # ImageNet's labels tell its two cranes apart
    for synset, info in caption_labels.items():
        names.setdefault(synset, info["name"])
    for synset in (sense(wn, *e) for e in EVERYDAY):  # their everyday word wins: `person`, not Corel's `people`
        names[synset] = wn.synsets[synset].lemmas[0]
    closure: set[str] = set()
    for synset in names:
        closure |= {synset, *wn.ancestors(synset)}
    forms: dict[str, list[str]] = {}
    exceptions: dict[str, list[str]] = {}
    for inflected, bases in wn.exceptions.items():
        for base in bases:
            exceptions.setdefault(base, []).append(inflected)
    # every lemma of every concept, and every synset of the index that a word of a concept can be
    for synset in sorted(closure):
        for lemma in wn.synsets[synset].lemmas:
            key = lemma.lower()
            for form in [key, *plurals(key), *exceptions.get(key, [])]:
                bucket = forms.setdefault(form, [])
                if synset not in bucket:
                    bucket.append(synset)
    labelled: dict[str, str] = {}  # a model's label names its own concept first (Corel-5k's `people`: person)
    for mapping in models.values():
        for label, synset in mapping.items():
            labelled.setdefault(label.lower(), synset)
            bucket = forms.setdefault(label.lower(), [])
            if synset not in bucket:
                bucket.append(synset)
    for form, bucket in forms.items():  # most frequent sense first, as WordNet orders them
        order = {s: i for i, s in enumerate(wn.index.get(form, []))}
        for lemma in wn.lemmatize(form):
            order = {**{s: i for i, s in enumerate(wn.index[lemma])}, **order}
        bucket.sort(key=lambda s: (s != labelled.get(form), order.get(s, 10 ** 6)))
    for synset in set(objects.values()):  # in the graph for their hypernyms; their words stay out of `forms`
        closure |= {synset, *wn.ancestors(synset)}
    concepts = {s: {"name": names.get(s, wn.synsets[s].lemmas[0]), "lemmas": wn.synsets[s].lemmas,
                    "parents": [p for p in wn.synsets[s].hypernyms if p in closure]} for s in sorted(closure)}
    nouns = {}
    for synset in caption_labels:  # the caption words that count as each benchmark label
        for lemma in wn.synsets[synset].lemmas:
            for form in [lemma.lower(), *plurals(lemma.lower()), *exceptions.get(lemma.lower(), [])]:
                lemmas = wn.lemmatize(form)
                if lemmas and label_synset(wn, lemmas[0], CAPTION_REVIEWED) == synset and lemmas[0] not in STOP_NOUNS:
                    nouns[form] = synset
    return {"wordnet": "3.0", "concepts": concepts, "forms": forms, "named": sorted(names), "models": models,
            "caption_objects": dict(sorted(objects.items())),
            "same_objects": [[sense(wn, *a), sense(wn, *b)] for a, b in SAME_OBJECTS],
            "flickr8k_nouns": {"labels": {s: i["name"] for s, i in caption_labels.items()},
                               "words": dict(sorted(nouns.items()))}}


def write_tsv(path: Path, mapping: dict[str, str], wn: WordNet) -> None:
    lines = ["label\tsynset\twordnet\tgloss"]
    for label, synset in mapping.items():
        s = wn.synsets[synset]
        lines.append(f"{label}\t{synset}\t{', '.join(s.lemmas[:4])}\t{s.gloss.split(';')[0][:100]}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", default=str(DEBIAN_WORDNET))
    parser.add_argument("--flickr8k", default=str(HERE.parents[3] / "shared" / "datasets" / "flickr8k"))
    args = parser.parse_args(argv)
    wn = WordNet(args.wordnet)
    data = build(wn, Path(args.flickr8k))
    (HERE / "concepts.json").write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    for model, mapping in data["models"].items():
        if (BUNDLED / model).is_dir():
            write_tsv(BUNDLED / model / "concepts.tsv", mapping, wn)
    print(f"{len(data['concepts'])} concepts, {len(data['forms'])} word forms, "
          f"{len(data['caption_objects'])} caption object words, "
          f"{len(data['flickr8k_nouns']['labels'])} Flickr8k caption-noun labels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
