"""Decoders: every method is one module that registers itself here, behind one interface.

    decoder = create_decoder("cnn", num_labels=260, feature_dim=1280, loss="unsym")
    loss = decoder.loss(features, targets)          # training
    out = decoder.predict(features)                 # DecoderOutput: scores, step_scores, step_labels
"""

from tagcap.decoders.base import Decoder, DecoderOutput, create_decoder, register, registered
from tagcap.decoders import (attention, cnn, cnn_rnn, multi_order, order_free, ria,  # noqa: F401  (registration)
                           show_attend_tell, sr_cnn_rnn)

__all__ = ["Decoder", "DecoderOutput", "create_decoder", "register", "registered"]
