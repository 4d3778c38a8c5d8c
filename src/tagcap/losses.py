"""Multi-label losses on logits [B, C] and 0/1 targets [B, C].

Reductions follow each loss's source: BCE and focal are means over elements, ASL is a sum
(as the official ASL code returns), the unsymmetrical loss is minus the mean. With Adam the
scale of a loss barely matters; the shape of its gradient does.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from tagcap.errors import ConfigError

EPS = 1e-8


def bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def focal(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) without the alpha weight: (1 - p_t)^gamma * BCE."""
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    return ((1 - p_t) ** gamma * ce).mean()


def asl(logits: torch.Tensor, targets: torch.Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
        clip: float = 0.05) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al. 2021), as the official AsymmetricLoss with
    disable_torch_grad_focal_loss=True: the focusing weight carries no gradient."""
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    p_neg = (1 - p + clip).clamp(max=1) if clip > 0 else 1 - p  # probability shifting for negatives
    loss = targets * torch.log(p.clamp(min=EPS)) + (1 - targets) * torch.log(p_neg.clamp(min=EPS))
    with torch.no_grad():
        pt = p * targets + p_neg * (1 - targets)
        gamma = gamma_pos * targets + gamma_neg * (1 - targets)
        weight = torch.pow(1 - pt, gamma)
    return -(loss * weight).sum()


def unsymmetrical(logits: torch.Tensor, targets: torch.Tensor, margin: float = 1.1, clip: float = 0.05,
                  gamma_neg: float = 4.0, gamma_pos: float = 3.0, switch: float = 0.25) -> torch.Tensor:
    """The unsymmetrical loss of Salar & Ahmadi (2023), with their constants as defaults:

    negatives: (1 - y) * p_m^4 * log(1 - p_m), p_m = max(sigmoid(x) - 0.05, 0);
    positives: p' = sigmoid(x - 1.1); log p' when p' >= 0.25, else (1 - p')^3 * log p';
    total = minus the mean over all elements.
    """
    targets = targets.to(logits.dtype)
    p_m = (torch.sigmoid(logits) - clip).clamp(min=0)
    neg = (1 - targets) * p_m.pow(gamma_neg) * torch.log((1 - p_m).clamp(min=EPS))
    p_pos = torch.sigmoid(logits - margin)
    log_p = F.logsigmoid(logits - margin)
    pos_term = torch.where(p_pos >= switch, log_p, (1 - p_pos).pow(gamma_pos) * log_p)
    pos = targets * pos_term
    return -(pos + neg).mean()


LOSSES = {"bce": bce, "focal": focal, "asl": asl, "unsym": unsymmetrical}


def loss_arguments(name: str) -> set[str]:
    """The hyper-parameters a named loss takes (beyond logits and targets)."""
    import inspect

    return set(list(inspect.signature(_named(name)).parameters)[2:])


def _named(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}") from None


def get_loss(name: str, args: dict | None = None):
    """The named loss with `args` (a recipe's `decoder.loss_args`, e.g. ASL's gamma_neg) bound, computed
    in float32 whatever the logits' dtype: under mixed precision the logits come in float16, where log(p)
    of a small p and the focusing powers underflow. An argument the loss does not take is a ConfigError
    naming it."""
    loss = _named(name)
    args = dict(args or {})
    unknown = sorted(set(args) - loss_arguments(name))
    if unknown:
        raise ConfigError(f"loss_args: {', '.join(map(repr, unknown))} not an argument of the {name!r} loss; it "
                          f"takes {', '.join(sorted(loss_arguments(name))) or 'none'}")

    @functools.wraps(loss)
    def in_float32(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss(logits.float(), targets, **args)

    return in_float32
