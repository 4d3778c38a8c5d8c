"""Markdown tables of annotation and captioning results, with published rows beside ours."""

from __future__ import annotations

from tagcap.metrics.captioning import CAPTION_COLUMNS
from tagcap.metrics.hallucination import CHAIR_COLUMNS
from tagcap.published import PUBLISHED


def _f(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def metrics_table(rows: list[dict]) -> str:
    head = ("| method | decision | P_L | R_L | F1_L | N+ | P_I | R_I | F1_I | P_O | R_O | F1_O | mAP | top-1 "
            "| train s | ms/img |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], r["decision"], _f(r["per_label"]["P"]), _f(r["per_label"]["R"]), _f(r["per_label"]["F1"]),
            str(r["n_plus"]), _f(r["per_image"]["P"]), _f(r["per_image"]["R"]), _f(r["per_image"]["F1"]),
            _f(r["overall"]["P"]), _f(r["overall"]["R"]), _f(r["overall"]["F1"]), _f(r.get("mAP")),
            _f(r.get("top1")), _f(r.get("train_seconds"), 1), _f(r.get("predict_ms_per_image"), 3)]) + " |")
    return "\n".join(lines)


def _ms(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def summary_table(summary: list[dict]) -> str:
    """Mean ± sd over seeds, one line per (method, decision) (see `results.summarize`)."""
    head = "| method | decision | seeds | P_L | R_L | F1_L | N+ | F1_I | F1_O | mAP |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary:
        lines.append("| " + " | ".join([
            r["method"], r["decision"], str(len(r["seeds"])), _ms(r["per_label.P"]), _ms(r["per_label.R"]),
            "**" + _ms(r["per_label.F1"]) + "**", _ms(r["n_plus"], 1), _ms(r["per_image.F1"]), _ms(r["overall.F1"]),
            _ms(r["mAP"])]) + " |")
    return "\n".join(lines)


def published_table(dataset: str) -> str | None:
    rows = PUBLISHED.get(dataset)
    if not rows:
        return None
    lines = ["| method (source) | backbone | P_L | R_L | F1_L | N+ |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} ({r['source']}) | {r['backbone']} | {_f(r['P'])} | {_f(r['R'])} | "
                     f"{_f(r['F1'])} | {r['n_plus']} |")
    return "\n".join(lines)


LEGEND = ("_L: per-label (means over labels, F1 = harmonic mean of the means); _I: per-image (means over "
          "images with a true label); _O: overall (micro: pooled counts); N+: labels with at least one "
          "correct prediction; mAP over labels with a test positive; top-1: share of images whose best-scored "
          "label is true. train s: decoder training wall time on cached features; ms/img: decoder time per "
          "image on cached features (the two views averaged into one input), backbone excluded (see extraction).")


def caption_table(rows: list[dict], with_beam: bool = True) -> str:
    """Caption scores, one line per row; the hallucination columns (CHAIR, lower is better) where a
    row has them."""
    chair = CHAIR_COLUMNS if any(k in r for r in rows for k in CHAIR_COLUMNS) else ()
    head = ["method"] + (["beam"] if with_beam else []) + ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR",
                                                          "ROUGE-L", "CIDEr-D", *chair]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"]] + ([str(r.get("beam", ""))] if with_beam else [])
        cells += [f"{r[k]:.1f}" if k in r and r[k] is not None else "–" for k in CAPTION_COLUMNS + chair]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def caption_summary_table(summary: list[dict]) -> str:
    """Mean ± sd over seeds, one line per (method, beam) (see `results.summarize`)."""
    chair = CHAIR_COLUMNS if any(k in r for r in summary for k in CHAIR_COLUMNS) else ()
    head = ["method", "beam", "seeds", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", *chair]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [r["method"], str(r["beam"]), str(len(r["seeds"]))]
        cells += [f"{r[k]['mean']:.1f} ± {r[k]['sd']:.1f}" if r.get(k, {}).get("mean") is not None else "–"
                  for k in CAPTION_COLUMNS + chair]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
