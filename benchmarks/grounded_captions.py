"""Hallucination of the shipped captioner, and captions grounded in the taggers' evidence.

    python benchmarks/grounded_captions.py features --split val    # photos through the default models, once
    python benchmarks/grounded_captions.py choose                  # the grounding's strength, on validation
    python benchmarks/grounded_captions.py features --split test   # once, for the reported numbers
    python benchmarks/grounded_captions.py test                    # -> benchmarks/results/grounded-captions.json
    python benchmarks/grounded_captions.py dog-search              # a `dog` search of the Corel-5k test photos

Photos: Corel-5k (validation: the 450 photos carved from train with seed 0; test: its 499) and
Flickr8k (validation: the dev split; test: its 1,000), each run through the default models exactly
as `predict` runs them (the photo and its mirror image, the backbone engine `predict` picks here,
the captioner's decoding precision). `features` keeps each photo's annotator scores and the
captioner's feature grid, so that every grounding setting decodes the same inputs.

Truth: Corel-5k's labels; Flickr8k the objects its five reference captions name
(`tagcap.metrics.hallucination`). The Flickr8k captioner was trained on train + dev, so its dev
captions are better than on a stranger's photos: Corel-5k validation (photos it never saw) weighs
as much in `choose`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "datasets"
WORK = Path("/tmp/tagcap-grounding")
RESULT = ROOT / "benchmarks" / "results" / "grounded-captions.json"
CHOICE = ROOT / "benchmarks" / "results" / "grounded-captions-val.json"
MODELS = ("corel5k-annotator", "imagenet-classes", "flickr8k-tagger", "flickr8k-captioner")


def datasets(split: str) -> dict[str, list]:
    from tagcap.data import read_dataset

    return {"corel5k": read_dataset(DATA / "corel5k").splits[split],
            "flickr8k": read_dataset(DATA / "flickr8k", task="caption").splits[split]}


def cmd_features(args) -> None:
    from tagcap.features.images import load_image
    from tagcap.inference.outputs import combine_views, predict_outputs
    from tagcap.inference.taggers import ModelSet, encode

    models = ModelSet.load(MODELS)
    WORK.mkdir(parents=True, exist_ok=True)
    for name, records in datasets(args.split).items():
        t0 = time.perf_counter()
        scores = {m.name: [] for m in models.annotators}
        grids = []
        for start in range(0, len(records), 32):
            images = [load_image(r.image, models.decode_size) for r in records[start:start + 32]]
            pooled, grid = encode(models.backbone, images, models.views)
            for m in models.annotators:
                scores[m.name].append(predict_outputs(m.decoder, m.pick(pooled, grid))["scores"])
            grids.append(combine_views(grid).astype(np.float16))
        np.savez(WORK / f"{name}-{args.split}.npz", keys=np.array([r.key for r in records]),
                 grid=np.concatenate(grids), **{m: np.concatenate(p) for m, p in scores.items()})
        print(f"{name} {args.split}: {len(records)} photos, {time.perf_counter() - t0:.0f} s, "
              f"engine {models.backbone.engine}", flush=True)


def truths(name: str, records) -> tuple[list[set[str]], set[str]]:
    """Each photo's truth (concepts) and the concepts the dataset's truth can name."""
    from tagcap.concepts import concepts, read_mapping
    from tagcap.inference.bundled import BUNDLED
    from tagcap.metrics.hallucination import reference_objects

    if name == "corel5k":
        mapping = read_mapping(BUNDLED / "corel5k-annotator")
        return [{mapping[label] for label in r.labels} for r in records], set(mapping.values())
    return [reference_objects(list(r.captions)) for r in records], set(concepts().data["flickr8k_nouns"]["labels"])


class Split:
    """One dataset split's cached inputs, its truth, and the taggers' confidences per concept."""

    def __init__(self, name: str, split: str, records, captioner):
        from tagcap.inference.bundled import BUNDLED
        from tagcap.inference.grounding import tagger_confidences
        from tagcap.inference.shown import Calibration

        data = np.load(WORK / f"{name}-{split}.npz")
        if list(data["keys"]) != [r.key for r in records]:
            raise SystemExit(f"{WORK}/{name}-{split}.npz: made for other photos; run `features --split {split}`")
        self.name, self.records, self.captioner = name, records, captioner
        self.grid = data["grid"][:, None].astype(np.float32)  # one view: the two were averaged when cached
        self.models, self.confidences = tagger_confidences(
            [(m, Calibration.load(BUNDLED / m), data[m]) for m in MODELS[:3]])
        self.truth, self.vocabulary = truths(name, records)

    def rows(self, n: int) -> list[np.ndarray]:
        return [c[n:n + 1] for c in self.confidences]

    def captions(self, grounding, beam: int = 3) -> tuple[list[str], list[str | None], float]:
        """Captions under a grounding, why each is withheld (or None), and seconds taken."""
        from tagcap.inference.grounding import CaptionGrounder
        from tagcap.inference.outputs import caption_grid

        t0 = time.perf_counter()
        c = self.captioner
        grounder = CaptionGrounder(c.words, self.models, grounding)
        bias = grounder.word_bias(self.confidences)
        caps, _ = caption_grid(c.decoder, self.grid, c.words, beam_width=beam, precision=c.precision,
                               word_bias=bias, once=grounder.once if bias is not None else None)
        why = [grounder.withheld(grounder.objects(cap, self.rows(n))) for n, cap in enumerate(caps)]
        return caps, why, time.perf_counter() - t0

    def score(self, caps: list[str], why: list[str | None], meteor: bool = False) -> dict:
        from tagcap.metrics.captioning import caption_metrics
        from tagcap.metrics.hallucination import ChairJudge

        judge = ChairJudge(self.vocabulary)
        shown = [c if w is None else "" for c, w in zip(caps, why)]
        row = {"photos": len(caps), "withheld": round(100 * sum(w is not None for w in why) / len(caps), 2),
               **{f"{k}": v for k, v in judge.score(shown, self.truth).items()},
               "every_caption": {k: v for k, v in judge.score(caps, self.truth).items() if k != "hallucinated_most"}}
        if self.name == "flickr8k":
            refs = {r.key: list(r.captions) for r in self.records}
            scores = caption_metrics(dict(zip(refs, caps)), refs, meteor=meteor)
            row.update({k: round(scores[k], 2) for k in ("BLEU4", "METEOR", "CIDEr") if k in scores})
        return row


def load_splits(split: str) -> dict[str, Split]:
    from tagcap.inference.taggers import load_model

    captioner = load_model(MODELS[3])
    return {name: Split(name, split, records, captioner) for name, records in datasets(split).items()}


STRENGTHS = (1.0, 2.0, 4.0, float("inf"))
QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)  # a concept's support: this quantile of its evidence on photos showing it
WITHHOLDS = (0.0, 0.25, 0.5)  # a caption is withheld under this share of an object's support
CIDER_DROP = 3.0     # Flickr8k dev CIDEr-D may fall at most this much below the captioner's own
MAX_WITHHELD = 10.0  # per cent of photos left without a caption, on each dataset


def cmd_choose(args) -> None:
    """Every setting on validation; the chosen one: the lowest mean CHAIR_s over both datasets, with
    Flickr8k dev CIDEr-D at most CIDER_DROP below the ungrounded captioner's and at most MAX_WITHHELD %
    of either dataset's photos left without a caption."""
    from tagcap import atomic
    from tagcap.inference.grounding import GROUNDING_FILE, CaptionGrounder, Grounding
    from tagcap.provenance import machine_info

    splits = load_splits("val")
    t0 = time.perf_counter()
    sources, aucs = fit_sources(splits)
    print(f"sources: {len(sources)} concepts, {sum(not v for v in sources.values())} judged by no tagger", flush=True)
    supports = {q: fit_supports(splits, sources, q) for q in QUANTILES}
    rows = []
    settings = [(0.0, QUANTILES[0])] + [(s, q) for s in STRENGTHS for q in QUANTILES]
    for strength, q in settings:
        default, per_concept = supports[q]
        decoded = {name: sp.captions(Grounding(strength, default, 0.0, sources, per_concept))
                   for name, sp in splits.items()}
        for withhold in WITHHOLDS if strength > 0 else (0.0,):
            g = Grounding(strength, default, withhold, sources, per_concept)
            row = {"strength": strength, "quantile": q, "support": default, "withhold": withhold}
            for name, sp in splits.items():
                caps, _, seconds = decoded[name]
                grounder = CaptionGrounder(sp.captioner.words, sp.models, g)
                why = [grounder.withheld(grounder.objects(c, sp.rows(n))) if withhold > 0 else None
                       for n, c in enumerate(caps)]
                row[name] = {**sp.score(caps, why), "seconds": round(seconds, 1)}
            rows.append(row)
            shown = ("CHAIR_s", "CHAIR_i", "says_dog", "withheld", "CIDEr", "BLEU4")
            print(json.dumps({k: {kk: v[kk] for kk in shown if kk in v} if isinstance(v, dict) else v
                              for k, v in row.items()}), flush=True)
    base = rows[0]
    ok = [r for r in rows if r["flickr8k"]["CIDEr"] >= base["flickr8k"]["CIDEr"] - CIDER_DROP
          and all(r[n]["withheld"] <= MAX_WITHHELD for n in splits)]
    chosen = min(ok, key=lambda r: (np.mean([r[n]["CHAIR_s"] for n in splits]), -r["flickr8k"]["CIDEr"]))
    keys = ("strength", "quantile", "support", "withhold")
    atomic.write_json(CHOICE, {"split": "validation (Corel-5k: 450 photos carved from train; Flickr8k: dev)",
                               "rule": " ".join(cmd_choose.__doc__.split()),
                               "limits": {"CIDEr_drop": CIDER_DROP, "withheld_percent": MAX_WITHHELD},
                               "chosen": {k: _finite(chosen[k]) for k in keys},
                               "source_auc": aucs, "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
                               "machine": machine_info()})
    print("chosen:", {k: chosen[k] for k in keys})
    atomic.write_json(GROUNDING_FILE, {**{k: _finite(chosen[k]) for k in ("strength", "support", "withhold")},
                                       "supports": supports[chosen["quantile"]][1], "sources": sources,
                                       "chosen_by": "benchmarks/grounded_captions.py choose",
                                       "validation": str(CHOICE.relative_to(ROOT))})


def fit_supports(splits: dict[str, "Split"], sources: dict[str, list[str]], quantile: float
                 ) -> tuple[float, dict[str, float]]:
    """Per concept that answers for a caption word, its support: the `quantile` of its evidence over
    the validation photos that show it (at least MIN_PHOTOS of them); and, for the rest, the median of
    those. Evidence under a concept's support contradicts it: nearly every photo with the thing has more."""
    from tagcap.inference.grounding import CaptionGrounder, Evidence, Grounding
    from tagcap.metrics.hallucination import ChairJudge

    any_split = next(iter(splits.values()))
    grounder = CaptionGrounder(any_split.captioner.words, any_split.models, Grounding(sources=sources))
    evidence = Evidence(any_split.models, sources)
    speakers = sorted({evidence.speaker(s)[0] for _, s in grounder.judged})
    judges = {n: ChairJudge(sp.vocabulary) for n, sp in splits.items()}
    out = {}
    for concept in speakers:
        seen = []
        for n, sp in splits.items():
            if judges[n]._judged(concept):
                e = evidence.of(concept, sp.confidences)
                seen += [x for x, t in zip(e, sp.truth) if judges[n].present(concept, t)]
        if len(seen) >= MIN_PHOTOS:
            out[concept] = round(float(np.quantile(seen, quantile)), 4)
    return round(float(np.median(list(out.values()))), 4), out


def cmd_test(args) -> None:
    """Once, for the reported numbers: the plain captioner and the bundled grounding on both test sets."""
    from tagcap import atomic
    from tagcap.inference.grounding import Grounding
    from tagcap.provenance import machine_info

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from default_models import add_card_metrics

    from tagcap.inference.bundled import BUNDLED

    grounding = Grounding.load()
    splits = load_splits("test")
    rows, t0 = [], time.perf_counter()
    for label, g in (("plain", Grounding()), ("grounded", grounding)):
        for name, sp in splits.items():
            caps, why, seconds = sp.captions(g)
            row = {"dataset": name, "captions": label, **sp.score(caps, why, meteor=True),
                   "seconds": round(seconds, 1)}
            rows.append(row)
            atomic.write_json(WORK / f"captions-{name}-test-{label}.json",
                              [{"key": r.key, "caption": c, "withheld": w} for r, c, w in zip(sp.records, caps, why)])
            print(json.dumps({k: v for k, v in row.items() if k != "every_caption"}), flush=True)
    engine = f"{splits['corel5k'].captioner.backbone.engine} backbone, {splits['corel5k'].captioner.precision} decoding"
    record = {"split": "test (Corel-5k: 499 photos; Flickr8k: 1,000)", "beam": 3,
              "grounding": {"strength": _finite(grounding.strength), "support": grounding.support,
                            "withhold": grounding.withhold},
              "engine": engine, "rows": rows, "seconds": round(time.perf_counter() - t0, 1), "machine": machine_info()}
    atomic.write_json(RESULT, record)
    add_card_metrics(BUNDLED / MODELS[3], "hallucination",
                     {"beam": 3, "engine": engine, "source": f"benchmarks/results/{RESULT.name}",
                      "rows": [{k: r.get(k) for k in ("dataset", "captions", "CHAIR_i", "CHAIR_s", "says_dog",
                                                        "withheld", "BLEU4", "METEOR", "CIDEr")} for r in rows]})


def cmd_dog_search(args) -> None:
    """The 499 Corel-5k test photos indexed with the default models (`tagcap index`, as a person would),
    then `tagcap search dog`: every photo found must have a stored tag at or below `dog` with at least
    the grounding's support (its caption alone is no evidence)."""
    import shutil
    import subprocess

    from tagcap import atomic
    from tagcap.concepts import concepts
    from tagcap.inference.grounding import Grounding
    from tagcap.library.search import search
    from tagcap.library.store import Library
    from tagcap.provenance import machine_info

    records = datasets("test")["corel5k"]
    photos, lib = WORK / "corel5k-test-photos", WORK / "corel5k-test.sqlite"
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir(parents=True)
    lib.unlink(missing_ok=True)
    for r in records:
        shutil.copy(r.image, photos / r.key.replace("/", "_"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tagcap", "index", str(photos), "--library", str(lib), "--quiet"],
                   check=True)
    seconds = time.perf_counter() - t0
    vocab, support = concepts(), Grounding.load().support
    dog_kinds = vocab.descendants(vocab.data["caption_objects"]["dog"])
    with Library(lib, mode="read") as library:
        hits, unbacked = search(library, "dog", limit=500), []
        for hit in hits:
            backing = [(label, score) for label, score in library.db.execute(
                "SELECT t.label, t.score FROM tags t JOIN photos p ON p.id = t.photo_id WHERE p.path = ?", (hit.path,))
                if vocab.concept_of(label) in dog_kinds and score >= support]
            if not backing:
                unbacked.append(hit.path)
        said = library.db.execute("SELECT COUNT(*) FROM captions WHERE text LIKE '%dog%'").fetchone()[0]
    plain = json.loads((WORK / "captions-corel5k-test-plain.json").read_text()) \
        if (WORK / "captions-corel5k-test-plain.json").is_file() else []
    row = {"photos": len(records), "index_seconds": round(seconds, 1), "dog_hits": len(hits),
           "hits_without_a_backing_tag": unbacked, "stored_captions_saying_dog": said,
           "plain_captions_saying_dog": sum(" dog" in f" {c['caption']}" for c in plain) if plain else None,
           "hits": [{"path": Path(h.path).name, "caption": h.caption,
                     "tags": [t["label"] for t in h.tags]} for h in hits], "machine": machine_info()}
    atomic.write_json(RESULT.with_name("grounded-captions-dog-search.json"), row)
    print(json.dumps({k: v for k, v in row.items() if k not in ("hits", "machine")}))


def _finite(x: float):
    return "inf" if x == float("inf") else x


MIN_AUC = 0.75      # a tagger speaks for a concept when its evidence ranks photos at least this well
MIN_PHOTOS = 10     # ... judged on at least this many validation photos with the thing and without


def fit_sources(splits: dict[str, "Split"]) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    """Per concept a caption word can name (and the everyday concepts above it), the taggers whose
    evidence tells validation photos with it from photos without (ROC AUC at least MIN_AUC, over the
    photos of both datasets whose truth can judge it); concepts too rare to judge keep every tagger."""
    from sklearn.metrics import roc_auc_score

    from tagcap.concepts import concepts
    from tagcap.inference.grounding import CaptionGrounder, Evidence, Grounding
    from tagcap.metrics.hallucination import ChairJudge

    vocab = concepts()
    any_split = next(iter(splits.values()))
    names = [name for name, _ in any_split.models]
    grounder = CaptionGrounder(any_split.captioner.words, any_split.models, Grounding())
    wanted = sorted({c for _, s in grounder.judged for c in (s, *(a for a in vocab.ancestors(s) if a in vocab.named))})
    alone = [Evidence(any_split.models, {c: [name] for c in wanted}) for name in names]
    judges = {n: ChairJudge(sp.vocabulary) for n, sp in splits.items()}
    sources, aucs = {}, {}
    for concept in wanted:
        truth, scores = [], {name: [] for name in names}
        for n, sp in splits.items():
            if not judges[n]._judged(concept):
                continue
            truth += [judges[n].present(concept, t) for t in sp.truth]
            for name, ev in zip(names, alone):
                own = (ev.speaker(concept) or ("",))[0] == concept  # not a broader concept's evidence
                scores[name] += list(ev.of(concept, sp.confidences)) if own else [np.nan] * len(sp.truth)
        truth = np.array(truth, bool)
        if truth.sum() < MIN_PHOTOS or (~truth).sum() < MIN_PHOTOS:
            continue
        aucs[concept] = {}
        for name in names:
            s = np.array(scores[name], float)
            if not np.isnan(s).any():
                aucs[concept][name] = round(float(roc_auc_score(truth, s)), 3)
        if aucs[concept]:
            sources[concept] = [m for m, a in aucs[concept].items() if a >= MIN_AUC]
    return sources, aucs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("features")
    p.add_argument("--split", choices=("val", "test"), required=True)
    p.set_defaults(run=cmd_features)
    sub.add_parser("choose").set_defaults(run=cmd_choose)
    sub.add_parser("test").set_defaults(run=cmd_test)
    sub.add_parser("dog-search").set_defaults(run=cmd_dog_search)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
