"""`tagcap report RUN_DIR`: one HTML file, with PNG plots beside it, for a bench or evaluation run.

Annotation runs: the metrics table, per-label F1 sorted, precision-recall curves for chosen labels,
the most-missed labels, and a grid of test images with true and predicted labels, recomputed from
the run's checkpoints on the cached test features. Caption runs: the metrics table, the attention
contact sheet and sample captions beside their references.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from tagcap import atomic
from tagcap.errors import TagcapError
from tagcap.results import read_rows

CSS = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330}
table{border-collapse:collapse;font-size:13px;margin:8px 0 18px}td,th{border:1px solid #ccd;padding:3px 7px;text-align:right}
th{background:#eef1f6}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #dde}
.muted{color:#667;font-size:13px}h2{margin-top:30px}"""


def _table(head: list[str], rows: list[list]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>")
    return "\n".join(out + ["</table>"])


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def _page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")


def build_report(run_dir: str | Path, data: str | Path | None = None, labels: list[str] | None = None,
                 out: str | Path | None = None, n_images: int = 12) -> Path:
    run_dir = Path(run_dir)
    results = run_dir / "results.json"
    if not results.is_file():
        raise TagcapError(f"{run_dir}: no results.json (give the output folder of `tagcap bench` or `evaluate --json`)")
    rows = read_rows(results)
    if not rows:
        raise TagcapError(f"{results}: no rows")
    out = Path(out) if out else run_dir / "report.html"
    assets = out.parent / (out.stem + "_files")
    assets.mkdir(parents=True, exist_ok=True)
    if "BLEU4" in rows[0]:
        body = _caption_body(run_dir, rows, assets)
        title = f"{rows[0].get('dataset', 'captioning')}: captioning report"
    else:
        body = _annotation_body(run_dir, rows, assets, data, labels, n_images)
        title = f"{rows[0].get('dataset', 'annotation')}: annotation report"
    atomic.write_text(out, _page(title, body))
    return out


def _run_facts(run_dir: Path) -> list[str]:
    run = run_dir / "run.json"
    if not run.is_file():
        return []
    info = json.loads(run.read_text())
    m = info.get("machine", {})
    return [f"<p class='muted'>{html.escape(str(info.get('dataset', '')))}<br>machine: {html.escape(str(m.get('cpu')))}, "
            f"{m.get('cores')} cores; commit {m.get('commit')}; whole run {info.get('wall_seconds')} s</p>"]


def _annotation_body(run_dir, rows, assets, data, chosen_labels, n_images) -> list[str]:
    from sklearn.metrics import precision_recall_curve

    from tagcap.decision import apply_rule
    from tagcap.features.backbone import BackboneSpec
    from tagcap.metrics.annotation import per_label_scores
    from tagcap.features.prepare import prepare
    from tagcap.report.plots import per_label_f1_plot, prediction_grid
    from tagcap.inference.checkpoint import load_checkpoint
    from tagcap.inference.outputs import predict_outputs

    body = _run_facts(run_dir)
    body.append("<h2>Metrics (test split)</h2>")
    body.append(_table(["method", "decision", "P_L", "R_L", "F1_L", "N+", "F1_I", "F1_O", "mAP"],
                       [[r["method"], r["decision"], r["per_label"]["P"], r["per_label"]["R"], r["per_label"]["F1"],
                         r["n_plus"], r["per_image"]["F1"], r["overall"]["F1"], r.get("mAP", float("nan"))]
                        for r in rows]))
    with_ckpt = [r for r in rows if r.get("checkpoint") and (run_dir / r["checkpoint"]).is_dir()]
    if not with_ckpt:
        body.append("<p class='muted'>No checkpoints in this run folder: per-label plots need them.</p>")
        return body
    body += _learning_curves(run_dir, with_ckpt, assets)
    best = max(with_ckpt, key=lambda r: r["per_label"]["F1"])
    decoder, config = load_checkpoint(run_dir / best["checkpoint"])
    prep = prepare(data or config["dataset"]["root"], config["dataset"].get("format"),
                   BackboneSpec(**config["backbone"]["spec"]), progress=False)
    if prep.vocab.labels != config["vocabulary"]["labels"]:
        raise TagcapError(f"{run_dir / best['checkpoint']}: its labels differ from the dataset's at {prep.dataset.root}")
    x, y = prep.split("test", decoder.feature_kind)
    curves, scores_by_row = {}, {}
    for r in with_ckpt:
        dec, cfg = (decoder, config) if r is best else load_checkpoint(run_dir / r["checkpoint"])
        outputs = predict_outputs(dec, x)
        pred = apply_rule(outputs["scores"], cfg["decision"], outputs.get("emitted"))
        curves[f"{r['method']}, {r['decision']}"] = per_label_scores(pred, y)["F1"]
        scores_by_row[id(r)] = (outputs, pred)
    top3 = sorted(curves, key=lambda k: -float(curves[k].mean()))[:3]
    per_label_f1_plot({k: curves[k] for k in top3}, assets / "per_label_f1.png", "per-label F1, sorted (best three rows)")
    body += ["<h2>Per-label F1, sorted</h2>", f"<img src='{assets.name}/per_label_f1.png'>"]

    outputs, pred = scores_by_row[id(best)]
    labels = prep.vocab.labels
    stats = per_label_scores(pred, y)
    gt = y.sum(0)
    if chosen_labels:
        unknown = [lab for lab in chosen_labels if lab not in prep.vocab.index]
        if unknown:
            raise TagcapError(f"--labels: {unknown[0]!r} is not one of this dataset's labels")
        picks = [prep.vocab.index[lab] for lab in chosen_labels]
    else:
        picks = list(np.argsort(-gt)[:6])  # the six most frequent test labels
    _pr_plot(outputs["scores"], y, picks, labels, assets / "pr_curves.png", precision_recall_curve)
    body += [f"<h2>Precision-recall curves ({html.escape(best['method'])}, the best row)</h2>",
             f"<img src='{assets.name}/pr_curves.png'>"]

    missed = np.argsort(-(gt - stats["tp"]))[:15]
    body += ["<h2>Most-missed labels</h2>", "<p class='muted'>Test positives the best row did not predict.</p>",
             _table(["label", "test positives", "missed", "recall", "precision", "F1"],
                    [[labels[i], int(gt[i]), int(gt[i] - stats["tp"][i]), float(stats["R"][i]), float(stats["P"][i]),
                      float(stats["F1"][i])] for i in missed])]
    order = np.argsort(-stats["F1"])
    body += ["<details><summary>Every label, by F1</summary>",
             _table(["label", "F1", "P", "R", "test positives"],
                    [[labels[i], float(stats["F1"][i]), float(stats["P"][i]), float(stats["R"][i]), int(gt[i])]
                     for i in order]), "</details>"]
    recs = prep.dataset.splits["test"][:n_images]
    items = [{"image": r.image, "truth": list(r.labels),
              "predicted": [labels[j] for j in np.flatnonzero(pred[i])[np.argsort(-outputs["scores"][i][pred[i]])]][:8]}
             for i, r in enumerate(recs)]
    prediction_grid(items, assets / "test_images.png")
    body += ["<h2>Test images: true labels (title) and predicted (green right, red wrong)</h2>",
             f"<img src='{assets.name}/test_images.png'>"]
    return body


def _learning_curves(run_dir: Path, rows: list[dict], assets: Path) -> list[str]:
    """Each recipe's training loss and validation metric per epoch, read from its checkpoint's config
    (one training per recipe: its lowest seed, since the rules of one training share it)."""
    from tagcap.report.plots import learning_curves

    histories = {}
    for r in sorted(rows, key=lambda r: r.get("seed", 0)):
        config_path = run_dir / r["checkpoint"] / "config.json"
        if r["method"] in histories or not config_path.is_file():
            continue
        training = json.loads(config_path.read_text()).get("training") or {}
        if any(k.endswith("_curve") for k in training):
            histories[r["method"]] = training
    if not histories:
        return []
    learning_curves(histories, assets / "learning_curves.png", "learning curves")
    return ["<h2>Learning curves</h2>",
            "<p class='muted'>Training loss and the validation metric that chose the epoch, per recipe "
            f"(seed {min(r.get('seed', 0) for r in rows)}).</p>",
            f"<img src='{assets.name}/learning_curves.png'>"]


def _pr_plot(scores, y, picks, labels, path, precision_recall_curve):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tagcap.report.plots import _save

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i in picks:
        if y[:, i].any():
            p, r, _ = precision_recall_curve(y[:, i], scores[:, i])
            ax.plot(r, p, label=f"{labels[i]} ({int(y[:, i].sum())} positives)")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, Path(path))
    plt.close(fig)


def _caption_body(run_dir, rows, assets) -> list[str]:
    import shutil

    from tagcap.metrics.captioning import CAPTION_COLUMNS

    body = _run_facts(run_dir)
    body.append("<h2>Metrics (test split, pycocoevalcap)</h2>")
    body.append(_table(["method", "beam", *CAPTION_COLUMNS, "ms/image"],
                       [[r["method"], r["beam"], *[round(r[k], 1) for k in CAPTION_COLUMNS], r["predict_ms_per_image"]]
                        for r in rows]))
    body += _learning_curves(run_dir, [r for r in rows if r.get("checkpoint")], assets)
    if (run_dir / "attention.png").is_file():
        shutil.copy(run_dir / "attention.png", assets / "attention.png")
        body += ["<h2>Attention, word by word</h2>", f"<img src='{assets.name}/attention.png'>"]
    best = max(rows, key=lambda r: r["BLEU4"])
    preds_file = run_dir / best.get("predictions", "")
    if preds_file.is_file():
        preds = json.loads(preds_file.read_text())[:15]
        body += [f"<h2>Sample test captions (beam {best['beam']})</h2>",
                 _table(["image", "caption"], [[p["image_id"], p["caption"]] for p in preds])]
    return body
