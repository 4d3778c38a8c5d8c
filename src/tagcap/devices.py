"""Where models run: `--device auto|cpu|cuda[:N]`, the same words on every command and in the API."""

from __future__ import annotations

import functools

from tagcap.errors import ConfigError

DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | None = "auto"):
    """A torch.device from "auto" (the first GPU when torch sees one, else the CPU), "cpu", "cuda" or
    "cuda:N"; a ConfigError naming the option for anything else or a GPU that is not there."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2] or "0"
        if not index.isdigit():
            raise ConfigError(f"--device {device!r}: expected {DEVICES}")
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: torch sees no CUDA GPU here (use --device cpu, or auto)")
        if int(index) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: there are {torch.cuda.device_count()} CUDA GPU(s), "
                              f"numbered from 0")
        return torch.device(f"cuda:{index}")
    raise ConfigError(f"--device {device!r}: expected {DEVICES}")


# --- the 8-bit arithmetic of this CPU --------------------------------------------------------------
# x86 instruction sets that sum 8-bit products in 32-bit lanes (onnxruntime's VNNI and AMX kernels)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_arithmetic() -> str:
    """How this CPU runs onnxruntime's 8-bit convolutions, which decides how the int8 backbone runs
    here and whether `auto` picks it:

    - "vnni": x86 with VNNI or AMX, 8-bit products summed in 32 bits. The shipped int8 backbone was
      made and measured on such a CPU (an AVX-512 VNNI AMD EPYC): pooled cosine 0.994 to float32's.
    - "saturating": x86 without them. The AVX2 kernels add pairs of uint8 x int8 products in 16-bit
      lanes that saturate: on an AVX2-only AMD EPYC the shipped model's pooled features had a mean
      cosine of 0.957 to float32's (minimum 0.72) on the 499 Corel-5k test photos, 7-bit weights
      (`reduce_range`) 0.977, both below the 0.99 the int8 engine promises, for 1.27x the speed
      (benchmarks/int8_cpu.py, results/int8-saturating.json). There the engine runs the model
      unfused instead (`quantize.int8_session_options`).
    - "other": not x86 (ARM's 8-bit dot products do not saturate); unmeasured.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i386", "i686"):
        return "other"
    return "vnni" if _x86_vnni() else "saturating"


def _x86_vnni() -> bool:
    flags = cpu_flags()  # Linux names every extension, AVX-VNNI included; torch's probes cover AVX512-VNNI and AMX
    if flags is not None:
        return bool(VNNI_FLAGS & flags)
    return _torch_cpu_has("_is_vnni_supported", "_is_amx_tile_supported")


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The instruction-set flags Linux lists for this CPU (/proc/cpuinfo), or None where there is no
    such file. Read once per process."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _torch_cpu_has(*probes: str) -> bool:
    """Whether any of torch's private CPU probes (`torch.cpu._is_..._supported`) says yes; False for a
    probe this torch lacks."""
    import torch

    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, probe, lambda: False)()) for probe in probes)


# --- the arithmetic a captioner decodes in ---------------------------------------------------------
PRECISIONS = ("float32", "bfloat16")


def native_bfloat16() -> bool:
    """Does this CPU do bfloat16 arithmetic in hardware (AVX512-BF16 or AMX)? Elsewhere bfloat16
    is emulated and slower than float32."""
    return _torch_cpu_has("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def decoding_precision(task: str, device, engine: str, chosen_engine: str) -> str:
    """What a loaded model decodes in: bfloat16 for a captioner on a CPU with bfloat16 arithmetic
    when `--engine auto` picked the shipped 8-bit backbone, float32 otherwise (every explicit engine,
    every annotator). The captioner's beam search is most of what `tagcap index` adds to the
    backbone: bfloat16 ran it 1.5x faster on one thread (298 of 320 captions unchanged), and a
    train-only captioner lost 0.07 BLEU-4 and no CIDEr-D on Flickr8k dev, inside the rule fixed
    before measuring (benchmarks/decoder_precision.py, results/decoder-precision.json)."""
    cpu = str(device).split(":")[0] == "cpu"
    fast = task == "caption" and cpu and engine == "auto" and chosen_engine == "onnx-int8"
    return "bfloat16" if fast and native_bfloat16() else "float32"


def decoding(precision: str, device):
    """The context to decode in: `torch.autocast` to bfloat16 (matrix products; the decoder keeps its
    state and log-probabilities in float32), or nothing for float32."""
    import contextlib

    import torch

    if precision == "float32":
        return contextlib.nullcontext()
    if precision != "bfloat16":
        raise ConfigError(f"decoder precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
