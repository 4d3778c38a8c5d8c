"""RIA (Jin & Nakayama 2016): an LSTM that emits an image's labels in a fixed order (rare-first by
default), its initial hidden state a linear map of the image feature. Everything is in
recurrent.SequenceDecoder; this module only names it."""

from tagcap.decoders.base import register
from tagcap.decoders.recurrent import SequenceDecoder


@register("ria")
class RIA(SequenceDecoder):
    pass
