"""Soft additive attention over the cells of a feature grid, and the LSTM state taken from their
mean: written once, used by the attention RNN annotator (`attention-rnn`) and by Show-Attend-Tell.

Xu et al. 2015 (Show, Attend and Tell), eq. 4-6 and section 3.1.2, after Bahdanau et al. 2015:

    e_i   = w^T tanh(W_a a_i + W_h h_{t-1})        (SoftAttention.score / key / query)
    alpha = softmax_i(e)
    z_t   = sum_i alpha_i a_i

    h_0 = tanh(W_init_h mean_i a_i),  c_0 = tanh(W_init_c mean_i a_i)   (MeanInitialState)

The keys W_a a_i do not depend on the step: `keys` computes them once per image, and every step
(and every beam of that image) reuses them. Show-Attend-Tell's gate on z_t (beta, section 4.2.1)
stays in that decoder: the attention RNN has none.

Checkpoints written before this module existed named these weights `att_a`/`att_grid`, `att_h`,
`att_w`/`att_v`, `init_h`, `init_c` on the decoder itself; `rename_legacy_keys` maps them, so every
saved model (the bundled captioner among them) loads unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftAttention(nn.Module):
    def __init__(self, context_dim: int, hidden: int, attention_dim: int):
        super().__init__()
        # created in this order (key, query, score): a decoder's initial weights for a seed depend on it
        self.key = nn.Linear(context_dim, attention_dim)
        self.query = nn.Linear(hidden, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def keys(self, cells: torch.Tensor) -> torch.Tensor:
        """W_a a_i for the cells [B, N, context] -> [B, N, attention]: once per image."""
        return self.key(cells)

    def forward(self, h: torch.Tensor, cells: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The context z [B, context] and the weights alpha [B, N] for the state h [B, hidden]."""
        alpha = F.softmax(self.score(torch.tanh(keys + self.query(h).unsqueeze(1))).squeeze(-1), dim=1)
        return (alpha.unsqueeze(-1) * cells).sum(1), alpha


class MeanInitialState(nn.Module):
    def __init__(self, context_dim: int, hidden: int):
        super().__init__()
        self.h = nn.Linear(context_dim, hidden)
        self.c = nn.Linear(context_dim, hidden)

    def forward(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = cells.mean(1)
        return torch.tanh(self.h(mean)), torch.tanh(self.c(mean))


def rename_legacy_keys(module: nn.Module, renames: dict[str, str]) -> None:
    """Load state dicts that use the names of `renames` ({old prefix: new prefix}) into `module`."""

    def hook(state_dict, prefix, *_):
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            for old, new in renames.items():
                if rest.startswith(old + "."):
                    state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                    break

    module._register_load_state_dict_pre_hook(hook)
