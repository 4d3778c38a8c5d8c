"""The captioning pipeline shared by `bench caption` and `predict`: dataset -> cached grid features
-> word vocabulary -> Show-Attend-Tell training (epochs chosen by BLEU-4 of decoded validation
captions) -> decoding (greedy / beam) -> pycocoevalcap metrics -> checkpoint."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tagcap.data.captions import WordVocabulary
from tagcap.data.records import Record
from tagcap.errors import ConfigError
from tagcap.metrics.captioning import CAPTION_COLUMNS, bleu4_quick
from tagcap.published import PUBLISHED_FLICKR8K
from tagcap.decoders.base import Decoder, decoder_class
from tagcap.pipeline import PreparedDataset
from tagcap.results import RowStore, summarize, training_state
from tagcap.train.checkpoint import save_checkpoint
from tagcap.train.loop import RandomViewDataset, TrainConfig, train_decoder
from tagcap.inference.outputs import caption_grid


def caption_targets(records: list[Record], words: WordVocabulary) -> np.ndarray:
    """[N, K, max_len + 1] word ids, K = the most captions any image has; missing captions are <pad> rows."""
    k = max(len(r.captions) for r in records)
    out = np.zeros((len(records), k, words.max_len + 1), dtype=np.int64)
    for i, r in enumerate(records):
        out[i, : len(r.captions)] = words.encode_batch(list(r.captions))
    return out


def references(records: list[Record]) -> dict[str, list[str]]:
    return {r.key: list(r.captions) for r in records}


def build_words(prep: PreparedDataset, recipe: dict) -> WordVocabulary:
    opts = recipe.get("words", {})
    captions = [c for r in prep.dataset.splits["train"] for c in r.captions]
    if not captions:
        raise ConfigError(f"{prep.dataset.root}: the training split has no captions")
    return WordVocabulary.from_captions(captions, min_count=opts.get("min_count", 5), max_len=opts.get("max_len", 20))


def _new_captioner(recipe: dict, words: WordVocabulary, feature_dim: int, seed: int) -> Decoder:
    torch.manual_seed(seed)
    kwargs = {"max_len": words.max_len, **recipe["decoder"]}
    return decoder_class(recipe["method"])(num_labels=len(words), feature_dim=feature_dim, **kwargs)


def train_captioner(prep: PreparedDataset, recipe: dict, seed: int = 0, progress: bool = True,
                    resume_dir: str | Path | None = None):
    """Train the recipe's captioner on train; epochs and learning-rate drops follow validation BLEU-4
    of greedy-decoded captions (not teacher-forced losses)."""
    if getattr(decoder_class(recipe["method"]), "task", "annotation") != "caption":
        raise ConfigError(f"recipe {recipe['name']!r} is not a captioning recipe")
    train_recs, val_recs = prep.dataset.splits["train"], prep.dataset.splits["val"]
    words = build_words(prep, recipe)
    train_grid = prep.cache.load([r.key for r in train_recs], "grid")
    val_grid = prep.cache.load([r.key for r in val_recs], "grid")
    val_refs = references(val_recs)
    decoder = _new_captioner(recipe, words, train_grid.shape[-1], seed)
    config = TrainConfig.from_dict({**recipe["train"], "seed": seed})

    def validate() -> float:
        caps, _ = caption_grid(decoder, val_grid, words, **decoder.validation_kwargs())
        return bleu4_quick(dict(zip([r.key for r in val_recs], caps)), val_refs)

    dataset = RandomViewDataset(train_grid, caption_targets(train_recs, words))  # one view per image, all its captions
    history = train_decoder(decoder, dataset, validate, "val_BLEU4", config, progress, resume_dir=resume_dir)
    history["words"] = len(words)
    return decoder, words, history


def refit_captioner(prep: PreparedDataset, recipe: dict, words: WordVocabulary, history: dict, seed: int = 0,
                    progress: bool = True) -> tuple[Decoder, dict]:
    """The captioner trained again from scratch on train + validation for the epoch count validation
    chose, keeping the last epoch: the captioner's form of `pipeline.refit_recipe`. The vocabulary
    stays the first model's (words of the training captions), so the two models speak the same words.
    The learning rate stays the recipe's: the plateau schedule needs a validation split, so a first
    model whose rate dropped before its best epoch is not replayed exactly (its `lr_curve` shows it)."""
    recs = prep.dataset.splits["train"] + prep.dataset.splits["val"]
    grid = prep.cache.load([r.key for r in recs], "grid")
    epochs = int(history["best_epoch"]) + 1
    decoder = _new_captioner(recipe, words, grid.shape[-1], seed)
    config = TrainConfig.from_dict({**recipe["train"], "epochs": epochs, "patience": epochs + 1, "seed": seed})
    refit = train_decoder(decoder, RandomViewDataset(grid, caption_targets(recs, words)), None, None, config, progress)
    summary = {"epochs": refit["epochs_run"], "images": len(recs), "train_seconds": refit["train_seconds"],
               "train_loss_curve": refit.get("train_loss_curve"),
               "note": "weights refit on train + val; the validation metrics are the first model's"}
    return decoder, {**history, "refit": summary}


def fit_captioner(prep: PreparedDataset, recipe: dict, seed: int = 0, progress: bool = True,
                  resume_dir: str | Path | None = None,
                  refit: bool = False) -> tuple[Decoder, WordVocabulary, dict, float]:
    """What `fit` does with a captioning recipe: train it (`train_captioner`), then caption the
    validation split at the decoder's own beam width and score BLEU-4 (tagcap tokenization; the
    number `caption_seeds.py` chooses seeds by); with `refit`, train again on train + validation
    (`refit_captioner`), the BLEU-4 staying the first model's. Returns (decoder, words, history, BLEU-4)."""
    decoder, words, history = train_captioner(prep, recipe, seed=seed, progress=progress, resume_dir=resume_dir)
    val = prep.dataset.splits["val"]
    caps, _ = caption_grid(decoder, prep.cache.load([r.key for r in val], "grid"), words)
    bleu = bleu4_quick(dict(zip([r.key for r in val], caps)), references(val))
    if refit:
        decoder, history = refit_captioner(prep, recipe, words, history, seed=seed, progress=progress)
    return decoder, words, history, bleu


def save_captioner(folder: Path, decoder: Decoder, words: WordVocabulary, prep: PreparedDataset, recipe: dict,
                   history: dict, metrics: dict, seed: int) -> Path:
    meta = {
        "task": "caption",
        "recipe": recipe,
        "backbone": prep.backbone,
        "words": words.to_dict(),
        "training": history,  # the learning curves included: `report` draws them
        "dataset": {"name": prep.dataset.name, "format": prep.dataset.format, "root": str(prep.dataset.root)},
        "metrics": metrics,
        "seed": seed,
    }
    return save_checkpoint(folder, decoder, meta)


def timed_captions(decoder, grid, words, beam_width, progress=None):
    t0 = time.perf_counter()
    caps, _ = caption_grid(decoder, grid, words, beam_width=beam_width, progress=progress)
    return caps, (time.perf_counter() - t0) * 1000 / max(len(grid), 1)


def caption_table(rows: list[dict], with_beam: bool = True) -> str:
    head = ["method"] + (["beam"] if with_beam else []) + ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR",
                                                          "ROUGE-L", "CIDEr-D"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"]] + ([str(r.get("beam", ""))] if with_beam else [])
        cells += [f"{r[k]:.1f}" if k in r and r[k] is not None else "–" for k in CAPTION_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CAPTION_IDENTITY = ("dataset", "backbone", "weights", "input_size", "split")


def summarize_captions(rows: list[dict]) -> list[dict]:
    return summarize(rows, ("method", "beam"), CAPTION_COLUMNS)


def bench_caption(data: str | Path, out: str | Path, fmt: str | None = None, spec=None, cache=None,
                  engine: str = "auto", seed: int = 0, recipe_name: str = "show-attend-tell",
                  beams: list[int] | None = None, progress: bool = True, cache_root: Path | None = None,
                  epochs: int | None = None, log=print, seeds: list[int] | None = None,
                  device: str | None = "cpu", overrides: list[str] | None = None) -> list[dict]:
    """Train on train, select on validation, caption test once per beam width, score with pycocoevalcap;
    for every seed asked, each seed's rows written as it finishes (a rerun skips them)."""
    from tagcap import atomic
    from tagcap.metrics.captioning import require_java
    from tagcap.features.prepare import prepare
    from tagcap.provenance import machine_info
    from tagcap.data import read_dataset
    from tagcap.recipes import apply_overrides, check_recipe, load_recipe, save_recipe
    from tagcap.report.plots import attention_sheet

    from tagcap.errors import require_extra

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
    test_recs = prep.dataset.splits["test"]
    test_grid = prep.cache.load([r.key for r in test_recs], "grid")
    histories, val_by_seed = {}, {}
    for s in seeds:
        if store.done(recipe["name"], s):
            log(f"== {recipe['name']}, seed {s}: done before (in {store.path}), skipped")
            shutil.rmtree(training_state(out, recipe, s), ignore_errors=True)  # killed after its rows were written
            continue
        rows, history, val_rows, decoder, words = _caption_one_seed(prep, recipe, s, beams, out, len(seeds) > 1,
                                                                    test_grid, progress, log)
        histories[s], val_by_seed[s] = history, val_rows
        store.add(rows)
        shutil.rmtree(training_state(out, recipe, s), ignore_errors=True)  # spent once the rows are on disk
        if s == seeds[0]:
            # attention maps of a few test images, decoded with the recipe's beam width
            sample = test_recs[:4]
            caps, maps = caption_grid(decoder, test_grid[: len(sample)], words, attention=True)
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
          f"{test_grid.shape[2]} cells), weights `{prep.backbone['weights'][:23]}`; {ex_line}. Decoder epochs "
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


def _caption_one_seed(prep, recipe: dict, seed: int, beams: list[int], out: Path, multi_seed: bool, test_grid,
                      progress: bool, log):
    """Train one seed, caption validation and test at every beam width, save the checkpoint; the rows."""
    from tqdm.auto import tqdm

    from tagcap import atomic
    from tagcap.metrics.captioning import caption_metrics

    log(f"== {recipe['name']}, seed {seed}")
    decoder, words, history = train_captioner(prep, recipe, seed=seed, progress=progress,
                                              resume_dir=training_state(out, recipe, seed))
    log(f"trained in {history['train_seconds']:.0f} s; best epoch {history['best_epoch']}, "
        f"validation BLEU-4 (greedy, quick) {history['best_val_BLEU4']:.2f}; {len(words)} words")
    val_recs, test_recs = prep.dataset.splits["val"], prep.dataset.splits["test"]
    val_grid = prep.cache.load([r.key for r in val_recs], "grid")
    val_refs, test_refs = references(val_recs), references(test_recs)
    rows, val_rows = [], []
    suffix = f"-seed{seed}" if multi_seed else ""
    for beam in beams:
        # validation first: it is where beam search is compared with greedy decoding
        val_caps, _ = timed_captions(decoder, val_grid, words, beam)
        val_rows.append({"beam": beam, "BLEU4": bleu4_quick(dict(zip(val_refs, val_caps)), val_refs)})
        bar = tqdm(total=len(test_grid), desc=f"caption test, beam {beam}", disable=not progress)
        caps, ms = timed_captions(decoder, test_grid, words, beam, progress=bar)
        bar.close()
        preds = dict(zip([r.key for r in test_recs], caps))
        scores = caption_metrics(preds, test_refs)
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
                   {"test": {k: best[k] for k in CAPTION_COLUMNS}, "beam": best["beam"]}, seed)
    for r in rows:
        r["checkpoint"] = f"checkpoints/{recipe['name'] + suffix}"
    return rows, history, val_rows, decoder, words


def caption_summary_table(summary: list[dict]) -> str:
    head = ["method", "beam", "seeds", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [r["method"], str(r["beam"]), str(len(r["seeds"]))]
        cells += [f"{r[k]['mean']:.1f} ± {r[k]['sd']:.1f}" if r[k]["mean"] is not None else "–" for k in CAPTION_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
