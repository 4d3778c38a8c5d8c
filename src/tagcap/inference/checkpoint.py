"""Reading checkpoints: a folder with model.safetensors and config.json, checked key by key before any
weights are trusted. Nothing pickled is ever loaded. Writing them is training's job
(`tagcap.train.checkpoint.save_checkpoint`); reading lives here so that tagging never imports training."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tagcap.errors import CheckpointError
from tagcap.hashing import file_sha256
from tagcap.decoders import create_decoder
from tagcap.decoders.base import Decoder

WEIGHTS, CONFIG = "model.safetensors", "config.json"
FORMAT = "tagcap-checkpoint/1"


def checkpoint_task(checkpoint: str | Path) -> str:
    """"annotation" or "caption", read from the checkpoint's config (weights not loaded)."""
    path = Path(checkpoint) / CONFIG
    if not Path(checkpoint).is_dir():
        raise CheckpointError(f"{checkpoint}: not a checkpoint folder (expected {WEIGHTS} and {CONFIG} inside)")
    try:
        return json.loads(path.read_text()).get("task", "annotation")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{checkpoint}: not a readable checkpoint ({e})") from None


def _require(config: dict, path: str, kind, where: Path):
    """config[a][b]... by a dotted path, of the given type(s); else a CheckpointError naming the key."""
    value = config
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise CheckpointError(f"{where}: no {path!r} in it; the checkpoint is incomplete or from another tool")
        value = value[part]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CheckpointError(f"{where}: {path!r} is {type(value).__name__}, expected {getattr(kind, '__name__', kind)}")
    return value


def check_config(config: dict, where: Path) -> None:
    """Refuse, naming the key, a config.json that lacks what loading and tagging need."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    fmt = config.get("format")
    if fmt != FORMAT:
        raise CheckpointError(f"{where}: 'format' is {fmt!r}; this tagcap reads {FORMAT!r} (a checkpoint from "
                              "another tagcap version, or not a tagcap checkpoint)")
    for key, kind in (("decoder.method", str), ("decoder.num_labels", int), ("decoder.feature_dim", int),
                      ("decoder.hparams", dict), ("backbone.spec", dict), ("backbone.weights", str)):
        _require(config, key, kind, where)
    task = config.get("task", "annotation")
    if task == "caption":
        _require(config, "words", dict, where)
    elif task == "annotation":
        labels = _require(config, "vocabulary.labels", list, where)
        if not all(isinstance(x, str) for x in labels):
            raise CheckpointError(f"{where}: 'vocabulary.labels' must be a list of strings")
        kind = _require(config, "decision.kind", str, where)
        rule = config["decision"]
        if kind == "threshold":
            _require(config, "decision.t", (int, float), where)
        elif kind == "mcc":
            thresholds = _require(config, "decision.thresholds", list, where)
            bad = next((i for i, t in enumerate(thresholds) if not isinstance(t, (int, float)) or isinstance(t, bool)), None)
            if bad is not None:
                raise CheckpointError(f"{where}: 'decision.thresholds'[{bad}] is {thresholds[bad]!r}, not a number")
            if len(thresholds) != len(labels):
                raise CheckpointError(f"{where}: {len(thresholds)} thresholds for {len(labels)} labels")
        elif kind == "top-k":
            _require(config, "decision.k", int, where)
            if rule.get("floor") is not None:
                _require(config, "decision.floor", (int, float), where)
        elif kind != "sequence":
            raise CheckpointError(f"{where}: unknown 'decision.kind' {rule['kind']!r} (threshold, mcc, top-k, sequence)")
    else:
        raise CheckpointError(f"{where}: unknown 'task' {task!r} (annotation, caption)")


def _read_consistently(folder: Path) -> tuple[bytes, bytes]:
    """config.json and the weights of one and the same checkpoint. Both are read through one handle on
    the folder, so a save that swaps a new checkpoint in meanwhile cannot mix the old config with the new
    weights; if the old folder is removed under us, read the new one."""
    for _ in range(5):
        try:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except NotADirectoryError:
            break
        try:
            return _read_at(fd, CONFIG), _read_at(fd, WEIGHTS)
        except FileNotFoundError:
            continue  # the folder we held was swapped out and is being removed: read the new one
        finally:
            os.close(fd)
    raise CheckpointError(f"{folder}: missing {WEIGHTS} or {CONFIG}")


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def load_checkpoint(folder: str | Path) -> tuple[Decoder, dict]:
    """A checkpoint folder's decoder (in eval mode) and its config, every file checked against the
    SHA-256 its config records; a CheckpointError names the file at fault."""
    from tagcap.inference.bundled import BUNDLED

    try:
        return _load_checkpoint(Path(folder))
    except CheckpointError as e:
        if Path(folder).resolve().is_relative_to(BUNDLED):  # no user made it: the package itself is damaged
            raise CheckpointError(f"{e}. It is a model shipped inside tagcap, so the installed package is damaged: "
                                  f"reinstall it (pip install --force-reinstall tagcap)") from None
        raise


def _load_checkpoint(folder: Path) -> tuple[Decoder, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_weights

    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (expected {WEIGHTS} and {CONFIG} inside)")
    for name in (WEIGHTS, CONFIG):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}")
    config_bytes, weights = _read_consistently(folder)
    try:
        config = json.loads(config_bytes.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder / CONFIG}: unreadable checkpoint config ({e})") from None
    check_config(config, folder / CONFIG)
    recorded = config.get("files") or {}
    if WEIGHTS in recorded and hashlib.sha256(weights).hexdigest() != recorded[WEIGHTS]:
        raise CheckpointError(f"{folder / WEIGHTS}: its SHA-256 differs from the one config.json records: the "
                              "file was changed or comes from another checkpoint")
    for name, digest in recorded.items():  # other files (a tuned backbone) are read later by name
        if name not in (CONFIG, WEIGHTS) and not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}, which its config.json lists")
    try:
        spec = config["decoder"]
        decoder = create_decoder(spec["method"], spec["num_labels"], spec["feature_dim"], **spec["hparams"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG}: unreadable checkpoint config ({e})") from None
    try:
        state = load_weights(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{folder / WEIGHTS}: corrupt weights file ({e})") from None
    try:
        decoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not fit the configured decoder ({str(e)[:300]})") from None
    return decoder.eval(), config


def backbone_spec(folder: str | Path, config: dict, weights: str | None = None):
    """The BackboneSpec a checkpoint was trained with; a fine-tuned backbone's weights file is resolved
    inside the checkpoint folder. `weights` overrides (a user's own copy of the base weights)."""
    from tagcap.features.backbone import BackboneSpec

    spec = dict(config["backbone"]["spec"])
    if config["backbone"].get("tuned"):
        name = str(spec.get("weights"))
        inside = Path(folder) / name
        if os.path.isabs(name) or os.path.normpath(name).startswith("..") or not inside.resolve().is_relative_to(
                Path(folder).resolve()):
            raise CheckpointError(f"{Path(folder) / CONFIG}: 'backbone.spec.weights' {name!r} must name a file "
                                  "inside the checkpoint folder")
        digest = (config.get("files") or {}).get(name)
        if digest and inside.is_file() and file_sha256(inside) != digest:
            raise CheckpointError(f"{inside}: its SHA-256 differs from the one config.json records")
        spec["weights"] = str(inside)
    elif weights:
        spec["weights"] = weights
    return BackboneSpec(**spec)
