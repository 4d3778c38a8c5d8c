"""`tagcap bench annotate`: every annotation method on one dataset, one table.

Features are extracted once (or reused from the cache); each recipe is trained on train,
selected on the validation split (early stopping, MCC thresholds), and scored once on test.
"""

from __future__ import annotations

import time
from pathlib import Path

from tagcap import atomic
from tagcap.decide import apply_rule, rule_name
from tagcap.explain import step_trace
from tagcap.features.backbone import BackboneSpec
from tagcap.metrics.annotation import per_label_scores
from tagcap.pipeline import (machine_info, make_rules, metrics_row, prepare, refit_recipe, save_model,
                             score_split, train_recipe)
from tagcap.errors import ConfigError
from tagcap.recipes import default_recipes, load_recipe
from tagcap.report.plots import per_label_f1_plot, steps_figure
from tagcap.report.tables import LEGEND, metrics_table, published_table


def row_folder_name(method: str, rule: dict) -> str:
    return f"{method}+{rule_name(rule).replace(' ', '-').lower()}"


def bench_annotate(data: str | Path, out: str | Path, methods: list[str] | None = None, fmt: str | None = None,
                   spec: BackboneSpec | None = None, cache: str | Path | None = None, engine: str = "auto",
                   seed: int = 0, progress: bool = True, cache_root: Path | None = None, log=print,
                   refit: bool = False) -> list[dict]:
    out = Path(out)
    spec = spec or BackboneSpec()
    t_start = time.perf_counter()
    prep = prepare(data, fmt, spec, cache=cache, engine=engine, progress=progress, cache_root=cache_root, seed=seed)
    log(prep.dataset.summary())
    recipes = [load_recipe(m, prep.dataset.name) for m in (methods or default_recipes(prep.dataset.name))]
    tuned = [r["name"] for r in recipes if r.get("finetune")]
    if tuned:
        raise ConfigError(f"{', '.join(tuned)} fine-tune the backbone; the bench compares methods on cached "
                          "features. Train them with `tagcap fit --recipe NAME`, score with `tagcap evaluate`.")
    rows, curves, step_figures = [], {}, []
    for recipe in recipes:
        log(f"== {recipe['name']} ({recipe['source']})")
        decoder, history = train_recipe(prep, recipe, seed=seed, progress=progress)
        val_out, val_y, _ = score_split(decoder, prep, "val")
        rules = make_rules(recipe["decisions"], val_out["scores"], val_y)  # before a refit has seen val
        if refit:
            decoder, history = refit_recipe(prep, recipe, history, seed=seed, progress=progress)
        test_out, test_y, ms = score_split(decoder, prep, "test")
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
            name = row_folder_name(recipe["name"], rule)
            save_model(out / "checkpoints" / name, decoder, prep, recipe, rule, history,
                       {k: row[k] for k in ("per_label", "per_image", "overall", "n_plus", "mAP", "top1")}, seed)
            row["checkpoint"] = f"checkpoints/{name}"
            rows.append(row)
            curves[f"{recipe['name']}, {row['decision']}"] = per_label_scores(
                apply_rule(test_out["scores"], rule, test_out.get("emitted")), test_y)["F1"]
            if "step_labels" in test_out and not any(f[0] == recipe["name"] for f in step_figures):
                step_figures.append((recipe["name"], decoder, test_out))
            log(f"   {row['decision']:>15}: F1_L {row['per_label']['F1']:.3f}  N+ {row['n_plus']}  "
                f"F1_I {row['per_image']['F1']:.3f}  mAP {row['mAP']:.3f}")
    wall = time.perf_counter() - t_start
    write_results(out, rows, prep, wall, curves)
    for name, decoder, test_out in step_figures:
        draw_steps(out / f"steps-{name}.png", name, prep, test_out)
    return rows


def draw_steps(path: Path, name: str, prep, test_out: dict, n_images: int = 4) -> None:
    """The decoder's pick and top scores at every step, for the first few test images."""
    items = [{"image": record.image, "truth": list(record.labels),
              "steps": step_trace(test_out["step_scores"][i], test_out["step_labels"][i], prep.vocab.labels)}
             for i, record in enumerate(prep.dataset.splits["test"][:n_images])]
    steps_figure(items, path, f"{name}: the label picked at each step, and the step's best three scores")


def write_results(out: Path, rows: list[dict], prep, wall: float, curves: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    atomic.write_json(out / "results.json", rows)
    atomic.write_json(out / "run.json", {"dataset": prep.dataset.summary(), "backbone": prep.backbone,
                                         "extraction": prep.extract_stats, "wall_seconds": round(wall, 1),
                                         "machine": info})
    if curves:
        best = sorted(curves, key=lambda k: -float(curves[k].mean()))[:3]  # the best three rows
        per_label_f1_plot({k: curves[k] for k in best}, out / "per_label_f1.png",
                          f"{prep.dataset.name} test: per-label F1 of the best three")
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
          f"`{prep.backbone['weights'][:23]}`; {ex_line}. Test split touched once; early stopping and MCC "
          f"thresholds chosen on the validation split.{refit_line}", "",
          f"Machine: {info['cpu']}, {info['cores']} cores; commit {info['commit']}; whole run {wall:.0f} s.", "",
          "## Ours (test split)", "", metrics_table(rows), "", LEGEND, ""]
    pub = published_table(prep.dataset.name)
    if pub:
        md += ["## Published (test split)", "", pub, "",
               "The published rows fine-tune their backbones at 448 px; ours are frozen features at the "
               "backbone's own input size.", ""]
    if curves:
        md += ["![per-label F1](per_label_f1.png)", ""]
    atomic.write_text(out / "results.md", "\n".join(md))
