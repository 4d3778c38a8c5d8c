"""`tagcap bench annotate`: every annotation method on one dataset, one table.

Features are extracted once (or reused from the cache); each recipe is trained on train,
selected on the validation split (early stopping, MCC thresholds), and scored once on test,
for every seed asked (`--seeds 0,1,2,3,4`: mean ± sd in the table). The validation split is
carved from train with the fixed seed 0 whatever the training seed, so the seeds differ only in
the training draw (initial weights, batches, views). Rows are kept as they finish (`results.py`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from tagcap import atomic
from tagcap.decision import apply_rule, rule_name
from tagcap.explain import step_trace
from tagcap.features.backbone import BackboneSpec
from tagcap.metrics.annotation import per_label_scores
from tagcap.provenance import machine_info
from tagcap.pipeline import fit_annotator, metrics_row, prepare, save_model, score_split
from tagcap.errors import ConfigError
from tagcap.data import read_dataset
from tagcap.recipes import apply_overrides, check_recipe, default_recipes, load_recipe, save_recipe
from tagcap.report.plots import per_label_f1_plot, steps_figure
from tagcap.report.tables import LEGEND, metrics_table, published_table, summary_table
from tagcap.results import RowStore, summarize, training_state


def row_folder_name(method: str, rule: dict) -> str:
    return f"{method}+{rule_name(rule).replace(' ', '-').lower()}"


ANNOTATION_METRICS = ("per_label.P", "per_label.R", "per_label.F1", "n_plus", "per_image.F1", "overall.F1", "mAP",
                      "top1")
IDENTITY = ("dataset", "backbone", "weights", "input_size", "pool_blocks", "refit", "split")


def summarize_annotation(rows: list[dict]) -> list[dict]:
    return summarize(rows, ("method", "decision"), ANNOTATION_METRICS)


def bench_annotate(data: str | Path, out: str | Path, methods: list[str] | None = None, fmt: str | None = None,
                   spec: BackboneSpec | None = None, cache: str | Path | None = None, engine: str = "auto",
                   seed: int = 0, progress: bool = True, cache_root: Path | None = None, log=print,
                   refit: bool = False, seeds: list[int] | None = None, verify: bool = False,
                   device: str | None = "cpu", overrides: list[str] | None = None) -> list[dict]:
    """Every recipe x every seed: trained on train, selected on validation, scored once on test.

    Rows are written to OUT/results.json as each (recipe, seed) finishes, with mean ± sd over seeds;
    run again, the same command skips what is there. Returns every row (those on disk included)."""
    out = Path(out)
    spec = spec or BackboneSpec()
    seeds = list(seeds) if seeds else [seed]
    t_start = time.perf_counter()
    name = read_dataset(data, fmt).name  # the dataset's files only: every recipe is checked before any work
    recipes = [apply_overrides(load_recipe(m, name), overrides) for m in (methods or default_recipes(name))]
    for recipe in recipes:
        check_recipe(recipe)
    for recipe in recipes:  # what each row was trained with, resolved (`extends`, `--set`)
        save_recipe(recipe, out / "recipes" / f"{recipe['name']}.yaml")
    tuned = [r["name"] for r in recipes if r.get("finetune")]
    if tuned:
        raise ConfigError(f"{', '.join(tuned)} fine-tune the backbone; the bench compares methods on cached "
                          "features. Train them with `tagcap fit --recipe NAME`, score with `tagcap evaluate`.")
    # the validation split is carved with seed 0 for every training seed: all are selected on the same images
    prep = prepare(data, fmt, spec, cache=cache, engine=engine, progress=progress, cache_root=cache_root, seed=0,
                   verify=verify, device=device)
    log(prep.dataset.summary())
    identity = {"dataset": prep.dataset.name, "backbone": prep.backbone["name"], "weights": prep.backbone["weights"],
                "input_size": prep.backbone["input_size"], "pool_blocks": prep.backbone["spec"].get("pool_blocks", []),
                "refit": refit, "split": "test"}
    store = RowStore(out, identity, lambda r: (r["method"], r["seed"]), summarize_annotation)
    curves_path = out / "per_label_f1.json"
    curves = json.loads(curves_path.read_text()) if curves_path.is_file() and store.rows else {}
    step_figures = []
    for recipe in recipes:
        for s in seeds:
            if store.done(recipe["name"], s):
                log(f"== {recipe['name']}, seed {s}: done before (in {store.path}), skipped")
                shutil.rmtree(training_state(out, recipe, s), ignore_errors=True)  # killed after its rows were written
                continue
            log(f"== {recipe['name']} ({recipe['source']}), seed {s}")
            rows, test_out = _bench_one(prep, recipe, s, refit, out, multi_seed=len(seeds) > 1, progress=progress)
            for row in rows:
                curves[f"{row['method']}, {row['decision']}, seed {s}"] = row.pop("_per_label_f1")
                log(f"   {row['decision']:>15}: F1_L {row['per_label']['F1']:.3f}  N+ {row['n_plus']}  "
                    f"F1_I {row['per_image']['F1']:.3f}  mAP {row['mAP']:.3f}")
            atomic.write_json(curves_path, curves)
            store.add(rows)  # after the checkpoints and curves: a row on disk has everything it names
            shutil.rmtree(training_state(out, recipe, s), ignore_errors=True)  # spent once the row is on disk
            if "step_labels" in test_out and not any(f[0] == recipe["name"] for f in step_figures):
                step_figures.append((recipe["name"], test_out))
    wall = time.perf_counter() - t_start
    write_results(out, store, prep, wall, curves, seeds)
    for name, test_out in step_figures:
        draw_steps(out / f"steps-{name}.png", name, prep, test_out)
    return store.rows


def _bench_one(prep, recipe: dict, seed: int, refit: bool, out: Path, multi_seed: bool,
               progress: bool) -> tuple[list[dict], dict]:
    """One recipe, one seed: train, fit the rules on validation, (refit,) score test, save a checkpoint per rule."""
    fitted = fit_annotator(prep, recipe, recipe["decisions"], seed=seed, refit=refit, progress=progress,
                           resume_dir=training_state(out, recipe, seed))  # a killed bench resumes it
    decoder, rules, history = fitted.decoder, fitted.rules, fitted.history
    test_out, test_y, ms = score_split(decoder, prep, "test")
    rows = []
    for rule in rules:
        row = {
            "method": recipe["name"],
            **metrics_row(test_out, test_y, rule),
            "train_seconds": round(history["train_seconds"] + history.get("refit", {}).get("train_seconds", 0), 2),
            "refit": refit,
            "best_epoch": history["best_epoch"],
            "predict_ms_per_image": round(ms, 4),
            "backbone": prep.backbone["name"],
            "weights": prep.backbone["weights"],
            "input_size": prep.backbone["input_size"],
            "pool_blocks": prep.backbone["spec"].get("pool_blocks", []),
            "seed": seed,
            "dataset": prep.dataset.name,
            "split": "test",
            "recipe": recipe["source"],
        }
        name = row_folder_name(recipe["name"], rule) + (f"-seed{seed}" if multi_seed else "")
        save_model(out / "checkpoints" / name, decoder, prep, recipe, rule, history,
                   {k: row[k] for k in ("per_label", "per_image", "overall", "n_plus", "mAP", "top1")}, seed)
        row["checkpoint"] = f"checkpoints/{name}"
        row["_per_label_f1"] = [round(float(x), 5) for x in per_label_scores(
            apply_rule(test_out["scores"], rule, test_out.get("emitted")), test_y)["F1"]]
        rows.append(row)
    return rows, test_out


def draw_steps(path: Path, name: str, prep, test_out: dict, n_images: int = 4) -> None:
    """The decoder's pick and top scores at every step, for the first few test images."""
    items = [{"image": record.image, "truth": list(record.labels),
              "steps": step_trace(test_out["step_scores"][i], test_out["step_labels"][i], prep.vocab.labels)}
             for i, record in enumerate(prep.dataset.splits["test"][:n_images])]
    steps_figure(items, path, f"{name}: the label picked at each step, and the step's best three scores")


def write_results(out: Path, store: RowStore, prep, wall: float, curves: dict, seeds: list[int]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    rows, summary = store.rows, store.summary()
    store.write()
    atomic.write_json(out / "run.json", {"dataset": prep.dataset.summary(), "backbone": prep.backbone,
                                         "extraction": prep.extract_stats, "wall_seconds": round(wall, 1),
                                         "seeds": seeds, "machine": info})
    if curves:
        # the best three (recipe, rule) pairs by mean per-label F1, each drawn with the mean over its seeds
        by_pair: dict[str, list] = {}
        for key, f1 in curves.items():
            by_pair.setdefault(key.rsplit(", seed ", 1)[0], []).append(np.asarray(f1))
        means = {k: np.mean(v, axis=0) for k, v in by_pair.items()}
        best = sorted(means, key=lambda k: -float(means[k].mean()))[:3]
        per_label_f1_plot({k: means[k] for k in best}, out / "per_label_f1.png",
                          f"{prep.dataset.name} test: per-label F1 of the best three"
                          + (f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""))
    ex = prep.extract_stats
    ex_line = ("features reused from the cache" if ex.get("reused") else
               f"features extracted in {ex.get('wall_seconds')} s ({ex.get('images_per_second')} images/s, "
               f"2 views, engine {ex.get('engine')})")
    blocks = prep.backbone["spec"].get("pool_blocks")
    pooled = f" (pooled feature: last layer + {', '.join(blocks)})" if blocks else ""
    refit_line = (" Each decoder was then refit on train + validation for the chosen number of epochs "
                  "(`--refit`), keeping the rules fitted before." if any(r.get("refit") for r in rows) else "")
    md = [f"# {prep.dataset.name}: annotation benchmark", "",
          f"Dataset: {prep.dataset.summary()}.", "",
          f"Backbone: `{prep.backbone['name']}` at {prep.backbone['input_size']} px{pooled}, frozen, weights "
          f"`{prep.backbone['weights'][:23]}`; {ex_line}. Test split touched once per seed; early stopping and "
          f"MCC thresholds chosen on the validation split.{refit_line}", "",
          f"Machine: {info['cpu']}, {info['cores']} cores; commit {info['commit']}; this invocation {wall:.0f} s.", ""]
    if len({r["seed"] for r in rows}) > 1:
        md += ["## Ours (test split), mean ± sd over seeds", "", summary_table(summary), "",
               "sd: sample standard deviation over the seeds (each seed draws the decoder's initial weights, "
               "batches and views; features and the validation split are the same for all).", "",
               "## Every seed", ""]
    else:
        md += ["## Ours (test split)", ""]
    md += [metrics_table(rows), "", LEGEND, ""]
    pub = published_table(prep.dataset.name)
    if pub:
        md += ["## Published (test split)", "", pub, "",
               "The published rows fine-tune their backbones at 448 px; ours are frozen features at the "
               "backbone's own input size.", ""]
    if curves:
        md += ["![per-label F1](per_label_f1.png)", ""]
    atomic.write_text(out / "results.md", "\n".join(md))
