"""Plots (matplotlib, Agg): per-label F1 curves of several rows, written atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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


def learning_curves(histories: dict[str, dict], path: str | Path, title: str) -> Path:
    """Per recipe, epoch by epoch: the mean training loss (left; each recipe's loss is its own scale,
    so each line is divided by its first epoch's value) and the validation metric that chose the epoch
    (right), the chosen epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, h in histories.items():
        metric = next((k for k in h if k.endswith("_curve") and k not in ("train_loss_curve", "lr_curve")), None)
        loss = np.asarray(h.get("train_loss_curve") or [], dtype=float)
        if len(loss):
            (line,) = loss_ax.plot(np.arange(1, len(loss) + 1), loss / (abs(loss[0]) or 1.0), lw=1.4, label=name)
        if metric:
            curve = np.asarray(h[metric], dtype=float)
            (line,) = val_ax.plot(np.arange(1, len(curve) + 1), curve, lw=1.4, label=name,
                                  color=line.get_color() if len(loss) else None)
            best = h.get("best_epoch", -1)
            if 0 <= best < len(curve):
                val_ax.plot(best + 1, curve[best], "o", color=line.get_color(), ms=5)
            val_ax.set_ylabel(metric.removesuffix("_curve").replace("_", " ") + " (validation)")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss / first epoch's")
    val_ax.set_xlabel("epoch (dot: the epoch kept)")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
    val_ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
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


def _attention_overlay(ax, image, alpha_map: np.ndarray, title: str) -> None:
    """The image with one step's attention (a side x side grid) stretched over it."""
    side = int(round(len(alpha_map) ** 0.5))
    ax.imshow(image)
    w, h = image.size
    grid = np.asarray(alpha_map, dtype=np.float32).reshape(side, side)
    ax.imshow(grid / max(float(grid.max()), 1e-8), cmap="jet", alpha=0.45, extent=(0, w, h, 0),
              interpolation="bilinear")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _words_of(caption: str, steps: int) -> list[str]:
    return (caption.split() + ["<end>"])[:steps]


def attention_sheet(items: list[tuple], path: str | Path, max_words: int = 12) -> Path:
    """A contact sheet of several images: one row each, the image then one overlay per word."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tagcap.features.images import load_image

    path = Path(path)
    cols = 1 + min(max_words, max((len(m) for _, _, m in items), default=1))
    fig, axes = plt.subplots(len(items), cols, figsize=(1.7 * cols, 1.9 * len(items)), squeeze=False)
    for row, (image_path, caption, maps) in zip(axes, items):
        image = load_image(image_path)
        row[0].imshow(image)
        row[0].set_title(caption if len(caption) < 40 else caption[:37] + "...", fontsize=7, loc="left")
        row[0].axis("off")
        for ax, word, alpha_map in zip(row[1:], _words_of(caption, len(maps)), maps):
            _attention_overlay(ax, image, alpha_map, word)
        for ax in row[1 + min(len(maps), cols - 1):]:
            ax.axis("off")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def attention_maps(image, caption: str, maps: np.ndarray, folder: str | Path, stem: str) -> list[Path]:
    """Per-word overlays `folder/stem/NN-word.png` and the contact sheet `folder/stem.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    (folder / stem).mkdir(parents=True, exist_ok=True)
    words = _words_of(caption, len(maps))
    written = []
    for n, (word, alpha_map) in enumerate(zip(words, maps)):
        fig, ax = plt.subplots(figsize=(3, 3))
        _attention_overlay(ax, image, alpha_map, word)
        safe = "".join(ch for ch in word if ch.isalnum()) or "end"
        written.append(_save(fig, folder / stem / f"{n:02d}-{safe}.png"))
        plt.close(fig)
    cols = min(6, len(words) + 1)
    rows = -(-(len(words) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    flat = axes.ravel()
    flat[0].imshow(image)
    flat[0].set_title("input", fontsize=9)
    flat[0].axis("off")
    for ax, word, alpha_map in zip(flat[1:], words, maps):
        _attention_overlay(ax, image, alpha_map, word)
    for ax in flat[len(words) + 1:]:
        ax.axis("off")
    fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    written.append(_save(fig, folder / f"{stem}.png"))
    plt.close(fig)
    return written
