"""SR-CNN-RNN (Liu et al. 2017): as RIA, but the LSTM starts from a concept layer's label
probabilities (a CNN baseline trained with BCE) instead of the raw feature; no gradient flows
from the LSTM into the concept layer."""

from torch import nn

from tagcap.decoders.base import register
from tagcap.decoders.recurrent import ConceptLayer, SequenceDecoder


@register("sr-cnn-rnn")
class SRCNNRNN(SequenceDecoder):
    def build(self):
        self.concept = ConceptLayer(self.feature_dim, self.num_labels)
        self.init_h = nn.Linear(self.num_labels, self.hidden)

    def init_state(self, features):
        h = self.init_h(self.concept.probs(features))
        return h, h.new_zeros(h.shape)

    def extra_loss(self, features, targets):
        return self.concept.loss(features, targets)
