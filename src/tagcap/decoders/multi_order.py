"""Multi-order RNN (Dutta et al. 2020).

The LSTM state starts from a concept layer's probabilities, h0, c0 = tanh(W p + b); START is
the first input, then the argmax of the previous step is fed back (no teacher forcing). The
target at step t is every true label except the one picked at step t-1 (the paper; option
mask="cumulative" masks every earlier pick, as the official code does). Loss: sigmoid
cross-entropy summed over labels and steps. Inference: T steps, label-wise max over steps of
the logits, sigmoid, threshold 0.5.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tagcap.decoders.base import Decoder, DecoderOutput, register
from tagcap.decoders.recurrent import ConceptLayer


def step_targets(targets: torch.Tensor, picks: torch.Tensor, mask: str = "paper") -> torch.Tensor:
    """[B, C] truth and [B, T] picks -> [B, T, C] per-step targets."""
    b, t_steps = picks.shape
    out = targets.unsqueeze(1).repeat(1, t_steps, 1).clone()
    removed = torch.zeros_like(targets, dtype=torch.bool)
    for t in range(1, t_steps):
        prev = torch.zeros_like(removed).scatter_(1, picks[:, t - 1 : t], True)
        removed = removed | prev if mask == "cumulative" else prev
        out[:, t] = out[:, t].masked_fill(removed, 0)
    return out


@register("multi-order")
class MultiOrderRNN(Decoder):
    feature_kind = "pooled"

    def __init__(self, num_labels, feature_dim, hidden: int = 512, embed_dim: int = 256, steps: int = 5,
                 mask: str = "paper", dropout: float = 0.3, concept_loss_weight: float = 1.0):
        super().__init__(num_labels, feature_dim, hidden=hidden, embed_dim=embed_dim, steps=steps, mask=mask,
                         dropout=dropout, concept_loss_weight=concept_loss_weight)
        if mask not in ("paper", "cumulative"):
            raise ValueError("mask must be 'paper' or 'cumulative'")
        self.steps, self.mask, self.concept_loss_weight = steps, mask, concept_loss_weight
        self.concept = ConceptLayer(feature_dim, num_labels)
        self.init = nn.Linear(num_labels, 2 * hidden)
        self.embed = nn.Embedding(num_labels + 1, embed_dim)  # the last id is START
        self.lstm = nn.LSTMCell(embed_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels)

    def run(self, features):
        h, c = torch.tanh(self.init(self.concept.probs(features))).chunk(2, dim=1)
        token = torch.full((len(features),), self.num_labels, dtype=torch.long, device=features.device)
        logits, picks = [], []
        for _ in range(self.steps):
            h, c = self.lstm(self.drop(self.embed(token)), (h, c))
            logit = self.out(self.drop(h))
            token = logit.detach().argmax(1)
            logits.append(logit)
            picks.append(token)
        return torch.stack(logits, 1), torch.stack(picks, 1)

    def loss(self, features, targets):
        logits, picks = self.run(features)
        goal = step_targets(targets.to(logits.dtype), picks, self.mask)
        rnn = F.binary_cross_entropy_with_logits(logits, goal, reduction="sum") / len(features)
        return rnn + self.concept_loss_weight * self.concept.loss(features, targets) * self.num_labels

    @torch.no_grad()
    def predict(self, features):
        logits, picks = self.run(features)
        return DecoderOutput(scores=torch.sigmoid(logits.max(1).values), step_scores=torch.sigmoid(logits),
                             step_labels=picks)
