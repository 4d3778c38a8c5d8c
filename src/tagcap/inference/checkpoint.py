"""Reading checkpoints: a folder with model.safetensors and config.json, checked key by key before any
weights are trusted. Nothing pickled is ever loaded. Writing them is training's job
(`tagcap.train.checkpoint.save_checkpoint`); reading lives here so that tagging never imports training."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from pathlib import Path

from tagcap.errors import CheckpointError
from tagcap.hashing import file_sha256
from tagcap.decoders import create_decoder
from tagcap.decoders.base import Decoder

WEIGHTS, CONFIG = "model.safetensors", "config.json"
FORMAT = "tagcap-checkpoint/2"  # what tagcap writes: `files` holds every file's SHA-256, weights included
UNHASHED_FORMAT = "tagcap-checkpoint/1"  # written before that: read, its hashes checked where it has them,
# and without them loaded with a warning (a /2 checkpoint without them is refused: someone removed them)
BOUNDS = {"decoder.num_labels": (1, 1_000_000), "decoder.feature_dim": (1, 65_536),
          "backbone.spec.input_size": (16, 4_096)}  # beyond these a config allocates gigabytes, or nothing at all
SPEC_KEYS = {"name", "weights", "input_size", "pool_blocks"}  # features.backbone.BackboneSpec's fields


def read_config(checkpoint: str | Path) -> dict:
    """A checkpoint folder's config.json as a JSON object (not checked further); a CheckpointError
    naming the file when the folder, the file or its JSON is not one."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise CheckpointError(f"{checkpoint}: not a checkpoint folder (expected {WEIGHTS} and {CONFIG} inside)")
    try:
        config = json.loads((folder / CONFIG).read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG}: not a readable checkpoint config ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / CONFIG}: expected a JSON object, found a {type(config).__name__}")
    return config


def checkpoint_task(checkpoint: str | Path) -> str:
    """"annotation" or "caption", read from the checkpoint's config (weights not loaded)."""
    task = read_config(checkpoint).get("task", "annotation")
    if task not in ("annotation", "caption"):
        raise CheckpointError(f"{Path(checkpoint) / CONFIG}: unknown 'task' {task!r} (annotation, caption)")
    return task


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
    if fmt not in (FORMAT, UNHASHED_FORMAT):
        raise CheckpointError(f"{where}: 'format' is {fmt!r}; this tagcap reads {FORMAT!r} and {UNHASHED_FORMAT!r} "
                              "(a checkpoint from another tagcap version, or not a tagcap checkpoint)")
    files = config.get("files")
    if files is not None or fmt == FORMAT:
        files = _require(config, "files", dict, where)
        bad = next((k for k, v in files.items() if not (isinstance(v, str) and len(v) == 64 and
                                                         all(c in "0123456789abcdef" for c in v))), None)
        if bad is not None:
            raise CheckpointError(f"{where}: 'files'[{bad!r}] is not a SHA-256 (64 hexadecimal digits)")
        if WEIGHTS not in files:
            raise CheckpointError(f"{where}: 'files' has no SHA-256 for {WEIGHTS}, so the weights cannot be checked")
    for key, kind in (("decoder.method", str), ("decoder.num_labels", int), ("decoder.feature_dim", int),
                      ("decoder.hparams", dict), ("backbone.spec", dict), ("backbone.weights", str)):
        _require(config, key, kind, where)
    spec = config["backbone"]["spec"]
    extra = sorted(set(spec) - SPEC_KEYS, key=str)
    if extra:
        raise CheckpointError(f"{where}: 'backbone.spec' has unknown key(s) {', '.join(map(repr, extra))}; "
                              f"known: {', '.join(sorted(SPEC_KEYS))}")
    _require(config, "backbone.spec.name", str, where)
    for key in ("weights", "input_size"):
        if spec.get(key) is not None:
            _require(config, f"backbone.spec.{key}", str if key == "weights" else int, where)
    blocks = spec.get("pool_blocks")
    if blocks is not None and not (isinstance(blocks, list) and all(isinstance(b, str) for b in blocks)):
        raise CheckpointError(f"{where}: 'backbone.spec.pool_blocks' must be a list of module names")
    for key, (low, high) in BOUNDS.items():
        value = _require(config, key, int, where) if key.startswith("decoder") else spec.get("input_size")
        if value is not None and not low <= value <= high:
            raise CheckpointError(f"{where}: {key!r} is {value}, outside {low:,}-{high:,}")
    task = config.get("task", "annotation")
    if task == "caption":
        _require(config, "words", dict, where)
    elif task == "annotation":
        labels = _require(config, "vocabulary.labels", list, where)
        if not all(isinstance(x, str) for x in labels):
            raise CheckpointError(f"{where}: 'vocabulary.labels' must be a list of strings")
        if len(labels) != config["decoder"]["num_labels"]:
            raise CheckpointError(f"{where}: {len(labels)} labels in 'vocabulary.labels' for a decoder of "
                                  f"'decoder.num_labels' {config['decoder']['num_labels']}")
        kind = _require(config, "decision.kind", str, where)
        rule = config["decision"]
        if kind == "threshold":
            _score(_require(config, "decision.t", (int, float), where), "decision.t", where)
        elif kind == "mcc":
            thresholds = _require(config, "decision.thresholds", list, where)
            for i, t in enumerate(thresholds):
                if not isinstance(t, (int, float)) or isinstance(t, bool):
                    raise CheckpointError(f"{where}: 'decision.thresholds'[{i}] is {t!r}, not a number")
                _score(t, f"decision.thresholds'[{i}", where)
            if len(thresholds) != len(labels):
                raise CheckpointError(f"{where}: {len(thresholds)} thresholds for {len(labels)} labels")
        elif kind == "top-k":
            k = _require(config, "decision.k", int, where)
            if k < 1:
                raise CheckpointError(f"{where}: 'decision.k' is {k}; at least 1")
            if rule.get("floor") is not None:
                _score(_require(config, "decision.floor", (int, float), where), "decision.floor", where)
        elif kind != "sequence":
            raise CheckpointError(f"{where}: unknown 'decision.kind' {rule['kind']!r} (threshold, mcc, top-k, sequence)")
    else:
        raise CheckpointError(f"{where}: unknown 'task' {task!r} (annotation, caption)")


def _score(value, key: str, where: Path) -> None:
    """A threshold on scores: a number from 0 to 1 (NaN, which no score reaches, is refused)."""
    if not 0.0 <= value <= 1.0:
        raise CheckpointError(f"{where}: '{key}' is {value!r}; a threshold is a number from 0 to 1")


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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{folder / CONFIG}: unreadable checkpoint config ({e})") from None
    check_config(config, folder / CONFIG)
    recorded = config.get("files") or {}
    if not recorded:  # a checkpoint of the first format, saved before tagcap recorded hashes
        import warnings

        warnings.warn(f"{folder}: a checkpoint from before tagcap recorded SHA-256 hashes ({UNHASHED_FORMAT}); its "
                      "weights cannot be checked. Saving it again with this tagcap adds them", stacklevel=3)
    if WEIGHTS in recorded and hashlib.sha256(weights).hexdigest() != recorded[WEIGHTS]:
        raise CheckpointError(f"{folder / WEIGHTS}: its SHA-256 differs from the one config.json records: the "
                              "file was changed or comes from another checkpoint")
    for name, digest in recorded.items():  # other files (a tuned backbone) are read later by name
        if name not in (CONFIG, WEIGHTS) and not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}, which its config.json lists")
    try:
        state = load_weights(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{folder / WEIGHTS}: corrupt weights file ({e})") from None
    spec = config["decoder"]
    # built first without memory (torch's meta device) and compared with the weights' shapes, so that a
    # config asking for a huge decoder is refused before it allocates anything
    empty = _decoder(folder, spec, device="meta")
    wrong = _misfits(empty.state_dict(), state)
    if wrong:
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not fit the configured decoder ({wrong})")
    decoder = _decoder(folder, spec)
    try:
        decoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not fit the configured decoder ({str(e)[:300]})") from None
    return decoder.eval(), config


def _decoder(folder: Path, spec: dict, device: str | None = None) -> Decoder:
    import torch

    try:
        with torch.device(device) if device else nullcontext():
            return create_decoder(spec["method"], spec["num_labels"], spec["feature_dim"], **spec["hparams"])
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError, NotImplementedError) as e:
        raise CheckpointError(f"{folder / CONFIG}: unreadable checkpoint config ({str(e)[:300]})") from None


def _misfits(expected: dict, found: dict) -> str:
    """What differs between the decoder's tensors and the file's (names and shapes), or ''."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k}: {tuple(found[k].shape)} in the file, {tuple(expected[k].shape)} configured"
              for k in sorted(set(expected) & set(found)) if tuple(found[k].shape) != tuple(expected[k].shape)]
    parts = ([f"missing {', '.join(missing[:5])}"] if missing else []) + \
            ([f"unexpected {', '.join(unexpected[:5])}"] if unexpected else []) + shapes[:5]
    return "; ".join(parts)


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
