"""Plots (matplotlib, Agg): per-label F1 curves of several rows, written atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def per_label_f1_plot(curves: dict[str, np.ndarray], path: str | Path, title: str) -> Path:
    """One line per row: per-label F1 sorted from best to worst (shows breadth: N+ and the tail)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, f1 in curves.items():
        ax.plot(np.sort(np.asarray(f1))[::-1], label=f"{name} (mean {np.mean(f1):.3f})", lw=1.6)
    ax.set_xlabel("labels, sorted by F1")
    ax.set_ylabel("per-label F1 (test)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path


def prediction_grid(items: list[dict], path: str | Path, columns: int = 4) -> Path:
    """A contact sheet: each test image with its true labels and the predicted ones
    (green: correct, red: wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    path = Path(path)
    rows = max(1, (len(items) + columns - 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        with Image.open(item["image"]) as img:
            ax.imshow(img.convert("RGB"))
        truth = set(item["truth"])
        ax.set_title("true: " + ", ".join(sorted(truth)), fontsize=7.5, loc="left")
        for j, lab in enumerate(item["predicted"]):
            ax.text(0.02, 0.04 + 0.09 * j, lab, transform=ax.transAxes, fontsize=8,
                    color="white", bbox={"facecolor": "#2a7" if lab in truth else "#c33", "pad": 1.5, "lw": 0})
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def steps_figure(items: list[dict], path: str | Path, title: str) -> Path:
    """What a decoder did step by step on a few images (as Fig. 3 of Dutta et al. 2020): each row
    is an image beside a table of steps: the label picked and the step's best three scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    path = Path(path)
    fig, axes = plt.subplots(len(items), 2, figsize=(10, 2.4 * len(items)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 3]})
    for (ax_img, ax_txt), item in zip(axes, items):
        with Image.open(item["image"]) as img:
            ax_img.imshow(img.convert("RGB"))
        ax_img.axis("off")
        ax_txt.axis("off")
        truth = set(item["truth"])
        lines = [f"true: {', '.join(sorted(truth))}"]
        for s in item["steps"]:
            top = "  ".join(f"{t['label']} {t['score']:.2f}" for t in s["top"])
            mark = "" if s["picked"] == "STOP" else (" (correct)" if s["picked"] in truth else " (wrong)")
            lines.append(f"step {s['step']}: {s['picked']}{mark}    top: {top}")
        ax_txt.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8.5, transform=ax_txt.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
