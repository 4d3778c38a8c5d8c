"""The models shipped inside the package, so that photos get tags and a caption with no training data.

Each is an ordinary checkpoint folder under `tagcap/bundled/NAME/` (config.json, model.safetensors
in float16, MODEL_CARD.md) made by `benchmarks/default_models.py` from `../shared/datasets`; its
config records the recipe, the data and the test metrics that `tagcap evaluate` measured. The
backbone they all read is the offline `tf_efficientnet_lite2` weights package, a dependency.
"""

from __future__ import annotations

import json
from pathlib import Path

from tagcap.errors import CheckpointError

BUNDLED = Path(__file__).resolve().parent.parent / "bundled"
# what `tagcap.load()`, and `predict` / `serve` without a checkpoint, use: tags from three sources (scene
# words, ImageNet's objects and animals, everyday words), merged by concept under the shown rule, and a caption
DEFAULT_MODELS = ("corel5k-annotator", "imagenet-classes", "flickr8k-tagger", "flickr8k-captioner")


def bundled_names() -> list[str]:
    """The bundled models present in this installation, defaults first."""
    if not BUNDLED.is_dir():
        return []
    present = {p.name for p in BUNDLED.iterdir() if (p / "config.json").is_file()}
    return [n for n in DEFAULT_MODELS if n in present] + sorted(present - set(DEFAULT_MODELS))


def resolve(source: str | Path) -> tuple[Path, str | None]:
    """(checkpoint folder, model name) for a bundled model's name or a checkpoint path. A path wins
    over a name; a string that is neither is refused with the names there are."""
    path = Path(source)
    if path.is_dir():
        return path, None
    name = str(source)
    if "/" not in name and (BUNDLED / name / "config.json").is_file():
        return BUNDLED / name, name
    known = ", ".join(bundled_names()) or "none in this installation"
    raise CheckpointError(f"{source}: neither a checkpoint folder nor a bundled model (bundled: {known})")


def default_sources() -> list[Path]:
    """The default models' folders; a CheckpointError saying how to get them if any is missing."""
    missing = [n for n in DEFAULT_MODELS if not (BUNDLED / n / "config.json").is_file()]
    if missing:
        raise CheckpointError(f"the bundled model(s) {', '.join(missing)} are missing from {BUNDLED}; reinstall "
                              "tagcap, or rebuild them with benchmarks/default_models.py")
    return [BUNDLED / n for n in DEFAULT_MODELS]


def model_info(name: str) -> dict:
    """A bundled model's entry for `tagcap models` and `tagcap.models()`: task, method, training
    data, test metrics (on the float32 backbone, on the shipped int8 one that `predict` runs on a CPU with VNNI
    and, for a captioner, that decoded in bfloat16), size on disk and where its model card is."""
    folder, _ = resolve(name)
    config = json.loads((folder / "config.json").read_text())
    card = config.get("card", {})
    return {"name": name, "task": config.get("task", "annotation"), "method": config["decoder"]["method"],
            "labels": config["decoder"]["num_labels"], "trained_on": card.get("trained_on"),
            "metrics": card.get("test_metrics", {}), "metrics_int8": card.get("test_metrics_int8", {}),
            "metrics_bf16": card.get("test_metrics_bf16", {}),
            "summary": card.get("summary", ""),
            "default": name in DEFAULT_MODELS,
            "size_mb": round(sum(p.stat().st_size for p in folder.iterdir()) / 2 ** 20, 2),
            "card": str(folder / "MODEL_CARD.md")}
