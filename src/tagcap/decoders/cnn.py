"""CNN baseline: dropout + a linear layer on pooled features, trained with a multi-label loss
(BCE, focal, ASL or the unsymmetrical loss of Salar & Ahmadi 2023)."""

from __future__ import annotations

import torch
from torch import nn

from tagcap.losses import get_loss
from tagcap.decoders.base import Decoder, DecoderOutput, register


@register("cnn")
class LinearHead(Decoder):
    feature_kind = "pooled"

    def __init__(self, num_labels: int, feature_dim: int, loss: str = "bce", dropout: float = 0.3,
                 loss_args: dict | None = None):
        hparams = {"loss": loss, "dropout": dropout, **({"loss_args": dict(loss_args)} if loss_args else {})}
        super().__init__(num_labels, feature_dim, **hparams)  # loss_args only when given: old configs read the same
        self.loss_fn = get_loss(loss, loss_args)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, num_labels)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))

    def loss(self, features, targets):
        return self.loss_fn(self.logits(features), targets)

    @torch.no_grad()
    def predict(self, features):
        return DecoderOutput(scores=torch.sigmoid(self.logits(features)))


@register("softmax")
class SoftmaxHead(Decoder):
    """A single-label classifier on pooled features: a linear layer and a softmax over the classes.

    What an ImageNet classifier's head is: the bundled `imagenet-classes` model is the
    `tf_efficientnet_lite2` weights' own 1,000-class layer in this form, so that its classes are tags
    like any other (scores are class probabilities, summing to 1; the rule picks the top k above a
    floor). Trained here, it takes multi-label targets as a distribution over the image's labels
    (cross-entropy against the normalised targets, as in Mahajan et al. 2018)."""

    feature_kind = "pooled"

    def __init__(self, num_labels: int, feature_dim: int, dropout: float = 0.0):
        super().__init__(num_labels, feature_dim, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, num_labels)

    def loss(self, features, targets):
        target = targets / targets.sum(1, keepdim=True).clamp(min=1)
        return -(target * torch.log_softmax(self.fc(self.dropout(features)), 1)).sum(1).mean()

    @torch.no_grad()
    def predict(self, features):
        return DecoderOutput(scores=torch.softmax(self.fc(self.dropout(features)), 1))
