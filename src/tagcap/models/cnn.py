"""CNN baseline: dropout + a linear layer on pooled features, trained with a multi-label loss
(BCE, focal, ASL or the unsymmetrical loss of Salar & Ahmadi 2023)."""

from __future__ import annotations

import torch
from torch import nn

from tagcap.losses import get_loss
from tagcap.models.base import Decoder, DecoderOutput, register


@register("cnn")
class LinearHead(Decoder):
    feature_kind = "pooled"

    def __init__(self, num_labels: int, feature_dim: int, loss: str = "bce", dropout: float = 0.3):
        super().__init__(num_labels, feature_dim, loss=loss, dropout=dropout)
        self.loss_fn = get_loss(loss)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, num_labels)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))

    def loss(self, features, targets):
        return self.loss_fn(self.logits(features), targets)

    @torch.no_grad()
    def predict(self, features):
        return DecoderOutput(scores=torch.sigmoid(self.logits(features)))
