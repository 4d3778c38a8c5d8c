"""What made a number: the machine, the commit and the library versions, recorded beside every result
and in every checkpoint."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from tagcap import __version__
from tagcap.devices import cpu_flags


def versions() -> dict:
    """What made a checkpoint: tagcap and the libraries its numbers depend on (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"tagcap": __version__}
    for package in ("torch", "timm", "lightning", "onnxruntime", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


# The instruction sets that decide how fast the int8 backbone and bfloat16 decoding run: two machines
# that both call themselves "AMD EPYC" (an AVX2-only one and an AVX-512 BF16 one) differ here.
SPEED_FEATURES = frozenset({"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"})


def source_commit(folder: Path) -> str | None:
    """The short commit of the git checkout that holds `folder`, with "+changes" when its tracked files
    differ from that commit: a number measured on uncommitted code says so instead of naming the commit
    before it. None outside a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=folder, timeout=5).stdout.strip() or None
        if commit and subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=folder, timeout=5).returncode == 1:
            commit += "+changes"
    except (OSError, subprocess.SubprocessError):
        commit = None
    return commit


def machine_info() -> dict:
    commit = source_commit(Path(__file__).parent)
    commit = commit or os.environ.get("TAGCAP_COMMIT")  # a copy of the tree without .git (a rented GPU machine)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": _torch().__version__,
            "platform": platform.platform(), "commit": commit}
    flags = cpu_flags()
    if flags is not None:
        info["cpu_features"] = sorted(flags & SPEED_FEATURES)
    if _torch().cuda.is_available():
        info["gpu"] = _torch().cuda.get_device_name()
    return info


def _torch():
    import torch  # imported on use: provenance is recorded by light tools too

    return torch
