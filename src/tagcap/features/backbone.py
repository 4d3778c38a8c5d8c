"""A timm backbone that yields a pooled vector and a spatial grid per image, on one of three engines.

Engines give the same features (checked: max abs difference < 1e-3 against eager) at
different speeds on a CPU: `onnx` (the network exported once and run by onnxruntime, the
fastest here), `channels_last` (eager PyTorch with NHWC memory layout) and `eager`. A fourth,
`onnx-int8`, is the ONNX export quantized to 8 bits (features/quantize.py): faster, with features
close to (not equal to) float32's, so its feature caches are kept apart.

On a CUDA device the network runs through onnxruntime's CUDA provider where that is installed
(`onnxruntime-gpu`), else through PyTorch with channels-last memory and float16 autocast; the
features come back as float32 numpy arrays either way. The CPU stays the default.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tagcap.errors import TagcapError
from tagcap.features.weights import is_lukemelas, map_lukemelas_to_timm, offline_weights_path, read_state_dict
from tagcap.hashing import file_sha256

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "tf_efficientnet_lite2"
ENGINES = ("auto", "onnx", "onnx-int8", "channels_last", "eager")
ONNX_TOLERANCE = 1e-3


def default_cache_root() -> Path:
    return Path(os.environ.get("TAGCAP_CACHE", Path.home() / ".cache" / "tagcap"))


class PooledAndGrid(nn.Module):
    """Wraps a timm model: forward_features -> (global average pool [B,D], grid [B,H*W,D]).

    With `pool_blocks` (module names such as "blocks.4"), the global average of each of those
    modules' outputs is appended to the pooled vector, in the order given: multi-level features.
    On Corel-5k blocks 4 and 5 raise validation mAP a little but not per-label F1
    (benchmarks/README.md). The grid stays the last layer's. Forward hooks keep this generic over
    timm models and are traced by the ONNX export."""

    def __init__(self, model: nn.Module, pool_blocks: tuple[str, ...] = ()):
        super().__init__()
        self.model = model
        self.pool_blocks = tuple(pool_blocks)
        modules = dict(model.named_modules())
        unknown = [n for n in self.pool_blocks if n not in modules or not n]
        if unknown:
            top = sorted(n for n in modules if n.count(".") <= 1 and n)[:40]
            raise TagcapError(f"--pool-blocks: {unknown[0]!r} is not a module of this backbone; "
                              f"names look like {', '.join(top)}")
        self._outputs: dict[str, torch.Tensor] = {}
        for name in self.pool_blocks:
            modules[name].register_forward_hook(self._keeper(name))

    def _keeper(self, name: str):
        def keep(module, inputs, output):
            self._outputs[name] = output
        return keep

    def forward(self, x):
        self._outputs = {}
        grid = self.model.forward_features(x)
        pooled = [grid.mean(dim=(2, 3))]
        for name in self.pool_blocks:
            out = self._outputs.get(name)
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                raise TagcapError(f"--pool-blocks: {name!r} does not give a [B, C, H, W] feature map in "
                                  "forward_features; pick a block of the network's trunk")
            pooled.append(out.mean(dim=(2, 3)))
        return torch.cat(pooled, 1), grid.flatten(2).transpose(1, 2)


def input_config(model: nn.Module, spec: "BackboneSpec") -> tuple[int, tuple, tuple]:
    """(input side, mean, std) for a timm model: the spec's size if given, else the model's own."""
    cfg = model.pretrained_cfg
    return (int(spec.input_size or cfg["input_size"][-1]), tuple(float(x) for x in cfg["mean"]),
            tuple(float(x) for x in cfg["std"]))


def with_flips(batch: np.ndarray) -> np.ndarray:
    """The batch followed by its horizontal flips: one forward pass makes both cached views."""
    return np.concatenate([batch, batch[:, :, :, ::-1]])


def as_views(out: np.ndarray, b: int) -> np.ndarray:
    """Outputs for `with_flips(batch)` ([2B, ...]) as [B, 2 views, ...]."""
    return np.stack([out[:b], out[b:]], axis=1)


@dataclass
class BackboneSpec:
    name: str = DEFAULT_BACKBONE
    weights: str = "auto"       # auto | hub | random | a file path
    input_size: int | None = None  # None: the model's own
    pool_blocks: tuple[str, ...] = ()  # earlier modules whose pooled outputs join the pooled vector

    def __post_init__(self):
        self.pool_blocks = tuple(self.pool_blocks or ())

    def blocks_tag(self) -> str:
        """The pooled blocks as a file-name suffix (feature cache, ONNX export); empty without any."""
        return "-pool-" + "+".join(self.pool_blocks) if self.pool_blocks else ""

    def blocks_identity(self) -> list[str] | None:
        """The pooled blocks as a cache manifest records them: None (not []) without any, so caches
        written before the field existed still match."""
        return list(self.pool_blocks) or None

    def to_dict(self):
        out = {"name": self.name, "weights": self.weights, "input_size": self.input_size}
        if self.pool_blocks:  # absent otherwise, so configs written before it read the same
            out["pool_blocks"] = list(self.pool_blocks)
        return out


def resolve_weights(spec: BackboneSpec) -> str:
    """"hub", "random", or the path of a weights file ("auto" picks the offline package if there is one)."""
    weights = spec.weights or "auto"
    if weights == "auto":
        weights = str(offline_weights_path(spec.name) or "hub")
    return weights


def weights_identity(spec: BackboneSpec) -> str | None:
    """The identity a feature cache records for these weights, known without building the model
    (None for hub weights, whose identity is known only once loaded)."""
    weights = resolve_weights(spec)
    if weights == "hub":
        return None
    if weights == "random":
        return "random-init-seed0"
    return f"sha256:{file_sha256(Path(weights))}" if Path(weights).is_file() else None


def build_timm_model(spec: BackboneSpec) -> tuple[nn.Module, str]:
    """Create the timm model and load its weights; returns (model, weights identity)."""
    import timm

    weights = resolve_weights(spec)
    if weights == "hub":
        try:
            model = timm.create_model(spec.name, pretrained=True, num_classes=0)
        except Exception as e:
            raise TagcapError(f"could not load pretrained weights for {spec.name!r} from the hub ({e}). "
                              "Offline? Pass --weights FILE (.safetensors or .pth), or use the offline "
                              f"default {DEFAULT_BACKBONE}.") from None
        return model.eval(), f"hub:{model.pretrained_cfg.get('hf_hub_id') or spec.name}"
    try:
        with torch.random.fork_rng(devices=[]):  # "random" weights: the same ones every time, no global side effect
            torch.manual_seed(0)
            model = timm.create_model(spec.name, pretrained=False)
    except Exception as e:
        raise TagcapError(f"unknown backbone {spec.name!r} ({e}); any timm model name works") from None
    if weights == "random":
        model.reset_classifier(0)
        return model.eval(), "random-init-seed0"
    path = Path(weights)
    sd = read_state_dict(path)
    if is_lukemelas(sd):
        sd = map_lukemelas_to_timm(sd, model)
    head = model.pretrained_cfg.get("classifier") or "classifier"
    if not any(k.startswith(head + ".") for k in sd):
        model.reset_classifier(0)  # a feature extractor's weights (e.g. a fine-tuned backbone): no ImageNet head
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise TagcapError(f"{path}: weights do not fit {spec.name}: {str(e)[:500]}") from None
    model.reset_classifier(0)
    return model.eval(), f"sha256:{file_sha256(path)}"


class Backbone:
    """Image batch (numpy NCHW float32, already normalised) -> pooled [B,D], grid [B,HW,D]."""

    def __init__(self, spec: BackboneSpec | None = None, engine: str = "auto", cache_root: Path | None = None,
                 device=None):
        spec = spec or BackboneSpec()
        self.device = torch.device(device or "cpu")
        self.spec = spec
        model, self.weights_id = build_timm_model(spec)
        self.input_size, self.mean, self.std = input_config(model, spec)
        self.module = PooledAndGrid(model, spec.pool_blocks).eval()
        with torch.inference_mode():
            pooled, grid = self.module(torch.zeros(1, 3, self.input_size, self.input_size))
        self.feature_dim = int(pooled.shape[1])
        self.grid_dim = int(grid.shape[2])  # the last layer's width; below feature_dim with pool_blocks
        self.grid_cells = int(grid.shape[1])
        self.cache_root = Path(cache_root or default_cache_root())
        self.engine = "eager"
        self.quantized = None  # the calibration set's identity, with onnx-int8
        self._session = None
        self._select_engine(engine)
        if not self.engine.startswith("onnx"):
            self.module = self.module.to(self.device)

    # -- engines -----------------------------------------------------------------------------
    def _select_engine(self, engine: str) -> None:
        if engine not in ENGINES:
            raise TagcapError(f"unknown engine {engine!r}; choose from {ENGINES}")
        if engine == "onnx-int8":
            import onnxruntime as ort

            from tagcap.features.quantize import calibration_set, int8_source, quantized_model, warn_unfused_int8

            if self.device.type != "cpu":
                raise TagcapError("the onnx-int8 engine runs on the CPU; leave out --device or use --device cpu")
            warn_unfused_int8()
            self.quantized, shipped = int8_source(self.spec.name, self.weights_id, self.input_size,
                                                  self.spec.pool_blocks)
            if shipped:
                try:
                    self._session = self._make_session(ort, shipped, int8=True)
                except Exception as e:  # noqa: BLE001 - onnxruntime's own errors; no user made this file
                    raise TagcapError(f"{shipped}: cannot be loaded ({str(e).splitlines()[0][:200]}). It ships "
                                      f"inside tagcap, so the installed package is damaged: reinstall it (pip "
                                      f"install --force-reinstall tagcap)") from None
            else:
                self._session = self._cached_session(ort, lambda: quantized_model(
                    self._onnx_path(), self, calibration_set()[0], self.quantized), int8=True)
            self.engine = engine
            return
        if engine in ("auto", "onnx"):
            try:
                self._session = self._onnx_session()
                self.engine = "onnx"
                return
            except Exception as e:  # missing onnxruntime, export failure, or features that differ
                if engine == "onnx":
                    raise TagcapError(f"ONNX engine unavailable: {e}") from None
                if self.device.type == "cpu":  # on a GPU without onnxruntime-gpu, torch is the expected path
                    log.warning("ONNX engine unavailable (%s); using channels_last PyTorch", e)
                engine = "channels_last"
        if engine == "channels_last":
            self.module = self.module.to(memory_format=torch.channels_last)
        self.engine = engine

    def _onnx_session(self):
        import onnxruntime as ort

        if self.device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise TagcapError("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)")
        return self._cached_session(ort, self._onnx_path)

    def _cached_session(self, ort, made, int8: bool = False):
        """A session for the model file `made()` returns, which makes it in the cache when it is missing.
        A cached file that no longer loads (damaged on disk since: a bad sector, a copy cut short) is
        said, made again and loaded once more."""
        path = made()
        try:
            return self._make_session(ort, path, int8=int8)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own errors (INVALID_PROTOBUF, ...)
            log.warning("%s cannot be loaded (%s); making it again", path, str(e).splitlines()[0][:200])
            path.unlink(missing_ok=True)
            return self._make_session(ort, made(), int8=int8)

    def _onnx_path(self) -> Path:
        """The network exported to ONNX once (in the cache root), kept only when its features match eager's."""
        key = f"{self.spec.name}-{self.weights_id.replace(':', '-')[:40]}-{self.input_size}{self.spec.blocks_tag()}"
        path = self.cache_root / "onnx" / f"{key}.onnx"
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(self.module, (torch.zeros(2, 3, self.input_size, self.input_size),), str(tmp),
                                  input_names=["images"], output_names=["pooled", "grid"],
                                  dynamic_axes={"images": {0: "batch"}, "pooled": {0: "batch"}, "grid": {0: "batch"}},
                                  opset_version=17, dynamo=False)
            self._check_onnx(self.session_for(tmp))
            tmp.replace(path)  # only a verified export is kept
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def session_for(self, path: Path, int8: bool = False):
        """An onnxruntime CPU session for a model file, with this process's thread count. `int8`: an
        8-bit model run as the onnx-int8 engine runs it (`quantize.int8_session_options`); without
        it, onnxruntime's own kernels run it, whatever this CPU's 8-bit sums do."""
        import onnxruntime as ort

        return self._make_session(ort, path, cpu=True, int8=int8)

    def _make_session(self, ort, path, cpu: bool = False, int8: bool = False):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.log_severity_level = 3
        if int8:
            from tagcap.features.quantize import int8_session_options

            int8_session_options(ort, opts)
        providers = (["CPUExecutionProvider"] if cpu or self.device.type == "cpu" else
                     [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"])
        return ort.InferenceSession(str(path), opts, providers=providers)

    def _check_onnx(self, session) -> None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 3, self.input_size, self.input_size)).astype(np.float32)
        with torch.inference_mode():
            ref = [t.numpy() for t in self.module(torch.from_numpy(x))]
        got = session.run(None, {"images": x})
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
        if diff >= ONNX_TOLERANCE:
            raise TagcapError(f"ONNX features differ from eager by {diff:.2e} (>= {ONNX_TOLERANCE})")

    # -- forward -----------------------------------------------------------------------------
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.engine.startswith("onnx"):
            pooled, grid = self._session.run(None, {"images": batch})
            return pooled, grid
        x = torch.from_numpy(batch).to(self.device)
        if self.engine == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=self.device.type == "cuda"):
            pooled, grid = self.module(x)
        return pooled.float().cpu().numpy(), grid.float().contiguous().cpu().numpy()

    def views(self, batch: np.ndarray, flips: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Each image and its horizontal flip in one forward pass: pooled [B, 2, D], grid [B, 2, HW, D]
        (the view order of the feature cache). `flips=False`: the original view alone ([B, 1, ...]),
        half the work, for tagging where speed matters more than test-time augmentation."""
        if not flips:
            pooled, grid = self(batch)
            return pooled[:, None], grid[:, None]
        pooled, grid = self(with_flips(batch))
        return as_views(pooled, len(batch)), as_views(grid, len(batch))

    # -- what the feature cache stores -------------------------------------------------------
    def cache_outputs(self, grid: bool = True) -> dict[str, tuple[tuple[int, ...], type]]:
        """Per image: pooled [V, D] float32 and, if asked, grid [V, HW, D] float16 (V = 2 views)."""
        out = {"pooled": ((2, self.feature_dim), np.float32)}
        if grid:
            out["grid"] = ((2, self.grid_cells, self.grid_dim), np.float16)
        return out

    def cache_arrays(self, batch: np.ndarray, grid: bool = True) -> dict[str, np.ndarray]:
        pooled, cells = self.views(batch)
        return {"pooled": pooled, "grid": cells} if grid else {"pooled": pooled}

    def cache_facts(self) -> dict:
        return {"feature_dim": self.feature_dim, "grid_cells": self.grid_cells, "grid_dim": self.grid_dim}

    def describe(self) -> dict:
        return {"name": self.spec.name, "weights": self.weights_id, "input_size": self.input_size,
                "mean": list(self.mean), "std": list(self.std), "feature_dim": self.feature_dim,
                "grid_cells": self.grid_cells, "grid_dim": self.grid_dim, "pool_blocks": list(self.spec.pool_blocks)}
