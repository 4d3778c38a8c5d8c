"""`tagcap bench caption`: a captioning recipe trained, chosen on validation and scored on test.

For every seed asked: train on train (epochs and learning-rate drops follow validation BLEU-4 of
greedy captions; `captioning.train_captioner`), caption validation and test once per beam width,
score test with pycocoevalcap and object hallucination (CHAIR, `metrics.hallucination`), save the
checkpoint. Rows are kept as each seed finishes
(`results.RowStore`, the writer `bench annotate` uses too), so a rerun skips finished seeds.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from tagcap import atomic
from tagcap.captioning import CaptionSplit, build_words, caption_split, save_captioner, train_captioner
from tagcap.data import read_dataset
from tagcap.data.captions import references
from tagcap.errors import require_extra
from tagcap.features.prepare import prepare
from tagcap.inference.outputs import caption_grid
from tagcap.metrics.captioning import CAPTION_COLUMNS, caption_metrics, require_java
from tagcap.metrics.hallucination import CHAIR_COLUMNS, caption_chair
from tagcap.provenance import machine_info
from tagcap.published import PUBLISHED_FLICKR8K
from tagcap.recipes import apply_overrides, check_recipe, load_recipe, save_recipe
from tagcap.report.plots import attention_sheet
from tagcap.report.tables import caption_summary_table, caption_table
from tagcap.results import RowStore, summarize, training_state


def timed_captions(decoder, grid, words, beam_width, progress=None):
    t0 = time.perf_counter()
    caps, _ = caption_grid(decoder, grid, words, beam_width=beam_width, progress=progress)
    return caps, (time.perf_counter() - t0) * 1000 / max(len(grid), 1)


def summarize_captions(rows: list[dict]) -> list[dict]:
    return summarize(rows, ("method", "beam"), CAPTION_COLUMNS + CHAIR_COLUMNS)


def bench_caption(data: str | Path, out: str | Path, fmt: str | None = None, spec=None, cache=None,
                  engine: str = "auto", seed: int = 0, recipe_name: str = "show-attend-tell",
                  beams: list[int] | None = None, progress: bool = True, cache_root: Path | None = None,
                  epochs: int | None = None, log=print, seeds: list[int] | None = None,
                  device: str | None = "cpu", overrides: list[str] | None = None) -> list[dict]:
    """Train on train, select on validation, caption test once per beam width, score with pycocoevalcap;
    for every seed asked, each seed's rows written as it finishes (a rerun skips them)."""
    require_extra("pycocoevalcap", "caption", "tagcap bench caption")
    require_java()  # fail before an hour of training, not after
    out = Path(out)
    seeds = list(seeds) if seeds else [seed]
    t_start = time.perf_counter()
    recipe = apply_overrides(load_recipe(recipe_name, read_dataset(data, fmt, task="caption").name), overrides)
    if epochs:
        recipe["train"]["epochs"] = epochs
    check_recipe(recipe)  # before any feature is extracted
    save_recipe(recipe, out / "recipes" / f"{recipe['name']}.yaml")
    prep = prepare(data, fmt, spec, cache=cache, engine=engine, progress=progress, cache_root=cache_root,
                   seed=0, task="caption", device=device)
    log(prep.dataset.summary())
    beams = beams or recipe.get("beams", [1, 3, 5])
    identity = {"dataset": prep.dataset.name, "backbone": prep.backbone["name"], "weights": prep.backbone["weights"],
                "input_size": prep.backbone["input_size"], "split": "test"}
    store = RowStore(out, identity, lambda r: (r["method"], r["seed"]), summarize_captions)
    words = build_words(prep, recipe)
    train, val, test = (caption_split(prep, split) for split in ("train", "val", "test"))  # read once, all seeds
    histories, val_by_seed = {}, {}
    for s in seeds:
        if store.done(recipe["name"], s):
            log(f"== {recipe['name']}, seed {s}: done before (in {store.path}), skipped")
            shutil.rmtree(training_state(out, recipe, s), ignore_errors=True)  # killed after its rows were written
            continue
        rows, history, val_rows, decoder = _caption_one_seed(prep, recipe, words, (train, val, test), s, beams, out,
                                                             len(seeds) > 1, progress, log)
        histories[s], val_by_seed[s] = history, val_rows
        store.add(rows)
        shutil.rmtree(training_state(out, recipe, s), ignore_errors=True)  # spent once the rows are on disk
        if s == seeds[0]:
            # attention maps of a few test images, decoded with the recipe's beam width
            sample = test.records[:4]
            caps, maps = caption_grid(decoder, test.grid[: len(sample)], words, attention=True)
            attention_sheet([(r.image, c, m) for r, c, m in zip(sample, caps, maps)], out / "attention.png")

    rows, summary = store.rows, store.summary()
    wall = time.perf_counter() - t_start
    info = machine_info()
    atomic.write_json(out / "run.json", {"dataset": prep.dataset.summary(), "backbone": prep.backbone,
                                         "extraction": prep.extract_stats, "wall_seconds": round(wall, 1),
                                         "seeds": seeds,
                                         "training": {s: {k: v for k, v in h.items() if k != "config"}
                                                      for s, h in histories.items()},
                                         "validation_bleu4_by_beam": val_by_seed, "machine": info})
    ex = prep.extract_stats
    ex_line = ("features reused from the cache" if ex.get("reused") else
               f"features extracted in {ex.get('wall_seconds')} s ({ex.get('images_per_second')} images/s)")
    md = [f"# {prep.dataset.name}: captioning benchmark", "",
          f"Dataset: {prep.dataset.summary()}.", "",
          f"Backbone: `{prep.backbone['name']}` at {prep.backbone['input_size']} px, frozen (grid of "
          f"{test.grid.shape[2]} cells), weights `{prep.backbone['weights'][:23]}`; {ex_line}. Decoder epochs "
          f"chosen by validation BLEU-4 of greedy captions (best epoch per seed: "
          + ", ".join(f"seed {r['seed']}: {r['best_epoch']}" for r in rows if r["beam"] == rows[0]["beam"])
          + "); test split scored once per beam width and seed.", "",
          f"Machine: {info['cpu']}, {info['cores']} cores; commit {info['commit']}; this invocation {wall:.0f} s.", ""]
    if len({r["seed"] for r in rows}) > 1:
        md += ["## Ours (test split), mean ± sd over seeds", "", caption_summary_table(summary), "",
               "## Every seed", ""]
    else:
        md += ["## Ours (test split; pycocoevalcap, PTB tokenizer, all references)", ""]
    md += [caption_table(rows), ""]
    if val_by_seed:
        md += ["Validation BLEU-4 (tagcap tokenization) by beam width: " + "; ".join(
            f"seed {s}: " + ", ".join(f"{v['beam']}: {v['BLEU4']:.2f}" for v in vals) for s, vals in val_by_seed.items())
            + ".", ""]
    if prep.dataset.name == "flickr8k":
        md += ["## Published (Flickr8k test)", "", caption_table(PUBLISHED_FLICKR8K, with_beam=False), "",
               "The published rows use the original photos and VGG features; ours use re-encoded 224x224 "
               "squares (aspect ratio not kept, JPEG quality 75) and a frozen backbone, so the numbers are "
               "close to, not the same as, a like-for-like comparison.", ""]
    md += ["![attention](attention.png)", ""]
    atomic.write_text(out / "results.md", "\n".join(md))
    return rows


def _caption_one_seed(prep, recipe: dict, words, splits: tuple[CaptionSplit, CaptionSplit, CaptionSplit], seed: int,
                      beams: list[int], out: Path, multi_seed: bool, progress: bool, log):
    """Train one seed, caption validation and test at every beam width, save the checkpoint; the rows."""
    train, val, test = splits
    log(f"== {recipe['name']}, seed {seed}")
    decoder, history = train_captioner(recipe, words, train, val, seed=seed, progress=progress,
                                       resume_dir=training_state(out, recipe, seed))
    log(f"trained in {history['train_seconds']:.0f} s; best epoch {history['best_epoch']}, "
        f"validation BLEU-4 (greedy, quick) {history['best_val_BLEU4']:.2f}; {len(words)} words")
    test_refs = references(test.records)
    rows, val_rows = [], []
    suffix = f"-seed{seed}" if multi_seed else ""
    for beam in beams:
        # validation first: it is where beam search is compared with greedy decoding
        val_caps, _ = timed_captions(decoder, val.grid, words, beam)
        val_rows.append({"beam": beam, "BLEU4": val.bleu4(val_caps)})
        bar = tqdm(total=len(test.grid), desc=f"caption test, beam {beam}", disable=not progress)
        caps, ms = timed_captions(decoder, test.grid, words, beam, progress=bar)
        bar.close()
        preds = dict(zip(test.keys, caps))
        scores = {**caption_metrics(preds, test_refs),
                  **caption_chair(caps, test.records, train.records, prep.dataset.name)}
        row = {"method": recipe["name"], "beam": beam, **{k: round(v, 2) for k, v in scores.items()},
               "train_seconds": history["train_seconds"], "predict_ms_per_image": round(ms, 3),
               "best_epoch": history["best_epoch"], "words": len(words),
               "backbone": prep.backbone["name"], "weights": prep.backbone["weights"],
               "input_size": prep.backbone["input_size"], "seed": seed, "dataset": prep.dataset.name,
               "split": "test", "recipe": recipe["source"], "predictions": f"captions-beam{beam}{suffix}.json"}
        atomic.write_json(out / row["predictions"], [{"image_id": k, "caption": c} for k, c in preds.items()])
        rows.append(row)
        log(f"   beam {beam}: BLEU-4 {row['BLEU4']:.1f}  METEOR {row['METEOR']:.1f}  CIDEr {row['CIDEr']:.1f}  "
            f"({ms:.1f} ms/image); validation BLEU-4 {val_rows[-1]['BLEU4']:.2f}")
    best = max(rows, key=lambda r: r["BLEU4"])
    folder = out / "checkpoints" / (recipe["name"] + suffix)
    save_captioner(folder, decoder, words, prep, recipe, history,
                   {"test": {k: best[k] for k in CAPTION_COLUMNS + CHAIR_COLUMNS}, "beam": best["beam"]}, seed)
    for r in rows:
        r["checkpoint"] = f"checkpoints/{recipe['name'] + suffix}"
    return rows, history, val_rows, decoder
