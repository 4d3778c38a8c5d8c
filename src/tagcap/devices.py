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
