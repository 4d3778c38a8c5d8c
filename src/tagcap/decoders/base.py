"""The decoder interface every method implements, and the registry that names them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class DecoderOutput:
    scores: torch.Tensor                      # [B, C] final label probabilities
    step_scores: torch.Tensor | None = None   # [B, T, C] per-step label scores (sequence decoders)
    step_labels: torch.Tensor | None = None   # [B, T] label index picked at each step (-1: stopped)
    emitted: torch.Tensor | None = None       # [B, C] bool: the labels a sequence decoder emitted
    sequences: list[list[int]] | None = None  # captioners: the word ids of each caption (no START/END)
    attention: list[torch.Tensor] | None = None  # captioners: [words + 1, HW] attention behind each word


class Decoder(nn.Module):
    """Base class. Subclasses set `feature_kind` ("pooled" [B, D] or "grid" [B, HW, D]),
    keep their constructor arguments in `self.hparams` (saved in checkpoints), and implement
    `loss` and `predict`."""

    feature_kind = "pooled"
    method = "base"
    task = "annotation"   # or "caption": then targets are word ids and num_labels the word vocabulary's size
    emits_labels = False  # True: `predict` gives the labels it emitted, so the "sequence" decision rule applies
    combines_views = False  # True: `predict` takes every view [B, V, ...] and combines them itself

    @classmethod
    def data_kwargs(cls, label_counts: list[int], longest: int) -> dict:
        """Constructor arguments only the training data can give (its label frequencies, its longest
        label list); a recipe's own `decoder:` values win over them. None by default."""
        return {}

    def __init__(self, num_labels: int, feature_dim: int, **hparams):
        super().__init__()
        self.num_labels = num_labels
        self.feature_dim = feature_dim
        self.hparams = dict(hparams)

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> DecoderOutput:
        raise NotImplementedError

    def validation_kwargs(self) -> dict:
        """Arguments for `predict` while ranking epochs on the validation split."""
        return {}

    def param_groups(self, lr: float, backbone_lr: float | None = None) -> list[dict]:
        """The optimizer's parameter groups: one, at `lr` (a trainable trunk adds its own, see finetune)."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def config(self) -> dict:
        return {"method": self.method, "num_labels": self.num_labels, "feature_dim": self.feature_dim,
                "hparams": self.hparams}


_REGISTRY: dict[str, type[Decoder]] = {}


def register(name: str) -> Callable[[type[Decoder]], type[Decoder]]:
    def deco(cls: type[Decoder]) -> type[Decoder]:
        cls.method = name
        _REGISTRY[name] = cls
        return cls

    return deco


def registered() -> list[str]:
    return sorted(_REGISTRY)


def decoder_class(method: str) -> type[Decoder]:
    if method not in _REGISTRY:
        from tagcap.errors import ConfigError

        raise ConfigError(f"unknown method {method!r}; known: {', '.join(registered())}")
    return _REGISTRY[method]


def decoder_arguments(cls: type[Decoder]) -> set[str]:
    """The hyper-parameters a decoder's constructor takes (besides num_labels and feature_dim), following
    `**kwargs` up to the base classes that receive them."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if klass is Decoder or not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names - {"num_labels", "feature_dim", "hparams"}


def check_decoder_arguments(method: str, hparams: dict, where: str = "decoder") -> None:
    """A ConfigError naming any key the decoder does not take, and listing those it does."""
    from tagcap.errors import ConfigError

    allowed = decoder_arguments(decoder_class(method))
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise ConfigError(f"{where}: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not "
                          f"an option of the {method!r} decoder; it takes {', '.join(sorted(allowed))}")


def create_decoder(method: str, num_labels: int, feature_dim: int, **hparams) -> Decoder:
    check_decoder_arguments(method, hparams)
    return decoder_class(method)(num_labels=num_labels, feature_dim=feature_dim, **hparams)
