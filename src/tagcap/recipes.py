"""Recipes: one YAML per method (and per dataset where it differs) that says how to train it.

Looked up as configs/<dataset>/<name>.yaml inside the package, then configs/default/<name>.yaml;
a path to a YAML file works too. `extends: base` (configs/base.yaml, the training block most
recipes share) or `extends: <recipe name or file>` starts from another recipe: mappings are merged
key by key, anything else the extending recipe says wins. `--set train.lr=3e-4` (`apply_overrides`)
changes one value of the resolved recipe; the result is checked as a whole (`check_recipe`) and saved
with the model it trains.
"""

from __future__ import annotations

import copy
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
    recipe = _resolve(path, ())
    for key in ("name", "method"):
        if key not in recipe:
            raise TagcapError(f"{path}: recipe lacks {key!r}")
    recipe.setdefault("decoder", {})
    recipe.setdefault("train", {})
    recipe.setdefault("decisions", ["threshold"])
    recipe["source"] = _shown(path)
    return recipe


def _shown(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR)) if path.is_relative_to(CONFIG_DIR) else str(path)


def _read(path: Path) -> dict:
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TagcapError(f"{path}: malformed YAML ({e})") from None
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys (name, method, decoder, train, ...)")
    return recipe


def _resolve(path: Path, chain: tuple[Path, ...]) -> dict:
    """The recipe at `path` with what it extends merged in (a loop of `extends` is refused)."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: 'extends' loops back to itself ({' -> '.join(p.name for p in chain + (path,))})")
    recipe = _read(path)
    parent = recipe.pop("extends", None)
    if parent is None:
        return recipe
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' names one recipe (a name or a YAML file), not {parent!r}")
    candidates = ([path.parent / parent] if parent.endswith((".yaml", ".yml")) else
                  [CONFIG_DIR / f"{parent}.yaml", path.parent / f"{parent}.yaml", CONFIG_DIR / "default" / f"{parent}.yaml"])
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(f"{path}: 'extends: {parent}' names no recipe (looked for {', '.join(map(str, candidates))})")
    return merge(_resolve(found, chain + (path,)), recipe)


def merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`: mappings merged key by key, any other value replaced."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_overrides(recipe: dict, assignments: list[str] | None) -> dict:
    """`--set decoder.dropout=0.5 train.lr=3e-4`: each dotted key set to its value read as YAML (0.5 a
    number, true a boolean, [a, b] a list). The recipe is checked afterwards, so a misspelt key is named
    there; here, an assignment without '=' or one that walks into a value that is not a mapping."""
    recipe = copy.deepcopy(recipe)  # the caller's recipe stays as it was
    for text in assignments or []:
        key, sep, raw = text.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=3e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {text!r}: the value is not valid YAML ({e})") from None
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as text; a person means the number
            try:
                value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
            except ValueError:
                pass
        node = recipe
        for n, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(parts[:n + 1])} is a value, not a section")
        node[parts[-1]] = value
    if assignments:
        recipe["overrides"] = list(recipe.get("overrides", [])) + list(assignments)
    return recipe


def save_recipe(recipe: dict, path: Path) -> Path:
    """The resolved recipe as YAML (what `extends` and `--set` made of it), written atomically."""
    from tagcap import atomic

    atomic.write_text(Path(path), yaml.safe_dump(recipe, sort_keys=False))
    return Path(path)


RECIPE_KEYS = {"name", "method", "decoder", "train", "decisions", "source", "glove", "finetune", "task", "words",
               "beams", "overrides"}
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
    from tagcap.decoders.base import check_decoder_arguments, decoder_class
    from tagcap.train.loop import TrainConfig

    where = f"recipe {recipe.get('source', recipe.get('name'))}"
    unknown = sorted(set(recipe) - RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a recipe has "
                          f"{', '.join(sorted(RECIPE_KEYS - {'source', 'overrides'}))}")
    cls = decoder_class(recipe["method"])
    check_decoder_arguments(recipe["method"], {k: v for k, v in recipe["decoder"].items()
                                               if k not in FILLED_BY_THE_PIPELINE}, f"{where}, decoder")
    TrainConfig.from_dict(recipe["train"], where=f"{where}, train")
    try:  # the values too (a loss or label order that does not exist): build a tiny one
        cls(num_labels=2, feature_dim=4, **{k: v for k, v in recipe["decoder"].items() if k not in FILLED_BY_THE_PIPELINE})
    except (ValueError, TypeError, KeyError) as e:  # ConfigError is a ValueError
        raise ConfigError(f"{where}, decoder: {e}") from None
    if getattr(cls, "task", "annotation") == "caption":
        return
    for rule in recipe["decisions"]:
        check_decision(parse_decision(str(rule)), cls, where)


def check_decision(rule: str, cls, where: str) -> None:
    if rule == "sequence" and not cls.emits_labels:
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
