"""CNN-RNN (Wang et al. 2016): labels and images in one joint embedding space.

A 64-d label embedding feeds a 512-unit LSTM; the LSTM output and the image feature are each
projected into the label-embedding space and added; a label's score is the dot product of
that point with the label's *own* embedding (the same matrix that embeds the inputs), softmax
over labels plus END. Frequent-first order; beam search over prediction paths."""

import torch
from torch import nn

from tagcap.decoders.base import register
from tagcap.decoders.recurrent import SequenceDecoder


@register("cnn-rnn")
class CNNRNN(SequenceDecoder):
    def __init__(self, num_labels, feature_dim, embed_dim: int = 64, order: str = "frequent-first",
                 beam_width: int = 3, **kw):
        super().__init__(num_labels, feature_dim, embed_dim=embed_dim, order=order, beam_width=beam_width, **kw)

    def output_layer(self):
        return None  # a label's score is the dot product with its own input embedding (see `step`)

    def build(self):
        self.init_h = nn.Linear(self.feature_dim, self.hidden)
        self.proj_rnn = nn.Linear(self.hidden, self.embed_dim)
        self.proj_img = nn.Linear(self.feature_dim, self.embed_dim)

    def init_state(self, features):
        h = self.init_h(features)
        return h, torch.zeros_like(h), self.proj_img(self.drop(features))

    def step(self, tokens, state):
        h, c, image = state
        h, c = self.lstm(self.drop(self.embed(tokens)), (h, c))
        joint = torch.relu(self.proj_rnn(self.drop(h)) + image)
        logits = joint @ self.embed.weight[: self.num_labels + 1].t()  # labels + END share the input embedding
        return logits, (h, c, image)
