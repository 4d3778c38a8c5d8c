"""Recipes: one YAML per method (and per dataset where it differs) that says how to train it.

Looked up as configs/<dataset>/<name>.yaml inside the package, then configs/default/<name>.yaml;
a path to a YAML file works too.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tagcap.errors import ConfigError, TagcapError

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


RECIPE_KEYS = {"name", "method", "decoder", "train", "decisions", "source", "glove", "finetune", "task", "words",
               "beams"}
FILLED_BY_THE_PIPELINE = {"label_counts", "max_len"}  # decoder arguments that come from the data


def parse_decision(text: str) -> str:
    """threshold, mcc, sequence or top-K; anything else a ConfigError listing them."""
    if text in ("threshold", "mcc", "sequence") or (text.startswith("top-") and text[4:].isdigit() and int(text[4:]) > 0):
        return text
    raise ConfigError(f"unknown decision rule {text!r}; the rules are threshold, mcc, sequence and top-K "
                      "(e.g. top-3)")


def check_recipe(recipe: dict) -> None:
    """Everything a recipe names, checked before any feature is extracted or any epoch trained: its keys,
    its method, the decoder's and the training loop's options, and its decision rules."""
    from tagcap.models.base import check_decoder_arguments, decoder_class
    from tagcap.train.loop import TrainConfig

    where = f"recipe {recipe.get('source', recipe.get('name'))}"
    unknown = sorted(set(recipe) - RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a recipe has "
                          f"{', '.join(sorted(RECIPE_KEYS - {'source'}))}")
    cls = decoder_class(recipe["method"])
    check_decoder_arguments(recipe["method"], {k: v for k, v in recipe["decoder"].items()
                                               if k not in FILLED_BY_THE_PIPELINE}, f"{where}, decoder")
    TrainConfig.from_dict(recipe["train"], where=f"{where}, train")
    try:  # the values too (a loss or label order that does not exist): build a tiny one
        cls(num_labels=2, feature_dim=4, **{k: v for k, v in recipe["decoder"].items() if k not in FILLED_BY_THE_PIPELINE})
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{where}, decoder: {e}") from None
    if getattr(cls, "task", "annotation") == "caption":
        return
    for rule in recipe["decisions"]:
        check_decision(parse_decision(str(rule)), cls, where)


def check_decision(rule: str, cls, where: str) -> None:
    from tagcap.models.recurrent import SequenceDecoder

    if rule == "sequence" and not issubclass(cls, SequenceDecoder):
        raise ConfigError(f"{where}: the 'sequence' rule takes the labels a sequence decoder emits; "
                          f"{cls.method!r} gives scores only (use threshold, mcc or top-K)")


def recipe_for_data(name: str, data, fmt: str | None = None) -> dict:
    """The recipe `name`, the dataset's own version where it has one (configs/<dataset>/), checked.
    Reads the dataset's files (not its images' features) to learn its name: cheap, and before any work."""
    from tagcap.data import read_dataset

    try:
        task = load_recipe(name).get("task", "annotation")
    except TagcapError:  # only a dataset has it (e.g. ria-glove for corel5k)
        task = "annotation"
    recipe = load_recipe(name, read_dataset(data, fmt, task=task).name)
    return recipe
