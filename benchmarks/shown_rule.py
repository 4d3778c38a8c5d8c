"""Fit and measure the shown rule: the tags `predict`, `index`, `serve`, the API and XMP show by default.

    python benchmarks/shown_rule.py scores --split val    # the default annotators' raw scores on validation photos
    python benchmarks/shown_rule.py fit                   # calibration, shown labels, threshold and cap -> bundled
    python benchmarks/shown_rule.py scores --split test   # once, for the reported numbers
    python benchmarks/shown_rule.py test                  # -> benchmarks/results/shown-rule.json

Photos: Corel-5k (validation: the 450 photos carved from train with seed 0, which chose the annotator's
epoch and thresholds; test: its 499) and Flickr8k (validation: the dev split; test: its 1,000), each
run through the default models exactly as `predict` runs them (the photo and its mirror image, the
backbone engine `predict` picks on this machine). Truth: Corel-5k's labels; for Flickr8k the nouns said
in at least 2 of a photo's 5 captions (`--format flickr8k-nouns`). Both mapped to concepts; a tag is
right when its concept is a label's, a hypernym of one (`animal` on a tiger), or a hyponym of one
(`Eskimo dog` on a photo labelled `dog`); a label is found when a tag is it or a kind of it.

`fit` chooses on validation only: per-label Platt calibration (shrunk toward the model's pooled fit;
each label fitted on the photos whose dataset can tell it right or wrong: a label is judged on a
dataset when its concept is one of the dataset's label concepts, above one or below one),
the labels that may be shown (right at least once on validation and, where shown at least 3 times
at the threshold, right at least 40 % of the time), then the threshold and the cap that maximise
the mean per-image F1 over both datasets with per-image precision at least 0.6 on each.
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
WORK = Path("/tmp/tagcap-shown-rule")
RESULT = ROOT / "benchmarks" / "results" / "shown-rule.json"
ANNOTATORS = ("corel5k-annotator", "imagenet-classes", "flickr8k-tagger")
TAGGER = None  # --tagger
# per-image precision the rule must reach on validation, per dataset (the bars on test: a person's
# photos judged by their own labels), and the precision a label must reach to be shown at all
MIN_PRECISION = {"corel5k": 0.6, "flickr8k": 0.5}
LABEL_PRECISION = 0.4
VOCABULARIES: dict[str, set[str]] = {}  # per dataset, its label concepts (filled by `load`)
STRENGTH = 10.0
TIE_BREAK = 0.01  # the slope added to the isotonic calibration so that no two confidences tie  # the per-label Platt fits' pull toward the model's pooled fit, in photos


def datasets(split: str) -> dict[str, list]:
    from tagcap.data import read_dataset

    corel = read_dataset(DATA / "corel5k")
    flickr = read_dataset(DATA / "flickr8k", fmt="flickr8k-nouns")
    return {"corel5k": corel.splits[split], "flickr8k": flickr.splits[split]}


def truths(name: str, records) -> list[set[str]]:
    """Each photo's label concepts."""
    from tagcap.concepts import concepts, read_mapping
    from tagcap.inference.bundled import BUNDLED

    if name == "corel5k":
        mapping = read_mapping(BUNDLED / "corel5k-annotator")
    else:
        mapping = {v: k for k, v in concepts().data["flickr8k_nouns"]["labels"].items()}
    return [{mapping[label] for label in r.labels} for r in records]


def cmd_scores(args) -> None:
    from tagcap.features.images import load_image
    from tagcap.inference.taggers import ModelSet

    models = ModelSet.load([m if m != "flickr8k-tagger" or not args.tagger else args.tagger for m in ANNOTATORS])
    if args.tagger:  # a candidate tagger from a folder stands in for the bundled one
        models.models[ANNOTATORS.index("flickr8k-tagger")].name = "flickr8k-tagger"
    WORK.mkdir(parents=True, exist_ok=True)
    for name, records in datasets(args.split).items():
        t0, parts = time.perf_counter(), {m.name: [] for m in models.annotators}
        for start in range(0, len(records), 32):
            images = [load_image(r.image, models.decode_size) for r in records[start:start + 32]]
            for model, scores in models.annotator_scores(images).items():
                parts[model].append(scores)
        np.savez(WORK / f"{name}-{args.split}.npz", **{m: np.concatenate(p) for m, p in parts.items()})
        print(f"{name} {args.split}: {len(records)} photos, {time.perf_counter() - t0:.0f} s, "
              f"engine {models.backbone.engine}")


def columns(model: str, n_labels: int) -> tuple[list[str], list[str], list[list[int]]]:
    """A model's columns: its labels' concepts, then (for the ImageNet head) the named concepts its
    classes roll up to, each with the classes it sums."""
    from tagcap.concepts import concepts, read_mapping
    from tagcap.inference.bundled import BUNDLED

    vocab = concepts()
    folder = Path(TAGGER) if model == "flickr8k-tagger" and TAGGER else BUNDLED / model
    labels = json.loads((folder / "config.json").read_text())["vocabulary"]["labels"]
    mapping = read_mapping(folder)
    synsets = [mapping[label] for label in labels]
    assert len(labels) == n_labels, (model, len(labels), n_labels)
    if model != "imagenet-classes":
        return labels, synsets, []
    own = set(synsets)
    rolled: dict[str, list[int]] = {}
    for j, s in enumerate(synsets):
        for a in vocab.ancestors(s):
            if a in vocab.named and a not in own:
                rolled.setdefault(a, []).append(j)
    return labels + [vocab.name(a) for a in rolled], synsets + list(rolled), list(rolled.values())


def load(split: str):
    """Per dataset: truths, and per model (columns, rollup, scores)."""
    out = {}
    for name, records in datasets(split).items():
        scores = np.load(WORK / f"{name}-{split}.npz")
        out[name] = (truths(name, records), {m: scores[m] for m in ANNOTATORS})
        VOCABULARIES[name] = set().union(*out[name][0])
    return out


def calibration(model: str, n_labels: int, a=None, b=None, shown=None):
    from tagcap.inference.shown import Calibration

    labels, synsets, rollup = columns(model, n_labels)
    matrix = None
    if rollup:
        matrix = np.zeros((n_labels, len(rollup)), np.float32)
        for j, members in enumerate(rollup):
            matrix[members, j] = 1
    c = len(synsets)
    return Calibration(labels, synsets, np.ones(c) if a is None else a, np.zeros(c) if b is None else b,
                       np.ones(c, bool) if shown is None else shown, matrix), rollup


def evaluate(data, cals, rule) -> dict:
    """Per dataset: per-image precision, recall, tags per photo, and the shown tags' calibration."""
    from tagcap.concepts import concepts
    from tagcap.concepts.calibrate import expected_calibration_error, per_image_pr, truth_matrix
    from tagcap.inference.shown import choose, union

    vocab = concepts()
    out = {}
    for name, (truth, scores) in data.items():
        synsets, best, _, _, exclusive = union([(m, cals[m], scores[m]) for m in ANNOTATORS], rule)
        shown = choose(best, rule, synsets, exclusive)
        right = truth_matrix(vocab, truth, synsets) & shown
        recalled = np.array([sum(any(vocab.is_a(synsets[k], label) for k in np.flatnonzero(shown[i]))
                                 for label in labels) for i, labels in enumerate(truth)])
        p, r, n = per_image_pr(shown, right, recalled, np.array([len(t) for t in truth]))
        ece, table = expected_calibration_error(best[shown], right[shown])
        out[name] = {"photos": len(truth), "precision": round(p, 4), "recall": round(r, 4),
                     "tags_per_photo": round(n, 3), "photos_without_a_tag": int((shown.sum(1) == 0).sum()),
                     "ece": round(ece, 4), "reliability": table,
                     "below_threshold": int((best[shown] < rule.threshold).sum())}
    return out


def fit_models(data) -> tuple[dict, dict]:
    """Per model: its calibration (per-label Platt on every validation photo of `data`, the labels
    that may be shown) and the record written to its shown.json."""
    from tagcap.concepts import concepts
    from tagcap.concepts.calibrate import calibrated, fit_platt, judgeable, truth_matrix

    vocab = concepts()
    cals, record = {}, {}
    for model in ANNOTATORS:
        n_labels = next(iter(data.values()))[1][model].shape[1]
        cal, rollup = calibration(model, n_labels)
        cols = np.concatenate([cal.columns(scores[model]) for _, scores in data.values()])
        truth = np.concatenate([truth_matrix(vocab, t, cal.synsets) for t, _ in data.values()])
        judged = np.concatenate([np.tile(judgeable(vocab, VOCABULARIES[name], cal.synsets), (len(t), 1))
                                     for name, (t, _) in data.items()])
        a, b = fit_platt(cols, truth, STRENGTH, judged)
        predicted = calibrated(cols, a, b) >= 0.5
        hits, shown_n = (predicted & truth).sum(0), predicted.sum(0)
        keep = truth.any(0) & ~((shown_n >= 3) & (hits < LABEL_PRECISION * shown_n))
        cals[model], _ = calibration(model, n_labels, a, b, keep)
        record[model] = {"columns": [{"label": l, "synset": s, "a": round(float(x), 5), "b": round(float(y), 5),
                                      "shown": bool(k)} for l, s, x, y, k in zip(cal.names, cal.synsets, a, b, keep)],
                         "labels": n_labels, "rollup": rollup}
    return cals, record


def fit_merged(data, cals, candidates: int = 8) -> tuple[tuple, tuple]:
    """The last calibration of merged confidences: isotonic regression on each validation photo's
    candidates (the tags the rule could show), as knots (x, y) for linear interpolation, plus
    TIE_BREAK * x: isotonic regression is flat over whole ranges, and two tags whose confidences
    differ must keep their order (search ranks by them); the added slope moves no value by more than
    TIE_BREAK."""
    from sklearn.isotonic import IsotonicRegression

    from tagcap.concepts import concepts
    from tagcap.concepts.calibrate import truth_matrix
    from tagcap.inference.shown import ShownRule, choose, union

    conf, right = [], []
    for truth, scores in data.values():
        synsets, best, _, _, exclusive = union([(m, cals[m], scores[m]) for m in ANNOTATORS])
        top = choose(best, ShownRule(0.0, candidates), synsets, exclusive)  # the tags that could be shown
        conf.append(best[top])
        right.append(truth_matrix(concepts(), truth, synsets)[top])
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(np.concatenate(conf), np.concatenate(right).astype(float))
    x = np.concatenate([[0.0], iso.X_thresholds_, [1.0]])
    y = np.concatenate([[iso.y_thresholds_[0]], iso.y_thresholds_, [iso.y_thresholds_[-1]]])
    keep = np.concatenate([[True], np.diff(x) > 1e-9])
    x, y = x[keep], y[keep]
    y = np.clip((1 - TIE_BREAK) * y + TIE_BREAK * x, 0.0, 1.0)  # strictly increasing, within TIE_BREAK
    return tuple(np.round(x, 6)), tuple(np.round(y, 6))


def subset(data, fold: int, keep: bool):
    """Half of every dataset's photos: those whose index is (keep) or is not (not keep) `fold` mod 2."""
    out = {}
    for name, (truth, scores) in data.items():
        idx = [i for i in range(len(truth)) if (i % 2 == fold) == keep]
        out[name] = ([truth[i] for i in idx], {m: s[idx] for m, s in scores.items()})
    return out


def cmd_fit(args) -> None:
    from tagcap.inference.shown import ShownRule

    data = load("val")
    # the threshold and the cap are chosen on calibrations that did not see the photos they are judged on
    # (two-fold cross-fitting within validation), so the choice is not flattered by the calibration's own fit
    folds = []
    for fold in (0, 1):
        cals, _ = fit_models(subset(data, fold, False))
        knots = fit_merged(subset(data, fold, False), cals)
        folds.append((cals, knots, subset(data, fold, True)))
    grid = []
    for threshold in np.arange(0.30, 0.76, 0.05):
        for cap in range(3, 9):
            res = [evaluate(held, cals, ShownRule(round(float(threshold), 2), cap, knots))
                   for cals, knots, held in folds]
            mean = {name: {k: float(np.mean([r[name][k] for r in res])) for k in ("precision", "recall",
                                                                                 "tags_per_photo", "ece")}
                    for name in data}
            f1 = np.mean([2 * v["precision"] * v["recall"] / max(v["precision"] + v["recall"], 1e-9)
                          for v in mean.values()])
            ok = all(mean[name]["precision"] >= floor for name, floor in MIN_PRECISION.items())
            grid.append((ok, f1, round(float(threshold), 2), cap, mean))
    if args.grid:
        for g in grid:
            print(g[2], g[3], {k: (round(v["precision"], 3), round(v["recall"], 3), round(v["ece"], 3)) for k, v in g[4].items()})
    ok, f1, threshold, cap, mean = max(grid, key=lambda g: (g[0], g[1]))
    print(f"chosen on validation (two-fold cross-fitted): threshold {threshold}, cap {cap} (mean F1 {f1:.3f}, "
          f"precision floors {MIN_PRECISION} met: {ok})")
    for name, v in mean.items():
        print(f"  {name}: P {v['precision']:.3f} R {v['recall']:.3f} tags {v['tags_per_photo']:.2f} ECE {v['ece']:.3f}")
    cals, record = fit_models(data)
    knots = fit_merged(data, cals)
    for model, rec in record.items():
        hidden = [c["label"] for c in rec["columns"] if not c["shown"]]
        print(f"{model}: {len(rec['columns']) - len(hidden)} of {len(rec['columns'])} columns may be shown")
    out = Path(args.bundled)
    for model, rec in record.items():
        folder = Path(TAGGER) if model == "flickr8k-tagger" and TAGGER else out / model
        (folder / "shown.json").write_text(json.dumps(rec, separators=(",", ":")) + "\n")
    (out / "shown-rule.json").write_text(json.dumps(
        {"threshold": threshold, "max_tags": cap, "merged": {"x": list(knots[0]), "y": list(knots[1])},
         "chosen_on": "validation, two-fold cross-fitted (benchmarks/shown_rule.py fit)",
         "validation_cross_fitted": {k: {x: round(y, 4) for x, y in v.items()} for k, v in mean.items()}},
        indent=1) + "\n")


def cmd_test(args) -> None:
    from tagcap.inference.shown import Calibration, ShownRule
    from tagcap.inference.bundled import BUNDLED
    from tagcap.provenance import machine_info

    rule = ShownRule.load(Path(args.bundled) / "shown-rule.json")
    cals = {m: Calibration.load(BUNDLED / m if m != "flickr8k-tagger" or not args.tagger else args.tagger)
            for m in ANNOTATORS}
    res = evaluate(load("test"), cals, rule)
    for name, v in res.items():
        print(f"{name} test: P {v['precision']:.3f} R {v['recall']:.3f} tags {v['tags_per_photo']:.2f} "
              f"ECE {v['ece']:.3f} below threshold {v['below_threshold']}")
    machine = machine_info()  # its commit says "+changes" when tracked files differ from it
    RESULT.write_text(json.dumps({"command": "python benchmarks/shown_rule.py test", "commit": machine["commit"],
                                  "machine": machine, "rule": {"threshold": rule.threshold,
                                                                      "max_tags": rule.max_tags},
                                  "models": list(ANNOTATORS), "test": res}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("scores", "fit", "test"))
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--tagger", default=None, help="the everyday-words tagger's folder (default: the bundled one)")
    ap.add_argument("--grid", action="store_true", help="fit: print every threshold and cap tried")
    ap.add_argument("--bundled", default=str(ROOT / "src" / "tagcap" / "bundled"))
    args = ap.parse_args()
    global TAGGER
    TAGGER = args.tagger
    {"scores": cmd_scores, "fit": cmd_fit, "test": cmd_test}[args.command](args)


if __name__ == "__main__":
    main()
