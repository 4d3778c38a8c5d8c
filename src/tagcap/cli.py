"""The `tagcap` command: demo, extract, fit, evaluate, predict, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tagcap import __version__

from tagcap.cli_options import CALIBRATION_HELP, ENGINES, command, model_options, parse_seeds


def _backbone_args(p: argparse.ArgumentParser, choose_model: bool = True) -> None:
    """Backbone and cache options; `choose_model=False` where the checkpoint already fixes the backbone."""
    g = p.add_argument_group("backbone and feature cache")
    if not choose_model:
        _cache_args(g)
        return
    g.add_argument("--backbone", default="tf_efficientnet_lite2", help="any timm model name (default: %(default)s)")
    g.add_argument("--weights", default="auto",
                   help="auto (offline package weights for tf_efficientnet_lite0/1/2, else the hub), hub, "
                        "random, or a .safetensors/.pth FILE (default: %(default)s)")
    g.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the model's own)")
    g.add_argument("--pool-blocks", default="",
                   help="comma-separated modules of the backbone (e.g. blocks.4,blocks.5) whose average-pooled "
                        "outputs are appended to the pooled feature (multi-level features; the grid is unchanged)")
    _cache_args(g)


def _cache_args(g) -> None:
    g.add_argument("--engine", default="auto", choices=ENGINES,
                   help="how to run the backbone on the CPU (auto: onnx, verified against eager)")
    g.add_argument("--calibration", default=None, metavar="DIR", help=CALIBRATION_HELP)
    g.add_argument("--device", default="cpu",
                   help="where the backbone extracts features: cpu (default, the numbers we publish), auto, "
                        "cuda or cuda:N (float16 autocast, or onnxruntime-gpu's CUDA provider)")
    g.add_argument("--cache", default=None, help="feature cache folder (default: one per dataset and backbone "
                                                  "under $TAGCAP_CACHE or ~/.cache/tagcap)")
    g.add_argument("--format", default=None, help="dataset format: json, tagprop, list-annot, coco, csv; for "
                                                  "captions flickr8k, karpathy, coco-captions (default: detected)")
    g.add_argument("--verify", action="store_true",
                   help="compare every image's content hash with the one its cached features were made from "
                        "(default: only images whose size or modification time changed are hashed)")
    g.add_argument("--allow-outside-paths", action="store_true",
                   help="accept dataset image paths that leave the dataset folder (../x.jpg, /abs/path); "
                        "refused by default")


def _spec(args):
    from tagcap.features.backbone import BackboneSpec

    blocks = tuple(b.strip() for b in (args.pool_blocks or "").split(",") if b.strip())
    return BackboneSpec(name=args.backbone, weights=args.weights, input_size=args.input_size, pool_blocks=blocks)


def cmd_demo(args) -> int:
    from tagcap.demo import run_demo

    run_demo(args.out, progress=not args.quiet)
    return 0


def cmd_extract(args) -> int:
    from tagcap import distributed
    from tagcap.pipeline import prepare

    # under torchrun (or any launcher that sets RANK/WORLD_SIZE) each process extracts its slice
    sharded = distributed.init_from_env()
    prep = prepare(args.data, args.format, _spec(args), cache=args.cache, engine=args.engine,
                   batch_size=args.batch_size, grid=not args.no_grid, task=args.task, verify=args.verify,
                   device=args.device)
    if sharded:
        first = distributed.rank_and_world()[0] == 0
        distributed.leave()
        if not first:
            return 0
    print(prep.dataset.summary())
    print(f"cache: {prep.cache.folder}")
    print(json.dumps(prep.extract_stats))
    return 0


def _train_overrides(args) -> dict:
    """Training options given on the command line, which win over the recipe's."""
    names = ("epochs", "backbone_lr", "accumulate", "precision", "accelerator", "devices", "num_nodes", "workers",
             "max_minutes")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def cmd_fit(args) -> int:
    from tagcap.errors import ConfigError
    from tagcap.decoders.base import decoder_class
    from tagcap.pipeline import fit_annotator, prepare, save_model
    from tagcap.recipes import apply_overrides, check_decision, check_recipe, parse_decision, recipe_for_data

    # everything named is checked before any feature is extracted or any epoch trained
    recipe = apply_overrides(recipe_for_data(args.recipe, args.data, args.format), args.overrides)
    recipe["train"].update(_train_overrides(args))
    if args.device.startswith("cuda") and args.accelerator is None:
        recipe["train"]["accelerator"] = "gpu"  # the decoder trains where the features were made
    check_recipe(recipe)
    if recipe.get("task") == "caption":
        return _fit_captioner(args, recipe)
    decision = parse_decision(args.decision) if args.decision else str(recipe["decisions"][0])
    check_decision(decision, decoder_class(recipe["method"]), f"--decision {decision}")
    tune = dict(recipe.get("finetune") or {})
    if args.partial_finetune is not None:
        tune = {**tune, "mode": "partial", "from_block": args.partial_finetune}
    if args.finetune:
        tune = {**tune, "mode": "end-to-end"}
    if args.refit and tune:
        raise ConfigError("--refit is for annotation decoders on frozen features, not fine-tuning")
    if args.refit and recipe["train"].get("devices", 1) * recipe["train"].get("num_nodes", 1) > 1:
        raise ConfigError("--refit trains in one process; leave out --devices / --num-nodes")
    if tune and args.device != "cpu":
        raise ConfigError("--device places frozen-feature extraction; fine-tuning trains the backbone where "
                          "--accelerator says (e.g. --accelerator gpu)")
    if tune:
        return _fit_tuned(args, recipe, tune, decision)
    from tagcap.decoders.base import decoder_class

    # a decoder of pooled features trains from a cache that holds only those (`extract --no-grid`)
    prep = prepare(args.data, args.format, _spec(args), cache=args.cache, engine=args.engine, progress=not args.quiet,
                   verify=args.verify, device=args.device,
                   grid=True if decoder_class(recipe["method"]).feature_kind == "grid" else None)
    print(prep.dataset.summary())
    resume = _resume_dir(args)
    fitted = fit_annotator(prep, recipe, [decision], seed=args.seed, refit=args.refit, progress=not args.quiet,
                           resume_dir=resume)
    if fitted is None:
        return 0  # a DDP worker: rank 0 scores and writes
    rule, val_metrics = fitted.rules[0], fitted.val_metrics[0]
    save_model(Path(args.out), fitted.decoder, prep, recipe, rule, fitted.history, {"val": val_metrics}, args.seed)
    _training_state_spent(args, resume)
    _print_fit(_annotator_validation(rule, val_metrics, fitted.history), fitted.history, args.out)
    return 0


def _result_text(result: dict, fmt: str) -> str:
    import shutil

    from tagcap.predict import format_csv_row, format_table_row

    if fmt == "table":
        return format_table_row(result, min(shutil.get_terminal_size().columns, 120))
    return format_csv_row(result) if fmt == "csv" else json.dumps(result) + "\n"


def _resume_dir(args) -> Path:
    """Where training saves its state after every epoch: --resume-dir, else OUT.train-state beside the
    checkpoint; with --restart, the state saved there is discarded first (by the first process only)."""
    import shutil

    from tagcap import distributed

    out = Path(args.out)
    folder = Path(args.resume_dir) if args.resume_dir else out.with_name(out.name + ".train-state")
    if args.restart and distributed.rank_and_world()[0] == 0 and folder.is_dir():
        shutil.rmtree(folder)
    return folder


def _training_state_spent(args, resume: Path) -> None:
    """The checkpoint is written: the default training state is spent (a folder the user named is kept)."""
    import shutil

    if not args.resume_dir:
        shutil.rmtree(resume, ignore_errors=True)


def _annotator_validation(rule: dict, val_metrics: dict, history: dict) -> str:
    return (f"validation ({rule['kind']}): per-label F1 {val_metrics['per_label']['F1']:.3f}, "
            f"N+ {val_metrics['n_plus']}, mAP {val_metrics['mAP']:.3f}; best epoch {history['best_epoch']}, "
            f"{history['train_seconds']:.1f} s")


def _print_fit(validation: str, history: dict, out) -> None:
    """What `fit` prints last: the validation line, the refit if there was one, where the checkpoint is."""
    print(validation)
    if "refit" in history:
        r = history["refit"]
        print(f"refit on train + val: {r['epochs']} epochs on {r['images']} images, {r['train_seconds']:.1f} s "
              "(the validation numbers above are the first model's)")
    print(f"checkpoint: {out}")


def _fit_tuned(args, recipe: dict, tune: dict, decision: str) -> int:
    """`fit` with the backbone trained too: partially on cached activations, or end to end."""
    from tagcap.finetune import fit_tuned, save_tuned
    from tagcap.decision import make_rules
    from tagcap.pipeline import metrics_row
    from tagcap.inference.outputs import predict_outputs

    spec = _spec(args)
    if args.input_size is None and tune.get("input_size"):
        spec.input_size = int(tune["input_size"])
    out = Path(args.out)
    resume = _resume_dir(args)
    tuned = fit_tuned(args.data, recipe, spec, tune.get("mode", "partial"), tune.get("from_block"),
                      fmt=args.format, cache=args.cache, seed=args.seed, progress=not args.quiet,
                      resume_dir=resume, config_overrides=_train_overrides(args),
                      probe_epochs=int(tune.get("probe_epochs", 0)), probe_lr=float(tune.get("probe_lr", 1e-3)),
                      crop=int(tune.get("crop", 0)), freeze_bn=bool(tune.get("freeze_bn", False)))
    if tuned.history["global_rank"] != 0:
        return 0
    print(tuned.prep.dataset.summary())
    val_y = tuned.prep.vocab.encode(tuned.prep.dataset.splits["val"])
    val_out = predict_outputs(tuned.net, tuned.split_inputs("val"), batch_size=32)
    rule = make_rules([decision], val_out["scores"], val_y)[0]
    val_metrics = metrics_row(val_out, val_y, rule)
    save_tuned(out, tuned, recipe, rule, {"val": val_metrics}, args.seed)
    _training_state_spent(args, resume)
    _print_fit(_annotator_validation(rule, val_metrics, tuned.history), tuned.history, out)
    return 0


def _fit_captioner(args, recipe) -> int:
    from tagcap.captioning import fit_captioner, save_captioner
    from tagcap.errors import ConfigError
    from tagcap.pipeline import prepare

    not_for_captions = [flag for flag, given in (
        ("--decision", args.decision), ("--partial-finetune", args.partial_finetune),
        ("--finetune", args.finetune), ("--backbone-lr", args.backbone_lr), ("--devices", args.devices),
        ("--num-nodes", args.num_nodes)) if given not in (None, False)]
    if not_for_captions:
        raise ConfigError(f"{', '.join(not_for_captions)}: not used when training a captioner (a captioner "
                          "decodes sentences, in one process, on frozen features); leave them out")
    prep = prepare(args.data, args.format, _spec(args), cache=args.cache, engine=args.engine, task="caption",
                   verify=args.verify, device=args.device, progress=not args.quiet)
    print(prep.dataset.summary())
    resume = _resume_dir(args)
    decoder, words, history, bleu = fit_captioner(prep, recipe, seed=args.seed, progress=not args.quiet,
                                                  resume_dir=resume, refit=args.refit)
    save_captioner(Path(args.out), decoder, words, prep, recipe, history, {"val": {"BLEU4_quick": bleu}}, args.seed)
    _training_state_spent(args, resume)
    _print_fit(f"validation BLEU-4 (beam {decoder.beam_width}, tagcap tokenization): {bleu:.2f}; best epoch "
               f"{history['best_epoch']}, {history['train_seconds']:.1f} s; {len(words)} words", history, args.out)
    return 0


def cmd_evaluate(args) -> int:
    from tagcap import atomic
    from tagcap.errors import CheckpointError, ConfigError
    from tagcap.inference.checkpoint import backbone_spec, load_checkpoint
    from tagcap.pipeline import prepare

    decoder, config = load_checkpoint(args.checkpoint)
    task = config.get("task", "annotation")
    if task == "caption":
        from tagcap.metrics.captioning import require_java

        require_java()  # before any feature is extracted
    elif args.decoder_precision != "float32":
        raise ConfigError(f"--decoder-precision {args.decoder_precision}: only for captioning checkpoints; "
                          f"{args.checkpoint} is an {task} one")
    spec = backbone_spec(args.checkpoint, config)
    prep = prepare(args.data, args.format, spec, cache=args.cache, engine=args.engine, verify=args.verify,
                   task=task, device=args.device, splits=[args.split],
                   grid=True if task == "caption" or decoder.feature_kind == "grid" else None)
    if prep.backbone["weights"] != config["backbone"]["weights"]:
        raise CheckpointError(f"{args.checkpoint}: trained on other backbone weights than the cached features")
    row = (_evaluate_captioner if task == "caption" else _evaluate_annotator)(args, decoder, config, prep)
    row = {**row, "split": args.split, "dataset": prep.dataset.name}
    if args.json:
        atomic.write_json(args.json, row)
    return 0


def _evaluate_annotator(args, decoder, config, prep) -> dict:
    from tagcap.errors import CheckpointError
    from tagcap.inference.outputs import predict_outputs
    from tagcap.pipeline import metrics_row
    from tagcap.report.tables import metrics_table

    if prep.vocab.labels != config["vocabulary"]["labels"]:
        raise CheckpointError(f"{args.checkpoint}: its vocabulary ({len(config['vocabulary']['labels'])} labels) "
                              f"differs from {args.data}'s ({len(prep.vocab)} labels)")
    x, y = prep.split(args.split, decoder.feature_kind)
    row = {"method": config["recipe"]["name"], **metrics_row(predict_outputs(decoder, x), y, config["decision"])}
    print(metrics_table([row]))
    return row


def _evaluate_captioner(args, decoder, config, prep) -> dict:
    """pycocoevalcap scores (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) and object hallucination (CHAIR) of
    the split's captions, at --beam."""
    from tqdm.auto import tqdm

    from tagcap.data.captions import WordVocabulary, references
    from tagcap.inference.outputs import caption_grid
    from tagcap.metrics.captioning import caption_metrics
    from tagcap.metrics.hallucination import caption_chair
    from tagcap.report.tables import caption_table

    words = WordVocabulary.from_dict(config["words"])
    records = prep.dataset.splits[args.split]
    beam = args.beam or decoder.beam_width
    with tqdm(total=len(records), desc=f"caption {args.split}", unit="img", file=sys.stderr) as bar:
        caps, _ = caption_grid(decoder, prep.cache.load([r.key for r in records], "grid"), words, beam_width=beam,
                               progress=bar, precision=args.decoder_precision)
    row = {"method": config["recipe"]["name"], "beam": beam,
           **({"decoder_precision": args.decoder_precision} if args.decoder_precision != "float32" else {}),
           **caption_metrics(dict(zip([r.key for r in records], caps)), references(records)),
           **caption_chair(caps, records, prep.dataset.splits["train"], prep.dataset.name)}
    print(caption_table([row]))
    return row


def _model_set(args, items: list[str], also: list[str] = ()):
    """The models a `predict` or `serve` runs: --model options, else the leading checkpoints (or bundled
    model names) among `items`, else the bundled defaults; `also` joins the first two (predict's
    --captioner). Returns (ModelSet, the items left: photos)."""
    from tagcap.errors import ConfigError
    from tagcap.inference.bundled import default_sources
    from tagcap.inference.taggers import ModelSet
    from tagcap.predict import is_checkpoint

    sources = list(args.model or [])
    if not sources:
        while items and is_checkpoint(items[0]):  # `tagcap predict CKPT photos/`, as before --model existed
            sources.append(items.pop(0))
    misplaced = next((item for item in items if is_checkpoint(item)), None)
    if misplaced:  # walked as a folder of photos it would add nothing, and the run would use other models
        raise ConfigError(f"{misplaced}: a model among the photos; give models first (`tagcap predict MODEL... "
                          f"PHOTOS...`) or with --model")
    sources = sources + list(also) if sources else default_sources()
    return ModelSet.load(sources, engine=args.engine, weights=args.weights, device=args.device, views=args.views,
                         rule=args.rule), items


def cmd_predict(args) -> int:
    from tqdm.auto import tqdm

    from tagcap.errors import TagcapError
    from tagcap.predict import CSV_HEADER, ResultWriter, iter_images, predict_paths

    if args.resume and not args.output:
        raise TagcapError("--resume continues the file given by --output")
    if args.json:
        args.format = "jsonl"
    elif args.format is None:
        args.format = "table" if not args.output and sys.stdout.isatty() else "jsonl"
    if args.format == "table" and args.output:
        raise TagcapError("--format table is for a terminal; --output takes jsonl or csv")
    # the output is opened before anything slow: a bad target fails in the first second
    writer = ResultWriter(args.output, args.format, resume=args.resume) if args.output else None
    sys.stdout.reconfigure(errors="surrogateescape")  # file names as the file system spells them
    models, items = _model_set(args, list(args.paths), [args.captioner] if args.captioner else [])
    if args.caption and models.captioner is None:
        raise TagcapError("--caption: no captioning model among those given; add one with --model or --captioner")
    if args.attention and models.captioner is None:
        raise TagcapError("--attention draws a captioner's attention: give a captioning model")

    paths = items
    if not paths or paths == ["-"]:
        if sys.stdin.isatty():
            raise TagcapError("give image files or folders, or a list of them on standard input")
        paths = [ln.rstrip("\n") for ln in sys.stdin if ln.strip()]  # one path a line
    files = list(iter_images(paths))
    if writer and writer.done:
        before = len(files)
        files = [f for f in files if str(getattr(f, "path", f)) not in writer.done]
        print(f"--resume: {before - len(files)} images already in {args.output}, {len(files)} to go", file=sys.stderr)
    failures = 0
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=args.quiet or len(files) < 2, file=sys.stderr)

    def on_error(path, err):
        nonlocal failures
        failures += 1
        bar.write(f"error: {err}", file=sys.stderr)

    if not writer and args.format == "csv":
        print(CSV_HEADER, end="", flush=True)
    try:
        for result in predict_paths(models, files, batch_size=args.batch_size, strict=args.strict,
                                    on_error=on_error, explain=args.explain, attention_dir=args.attention,
                                    beam_width=args.beam, threshold=args.threshold, top_k=args.top_k):
            if writer:
                writer.write([result])  # flushed: a crash loses at most the batch in flight
            elif args.format == "table":  # through the bar, which clears itself from the terminal first
                bar.write(_result_text(result, args.format).rstrip("\n"), file=sys.stdout)
            else:  # results on stdout, the progress bar on stderr
                print(_result_text(result, args.format), end="", flush=True)
            bar.update(1)
    finally:
        bar.close()
        if writer:
            writer.close()
    if writer:
        before = f"; {writer.failed_before} had failed in the run it resumes" if writer.failed_before else ""
        print(f"wrote {writer.written} results to {args.output}" + (f" ({failures} failed)" if failures else "") +
              before, file=sys.stderr)
    return 1 if failures or (writer and writer.failed_before) else 0


def _seeds(args) -> list[int]:
    """--seeds 0,1,2 (or 0-4), else the one --seed."""
    return parse_seeds(args.seeds) if args.seeds else [args.seed]


def cmd_bench_annotate(args) -> int:
    from tagcap.bench import bench_annotate
    from tagcap.report.tables import metrics_table

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    rows = bench_annotate(args.data, args.out, methods=methods, fmt=args.format, spec=_spec(args),
                          cache=args.cache, engine=args.engine, seeds=_seeds(args), progress=not args.quiet,
                          refit=args.refit, verify=args.verify, device=args.device, overrides=args.overrides)
    print(metrics_table(rows))
    print(f"wrote {args.out}/results.json and results.md")
    return 0


def cmd_bench_caption(args) -> int:
    from tagcap.bench import bench_caption
    from tagcap.report.tables import caption_table

    beams = [int(b) for b in args.beams.split(",")] if args.beams else None
    rows = bench_caption(args.data, args.out, fmt=args.format, spec=_spec(args), cache=args.cache,
                         engine=args.engine, seeds=_seeds(args), recipe_name=args.recipe, beams=beams,
                         progress=not args.quiet, epochs=args.epochs, device=args.device, overrides=args.overrides)
    print(caption_table(rows))
    print(f"wrote {args.out}/results.json and results.md")
    return 0


def cmd_serve(args) -> int:
    from tagcap.serve import ServeConfig, create_app  # first: says which extra to install if it is missing

    import uvicorn


    from tagcap.serve.limits import header_timeout_protocol

    config = ServeConfig(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                         timeout_s=args.timeout, max_batch=args.max_batch, engine=args.engine,
                         weights=args.weights, body_timeout_s=args.body_timeout, device=args.device,
                         views=args.views, max_uploads=args.max_uploads, rule=args.rule)
    app = create_app(args.checkpoints, config, library=args.library)
    print(f"tagcap: serving {', '.join(app.state.models.describe())} on http://{args.host}:{args.port}/ "
          f"(API docs at /docs)" + (f"; the library's gallery at http://{args.host}:{args.port}/library"
                                    if args.library else ""), file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=30,
                http=header_timeout_protocol(args.header_timeout), limit_concurrency=args.max_connections)
    return 0


def cmd_models(args) -> int:
    from tagcap.api import models

    infos = models()
    if args.json:
        print(json.dumps([vars(i) for i in infos], indent=1))
        return 0
    if not infos:
        print("no bundled models in this installation", file=sys.stderr)
        return 1

    def listed(metrics: dict) -> str:
        return ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in metrics.items())

    for i in infos:
        print(f"{i.name}{' (default)' if i.default else ''}: {i.task}, {i.method}, {i.labels} "
              f"{'words' if i.task == 'caption' else 'labels'}, {i.size_mb:.1f} MB")
        print(f"    {i.summary}")
        print(f"    trained on {i.trained_on}; test: {listed(i.metrics) or 'not recorded'}")
        if i.metrics_int8:
            print(f"    test on the shipped int8 backbone (what predict runs on a CPU with VNNI"
                  f"{' and without bfloat16' if i.metrics_bf16 else ''}): {listed(i.metrics_int8)}")
        if i.metrics_bf16:
            print(f"    test on it decoded in bfloat16 (what predict runs on a CPU with bfloat16): "
                  f"{listed(i.metrics_bf16)}")
        print(f"    model card: {i.card}")
    return 0


def cmd_report(args) -> int:
    from tagcap.report.html import build_report

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    path = build_report(args.run_dir, data=args.data, labels=labels, out=args.out)
    print(f"wrote {path}")
    return 0


def _override_args(p, scope: str = "") -> None:
    p.add_argument("--set", nargs="+", action="extend", default=None, metavar="KEY=VALUE", dest="overrides",
                   help=f"change the recipe{scope}: dotted keys, values read as YAML, e.g. --set decoder.dropout=0.5 "
                        "train.lr=3e-4 decoder.loss_args.gamma_neg=2 (checked before any work; saved with the model)")


def _training_args(p, *, several_seeds: bool, epochs: bool = True, refit: str | None = None, scope: str = "") -> None:
    """What the training commands share: --epochs, --set (recipe overrides), --seed (and with
    `several_seeds`, --seeds), --refit where the command has one (`refit`: its help), --quiet."""
    if epochs:
        p.add_argument("--epochs", type=int, default=None, help="override the recipe's maximum epochs")
    if refit:
        p.add_argument("--refit", action="store_true", help=refit)
    _override_args(p, scope)
    p.add_argument("--seed", type=int, default=0)
    if several_seeds:
        p.add_argument("--seeds", default=None, help="several seeds, e.g. 0,1,2,3,4 or 0-4: a row per seed and "
                                                    "their mean ± sd (a rerun skips the rows already in "
                                                    "OUT/results.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from tagcap.recipes import ANNOTATION_RECIPES, available

    parser = argparse.ArgumentParser(prog="tagcap", description="Recurrent image annotation and captioning: tag and "
                                     "caption photos (bundled models, or your own checkpoints), train CNN and "
                                     "CNN-RNN annotators and captioners, and benchmark them on standard datasets.")
    parser.add_argument("--version", action="version", version=f"tagcap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = command(sub, "demo", cmd_demo, help="make a small synthetic set, train, evaluate and tag it (offline)",
                description="Offline end-to-end run on a synthetic scene set the package makes itself.")
    p.add_argument("--out", default="tagcap-demo", help="output folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = command(sub, "extract", cmd_extract, help="extract backbone features of a dataset into the cache",
                description="Extract pooled and grid features (original + flipped view) of every image. "
                            "Reuses a matching cache, resumes a killed run, refuses a mismatching one.")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (each runs with its flipped copy)")
    p.add_argument("--no-grid", action="store_true", help="store pooled features only")
    p.add_argument("--task", default="annotation", choices=["annotation", "caption"],
                   help="which dataset formats to look for first (default: %(default)s)")
    _backbone_args(p)

    p = command(sub, "fit", cmd_fit, help="train one recipe on a dataset and save a checkpoint",
                description=f"Train a recipe on train, select on the validation split. Recipes: "
                            f"{', '.join(available())}, or a YAML file.")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--recipe", default="cnn-unsym", help="recipe name or YAML file (default: %(default)s)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--decision", default=None, metavar="RULE",
                   help="decision rule saved with the model: threshold, mcc, sequence (sequence decoders) or "
                        "top-K (default: the recipe's first, e.g. mcc for cnn-unsym, sequence for ria)")
    _training_args(p, several_seeds=False, refit="after choosing the epoch (and an annotator's decision rule) on "
                   "validation, train again on train + validation for that many epochs and save those weights "
                   "(frozen features)")
    g = p.add_argument_group("fine-tuning the backbone (default: frozen features)")
    g.add_argument("--partial-finetune", type=int, default=None, metavar="BLOCK",
                   help="train the backbone's stages from BLOCK on (EfficientNet: 1-6) with the decoder, on cached "
                        "activations of the stages before it: the CPU path (recipe key finetune.from_block)")
    g.add_argument("--finetune", action="store_true",
                   help="fine-tune the whole backbone end to end on augmented images (meant for a GPU)")
    g.add_argument("--backbone-lr", type=float, default=None, help="the backbone's learning rate (default: the recipe's)")
    g.add_argument("--accumulate", type=int, default=None, help="gradient accumulation: batches per optimizer step")
    g.add_argument("--precision", default=None, help="32, bf16-mixed, or 16-mixed on a GPU (default: the recipe's)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default: the recipe's)")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="stop training after this many minutes (a batch job's time limit); the best epoch is kept")
    g.add_argument("--resume-dir", default=None,
                   help="where the training state is saved after each epoch (and every 10 minutes inside "
                        "one); the same command run again resumes from it and ends with the same model "
                        "(default: OUT.train-state, removed once the checkpoint is written)")
    g.add_argument("--restart", action="store_true",
                   help="discard the saved training state and train from the start (a state saved by a run "
                        "with another recipe, seed, option or data is refused otherwise)")
    g = p.add_argument_group("distributed training (Lightning DDP; torchrun and SLURM launches are detected)")
    g.add_argument("--accelerator", default=None, help="cpu, gpu or auto (default: the recipe's, cpu)")
    g.add_argument("--devices", type=int, default=None, help="processes (CPU) or GPUs per node (default 1)")
    g.add_argument("--num-nodes", type=int, default=None, help="nodes (default 1)")
    _backbone_args(p)

    p = command(sub, "evaluate", cmd_evaluate, help="score a checkpoint on a dataset split",
                description="Metrics of a checkpoint on a split (default: test), under its decision rule.")
    p.add_argument("checkpoint", help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--data", required=True, help="dataset folder with the checkpoint's labels")
    p.add_argument("--split", default="test")
    p.add_argument("--json", default=None, help="also write the metrics row to this JSON file")
    p.add_argument("--beam", type=int, default=None, help="captioning checkpoints: beam width (default: the "
                                                          "checkpoint's)")
    p.add_argument("--decoder-precision", default="float32", choices=["float32", "bfloat16"],
                   help="captioning checkpoints: the arithmetic of the decoder's matrix products (bfloat16: what "
                        "`predict` runs with --engine auto on a CPU that has it; default float32)")
    _backbone_args(p, choose_model=False)  # the backbone is the checkpoint's

    p = command(sub, "predict", cmd_predict, help="tag and caption images or folders (a table, or JSON Lines when piped)",
                description="Tag and caption image files or folders (searched recursively). Without a "
                            "model, the bundled defaults (see `tagcap models`): Corel-5k words, ImageNet "
                            "classes and a Flickr8k caption. On a terminal a table for people; piped or with --output, "
                            "one JSON object per line; bad files are reported on stderr and the exit status is 1.")
    p.add_argument("paths", nargs="*", metavar="[CKPT] PATH",
                   help="image files or folders, after any checkpoint folders or bundled model names (an older "
                        "spelling of --model); none or '-' reads a list of paths from standard input")
    p.add_argument("--model", action="append", default=None, metavar="CKPT",
                   help="checkpoint folder or bundled model, repeatable (default: bundled ones)")
    p.add_argument("--threshold", type=float, default=None,
                   help="each model's labels scored at least this (0-1), not the shown rule")
    p.add_argument("--top-k", type=int, default=None,
                   help="each model's K best labels (with --threshold: those at or above it)")
    p.add_argument("--output", default=None, help="write results here as they come (a crash loses at most one batch)")
    p.add_argument("--resume", action="store_true",
                   help="keep the results in --output and tag only the images not in it")
    p.add_argument("--format", default=None, choices=["jsonl", "csv", "table"],
                   help="default: a table on a terminal, else JSON Lines (docs/photos.md)")
    p.add_argument("--json", action="store_true", help="JSON Lines, also on a terminal (--format jsonl)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--strict", action="store_true", help="stop at the first bad file")
    p.add_argument("--explain", action="store_true",
                   help="add each decoding step: label picked, its score, the top labels")
    p.add_argument("--caption", action="store_true",
                   help="caption the images (with a captioning checkpoint or --captioner)")
    p.add_argument("--captioner", default=None, metavar="CKPT",
                   help="also caption each image with this captioning checkpoint")
    p.add_argument("--attention", default=None, metavar="DIR",
                   help="write per-word attention overlays and contact sheets into DIR")
    p.add_argument("--beam", type=int, default=None, help="captioning beam width (default: the checkpoint's)")
    model_options(p)

    p = command(sub, "serve", cmd_serve, help="serve checkpoints over HTTP (JSON API and a web page)",
                description="FastAPI service: POST /v1/annotate (multipart field 'image'), GET /v1/model, "
                            "GET /healthz, a web page at /, OpenAPI docs at /docs. Give annotation "
                            "checkpoints and at most one captioning checkpoint, or none for the bundled "
                            "models.")
    p.add_argument("checkpoints", nargs="*", help="checkpoint folders or bundled model names (default: the bundled "
                                                  "models, see `tagcap models`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image accepted, in pixels")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds before a request still decoding or waiting for the model gets 503")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request's headers before the connection is closed")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds an upload's body may take in all (however it trickles in) before it gets 408")
    p.add_argument("--max-uploads", type=int, default=16,
                   help="uploads received at once; more get 503 at once, so slow ones cannot hold every connection")
    p.add_argument("--max-connections", type=int, default=64,
                   help="connections served at once; more get 503 (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=16, help="most images in one backbone batch")
    p.add_argument("--library", default=None, help="also serve this photo library's gallery at /library "
                                                   "(made by `tagcap index`)")
    model_options(p)

    from tagcap.library.commands import add_commands as add_library_commands

    add_library_commands(sub)

    p = command(sub, "models", cmd_models,
                help="the bundled models (used when no checkpoint is given) and their metrics")
    p.add_argument("--json", action="store_true", help="as JSON")

    p = command(sub, "report", cmd_report, help="one HTML report (with PNG plots) for a bench run",
                description="Metrics tables, per-label F1 sorted, precision-recall curves, the most-missed "
                            "labels and a grid of test images (annotation runs); tables, attention maps and "
                            "sample captions (caption runs). Reads RUN_DIR/results.json and its checkpoints.")
    p.add_argument("run_dir", help="a `tagcap bench` output folder")
    p.add_argument("--data", default=None, help="dataset folder, if it moved since the run")
    p.add_argument("--labels", default=None, help="comma-separated labels for the precision-recall curves "
                                                 "(default: the six most frequent in test)")
    p.add_argument("--out", default=None, help="HTML file to write (default: RUN_DIR/report.html)")

    p = sub.add_parser("bench", help="benchmark every method of a task on one dataset")
    bsub = p.add_subparsers(dest="task", required=True)
    b = command(bsub, "annotate", cmd_bench_annotate,
                help="every annotation recipe side by side (CNN baselines and recurrent decoders)",
                description="Extract features once, train each recipe on train, choose epochs and MCC "
                            "thresholds on validation, score test once; write OUT/results.json, "
                            "OUT/results.md, a plot, and OUT/checkpoints/<row>/.")
    b.add_argument("--data", required=True, help="dataset folder, e.g. ../shared/datasets/corel5k")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--methods", default=None,
                   help=f"comma-separated recipes (default: {','.join(ANNOTATION_RECIPES)}, plus the dataset's own "
                        f"recipes such as ria-glove for corel5k; available: "
                        f"{', '.join(available())})")
    _training_args(b, several_seeds=True, epochs=False, scope=" (every recipe run)",
                   refit="refit each decoder on train + validation for its chosen epoch count before scoring test")
    _backbone_args(b)

    b = command(bsub, "caption", cmd_bench_caption,
                help="Show-Attend-Tell captioning: train, select, score test at several beams",
                description="Extract grid features once, train the captioner on train, choose the epoch "
                            "by BLEU-4 of decoded validation captions, caption test once per beam width "
                            "and score it with pycocoevalcap (needs Java). Writes OUT/results.json, "
                            "OUT/results.md, OUT/captions-beamK.json (COCO result format), "
                            "OUT/attention.png and OUT/checkpoints/<recipe>/.")
    b.add_argument("--data", required=True, help="dataset folder, e.g. ../shared/datasets/flickr8k")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--recipe", default="show-attend-tell", help="captioning recipe name or YAML file")
    b.add_argument("--beams", default=None, help="comma-separated beam widths (default: the recipe's, 1,3,5)")
    _training_args(b, several_seeds=True)
    _backbone_args(b)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tagcap.errors import TagcapError, machine_fault

    from tagcap.data.readers.common import ALLOW_OUTSIDE

    args = build_parser().parse_args(argv)
    if getattr(args, "calibration", None):  # read where the int8 engine is built (features/quantize.py)
        from tagcap.features.quantize import CALIBRATION_ENV

        os.environ[CALIBRATION_ENV] = args.calibration
    allow = ALLOW_OUTSIDE.set(bool(getattr(args, "allow_outside_paths", False)))
    try:
        return args.func(args)
    except TagcapError as e:
        print(f"tagcap: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a folder it may not write to is the user's to mend, not a bug
        if (message := machine_fault(e)) is None:
            raise
        print(f"tagcap: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tagcap: interrupted (a re-run resumes where this stopped)", file=sys.stderr)
        return 130
    finally:
        ALLOW_OUTSIDE.reset(allow)


if __name__ == "__main__":
    sys.exit(main())
