"""argparse pieces shared by the `tagcap` commands (tagcap/cli.py) and the photo library's commands
(tagcap/library/commands.py): how a subcommand is registered, and the options that say how and where
the models run. Kept free of torch so that `tagcap --help` stays fast."""

from __future__ import annotations

import argparse

# how the backbone runs on the CPU; the same names as tagcap.features.backbone.ENGINES, which imports torch
ENGINES = ["auto", "onnx", "onnx-int8", "channels_last", "eager"]
VIEWS_HELP = "2 (default): the photo and its mirror image averaged; 1: twice as fast"
CALIBRATION_HELP = "with --engine onnx-int8: photos to calibrate the 8-bit backbone on"
RULE_HELP = "shown (default: few, calibrated; docs/tags.md) or model (the models' own)"
DEVICE_HELP = "auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda or cuda:N"


def parse_seeds(text: str) -> list[int]:
    """`--seeds`: 0,1,2 or 0-4 or both (0-2,5), each seed once. A ConfigError (a ValueError, so argparse
    takes this as a `type`) names the text otherwise."""
    from tagcap.errors import ConfigError

    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected numbers such as 0,1,2 or 0-4") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"--seeds {text!r}: each seed once")
    return seeds


def command(sub, name: str, func, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand that runs `func(args)`."""
    p = sub.add_parser(name, help=help, description=description)
    p.set_defaults(func=func)
    return p


def model_options(p, weights: bool = True, views_note: str = "") -> None:
    """How and where `predict`, `serve` and `index` run their models (`index` takes no --weights)."""
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="how the backbone runs (auto: fastest here; onnx: float32); docs/engines.md")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--calibration", default=None, metavar="DIR", help=CALIBRATION_HELP)
    if weights:
        p.add_argument("--weights", default=None, help="backbone weights file, if not the checkpoint's default")
    p.add_argument("--views", type=int, choices=[1, 2], default=2, help=VIEWS_HELP + views_note)
    p.add_argument("--rule", choices=["shown", "model"], default="shown", help=RULE_HELP)
