"""A small synthetic scene set with real label dependencies, made on the fly for `tagcap demo`.

Each picture is a little landscape. The labels obey rules a sequence model can learn:
exactly one of day/night; sun only by day; moon and star only at night; exactly one of
water/grass; boat and fish only with water; house and tree only with grass. The set is
written as a CSV folder, so the demo also runs the reader people use for their own photos.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABELS = ["day", "night", "sun", "moon", "star", "water", "grass", "boat", "fish", "house", "tree"]


def _scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[str]]:
    labels = []
    night = rng.random() < 0.5
    labels.append("night" if night else "day")
    sky = (20, 24, 60) if night else (135, 190, 235)
    jitter = rng.integers(-15, 16, size=3)
    sky = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(sky, jitter))
    img = Image.new("RGB", (size, size), sky)
    d = ImageDraw.Draw(img)
    horizon = int(size * rng.uniform(0.5, 0.65))
    water = rng.random() < 0.5
    labels.append("water" if water else "grass")
    ground = (30, 80, 160) if water else (60, 150, 60)
    if night:
        ground = tuple(c // 2 for c in ground)
    d.rectangle([0, horizon, size, size], fill=ground)

    def spot(r):  # a random centre in the sky
        return rng.uniform(r, size - r), rng.uniform(r, horizon - r)

    if not night and rng.random() < 0.6:
        labels.append("sun")
        r = size * rng.uniform(0.07, 0.11)
        x, y = spot(r)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 220, 40))
    if night and rng.random() < 0.6:
        labels.append("moon")
        r = size * rng.uniform(0.06, 0.09)
        x, y = spot(r)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(235, 235, 210))
        d.ellipse([x - r * 0.4, y - r, x + r * 1.6, y + r], fill=sky)  # crescent
    if night and rng.random() < 0.5:
        labels.append("star")
        for _ in range(rng.integers(3, 7)):
            x, y = spot(3)
            r = size * 0.02
            pts = [(x + r * math.cos(a * math.pi / 5) * (1 if a % 2 == 0 else 0.4),
                    y + r * math.sin(a * math.pi / 5) * (1 if a % 2 == 0 else 0.4)) for a in range(10)]
            d.polygon(pts, fill=(255, 255, 255))
    if water and rng.random() < 0.5:
        labels.append("boat")
        w = size * rng.uniform(0.18, 0.28)
        x = rng.uniform(0, size - w)
        y = horizon + size * 0.04
        d.polygon([(x, y), (x + w, y), (x + w * 0.8, y + w * 0.25), (x + w * 0.2, y + w * 0.25)], fill=(120, 60, 20))
        d.polygon([(x + w * 0.5, y - w * 0.6), (x + w * 0.5, y), (x + w * 0.85, y)], fill=(250, 250, 250))
    if water and rng.random() < 0.4:
        labels.append("fish")
        for _ in range(rng.integers(1, 3)):
            w = size * rng.uniform(0.08, 0.12)
            x = rng.uniform(0, size - w * 1.5)
            y = rng.uniform(horizon + size * 0.2, size - w)
            d.ellipse([x, y, x + w, y + w * 0.5], fill=(255, 140, 0))
            d.polygon([(x + w, y + w * 0.25), (x + w * 1.4, y), (x + w * 1.4, y + w * 0.5)], fill=(255, 140, 0))
    if not water and rng.random() < 0.5:
        labels.append("house")
        w = size * rng.uniform(0.18, 0.26)
        x = rng.uniform(0, size - w)
        y = horizon + size * 0.05
        d.rectangle([x, y, x + w, y + w * 0.7], fill=(200, 80, 60))
        d.polygon([(x - w * 0.1, y), (x + w * 1.1, y), (x + w * 0.5, y - w * 0.5)], fill=(110, 40, 30))
    if not water and rng.random() < 0.5:
        labels.append("tree")
        w = size * rng.uniform(0.1, 0.16)
        x = rng.uniform(0, size - w)
        y = horizon + size * rng.uniform(0.1, 0.25)
        d.rectangle([x + w * 0.4, y, x + w * 0.6, y + w * 1.0], fill=(90, 60, 30))
        d.ellipse([x, y - w * 1.0, x + w, y + w * 0.1], fill=(20, 110, 30))
    return img, labels


def make_synthetic_dataset(out: str | Path, n_train: int = 480, n_test: int = 160, size: int = 128,
                           seed: int = 0) -> Path:
    """Write images/ plus train.csv and test.csv under `out`; returns the folder."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            img, labels = _scene(rng, size)
            name = f"images/{split}_{i:04d}.png"
            img.save(out / name)
            rows.append((name, ";".join(labels)))
        tmp = out / f".{split}.csv.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "labels"])
            w.writerows(rows)
        tmp.replace(out / f"{split}.csv")
    return out
