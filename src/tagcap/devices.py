"""Where models run: `--device auto|cpu|cuda[:N]`, the same words on every command and in the API."""

from __future__ import annotations

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


# --- the arithmetic a captioner decodes in ---------------------------------------------------------
PRECISIONS = ("float32", "bfloat16")


def native_bfloat16() -> bool:
    """Does this CPU do bfloat16 arithmetic in hardware (AVX512-BF16 or AMX)? Elsewhere bfloat16
    is emulated and slower than float32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, probe, lambda: False)()) for probe in ("_is_avx512_bf16_supported",
                                                                         "_is_amx_tile_supported"))


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
