"""Recipes: one YAML per method (and per dataset where it differs) that says how to train it.

Looked up as configs/<dataset>/<name>.yaml inside the package, then configs/default/<name>.yaml;
a path to a YAML file works too.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tagcap.errors import TagcapError

CONFIG_DIR = Path(__file__).parent / "configs"
# What `bench annotate` runs by default, plus any recipe in configs/<dataset>/ (e.g. ria-glove for Corel-5k).
ANNOTATION_RECIPES = ("cnn-bce", "cnn-asl", "cnn-unsym", "ria", "sr-cnn-rnn", "cnn-rnn", "order-free",
                      "multi-order", "attention-rnn", "label-attention")


def default_recipes(dataset: str) -> list[str]:
    extra = sorted(p.stem for p in (CONFIG_DIR / dataset).glob("*.yaml")) if (CONFIG_DIR / dataset).is_dir() else []
    return list(ANNOTATION_RECIPES) + [e for e in extra if e not in ANNOTATION_RECIPES]


def available() -> list[str]:
    return sorted({p.stem for p in CONFIG_DIR.glob("*/*.yaml")})


def load_recipe(name: str, dataset: str | None = None) -> dict:
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        candidates = ([CONFIG_DIR / dataset / f"{name}.yaml"] if dataset else []) + [CONFIG_DIR / "default" / f"{name}.yaml"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise TagcapError(f"unknown recipe {name!r}; available: {', '.join(available())}")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TagcapError(f"{path}: malformed YAML ({e})") from None
    for key in ("name", "method"):
        if key not in recipe:
            raise TagcapError(f"{path}: recipe lacks {key!r}")
    recipe.setdefault("decoder", {})
    recipe.setdefault("train", {})
    recipe.setdefault("decisions", ["threshold"])
    recipe["source"] = str(path.relative_to(CONFIG_DIR)) if path.is_relative_to(CONFIG_DIR) else str(path)
    return recipe
