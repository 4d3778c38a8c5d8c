"""Decoders that look at the spatial grid instead of the pooled vector.

- `attention-rnn`: the recurrent annotation decoder with soft (additive) attention over the grid
  cells at every step (`soft_attention.SoftAttention`, shared with Show-Attend-Tell), the attended context joining the label embedding as LSTM input (the
  seed repository's attention decoder, Show-Attend-Tell style); rare-first order.
- `label-attention`: label-wise attention pooling (Salar & Ahmadi 2024): every label has its own
  query that pools the grid, and its logit is read from its own pooled vector; trained with a
  multi-label loss (the unsymmetrical loss by default). We add the linear head on the mean
  feature as a residual, so the attention only has to learn what the global view misses.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tagcap.losses import get_loss
from tagcap.decoders.base import Decoder, DecoderOutput, register
from tagcap.decoders.recurrent import SequenceDecoder
from tagcap.decoders.soft_attention import MeanInitialState, SoftAttention, rename_legacy_keys


@register("attention-rnn")
class AttentionRNN(SequenceDecoder):
    feature_kind = "grid"
    # Kept small: projecting the 81 x 1280 grid dominates the cost of a CPU training step.
    context_dim = 256
    attention_dim = 128

    def input_dim(self):
        return self.embed_dim + self.context_dim

    def build(self):
        self.grid_proj = nn.Linear(self.feature_dim, self.context_dim)
        self.attention = SoftAttention(self.context_dim, self.hidden, self.attention_dim)
        self.initial = MeanInitialState(self.context_dim, self.hidden)
        rename_legacy_keys(self, {"att_grid": "attention.key", "att_h": "attention.query", "att_v": "attention.score",
                                  "init_h": "initial.h", "init_c": "initial.c"})

    def init_state(self, grid):
        g = torch.relu(self.grid_proj(self.drop(grid)))      # [B, HW, ctx]
        h, c = self.initial(g)
        return h, c, g, self.attention.keys(g)

    def step(self, tokens, state):
        h, c, g, keys = state
        context, _ = self.attention(h, g, keys)
        h, c = self.lstm(self.drop(torch.cat([self.embed(tokens), context], dim=1)), (h, c))
        return self.out(self.drop(h)), (h, c, g, keys)


@register("label-attention")
class LabelAttention(Decoder):
    feature_kind = "grid"

    def __init__(self, num_labels, feature_dim, attention_dim: int = 128, value_dim: int = 128,
                 loss: str = "unsym", dropout: float = 0.3, loss_args: dict | None = None):
        super().__init__(num_labels, feature_dim, attention_dim=attention_dim, value_dim=value_dim, loss=loss,
                         dropout=dropout, **({"loss_args": dict(loss_args)} if loss_args else {}))
        self.loss_fn = get_loss(loss, loss_args)
        self.drop = nn.Dropout(dropout)
        self.keys = nn.Linear(feature_dim, attention_dim)
        self.values = nn.Linear(feature_dim, value_dim)
        self.queries = nn.Parameter(torch.randn(num_labels, attention_dim) * attention_dim ** -0.5)
        self.label_w = nn.Parameter(torch.zeros(num_labels, value_dim))
        self.global_fc = nn.Linear(feature_dim, num_labels)

    def logits(self, grid):
        grid = self.drop(grid)
        att = torch.einsum("bnd,cd->bcn", self.keys(grid), self.queries) * self.queries.shape[1] ** -0.5
        pooled = torch.einsum("bcn,bnv->bcv", F.softmax(att, dim=-1), torch.relu(self.values(grid)))
        return (pooled * self.label_w).sum(-1) + self.global_fc(grid.mean(1))

    def loss(self, grid, targets):
        return self.loss_fn(self.logits(grid), targets)

    @torch.no_grad()
    def predict(self, grid):
        return DecoderOutput(scores=torch.sigmoid(self.logits(grid)))
