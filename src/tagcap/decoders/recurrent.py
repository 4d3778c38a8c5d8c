"""Shared machinery of the recurrent label decoders (RIA and its family).

Token ids: labels are 0..C-1, STOP is C, START is C+1 (an input only). A training target is the
image's labels in a fixed order followed by STOP; the decoder is trained with teacher forcing and
cross-entropy over the labels and the STOP step. Decoding is greedy or beam search (beam.py),
never repeating a label. Subclasses change their own layers (`build`, and `output_layer`, the
label scorer, None where `step` scores another way), how the state starts (`init_state`) and how a
step scores labels (`step`); everything else — sequences, loss, decoding, outputs — lives here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagcap.data.vocab import label_order
from tagcap.errors import DataError
from tagcap.losses import bce
from tagcap.decoders.base import Decoder, DecoderOutput
from tagcap.decoders.beam import beam_search

IGNORE = -100


def order_rank(counts: torch.Tensor, order: str) -> torch.Tensor:
    """rank[c] = position of label c in the order (lower comes first): `label_order` inverted. The
    random order draws from torch's generator, which the training loop seeds and restores."""
    c = len(counts)
    if isinstance(counts, torch.Tensor) and counts.is_meta:  # a decoder built for its shapes only (no values)
        return torch.empty(c, dtype=torch.long)
    if order == "random":
        perm = torch.randperm(c)
    elif order in ("rare-first", "frequent-first"):
        perm = torch.from_numpy(label_order(counts.numpy() if isinstance(counts, torch.Tensor) else counts, order))
    else:
        raise ValueError(f"unknown label order {order!r} for a sequence decoder")
    rank = torch.empty(c, dtype=torch.long)
    rank[perm] = torch.arange(c)
    return rank


def label_sequences(targets: torch.Tensor, rank: torch.Tensor, stop: int) -> torch.Tensor:
    """[B, C] 0/1 targets -> [B, L+1]: each image's label ids in `rank` order, then STOP, padded with IGNORE."""
    targets = targets > 0.5
    b, dev = len(targets), targets.device
    rank = rank.to(dev)
    key = torch.where(targets, rank.unsqueeze(0).expand_as(targets), torch.full_like(rank, 1 << 30).expand_as(targets))
    ordered = torch.cat([key.argsort(dim=1, stable=True), torch.zeros(b, 1, dtype=torch.long, device=dev)], dim=1)
    lengths = targets.sum(1)
    width = (int(lengths.max()) if b else 0) + 1
    pos = torch.arange(width, device=dev).unsqueeze(0)
    seq = torch.where(pos < lengths.unsqueeze(1), ordered[:, :width], torch.full((b, width), IGNORE, device=dev))
    seq[torch.arange(b, device=dev), lengths] = stop
    return seq


def read_glove(path, words: list[str]) -> torch.Tensor:
    """Vectors for `words` from a GloVe text file; a multi-word label (a_b) averages its words."""
    vectors: dict[str, np.ndarray] = {}
    wanted = {part for w in words for part in w.lower().split("_")}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            word, _, rest = line.rstrip().partition(" ")
            if word in wanted:
                try:
                    vectors[word] = np.asarray(rest.split(), dtype=np.float32)
                except ValueError:
                    raise DataError(f"{path}:{n}", "malformed GloVe line") from None
    out = []
    for w in words:
        parts = [vectors.get(p) for p in w.lower().split("_")]
        if any(p is None for p in parts):
            raise DataError(path, f"no GloVe vector for label {w!r}")
        out.append(np.mean(parts, axis=0))
    return torch.from_numpy(np.stack(out))


class SequenceDecoder(Decoder):
    """LSTM over label tokens; initial hidden state a linear map of the image feature (cell zero)."""

    feature_kind = "pooled"
    emits_labels = True

    @classmethod
    def data_kwargs(cls, label_counts: list[int], longest: int) -> dict:
        """The label frequencies (for the label order) and the decoding length (the longest list + stop)."""
        return {"label_counts": label_counts, "max_len": longest + 1}

    def __init__(self, num_labels: int, feature_dim: int, label_counts: list[int] | None = None,
                 hidden: int = 512, embed_dim: int = 256, embedding: str = "learned", dropout: float = 0.3,
                 order: str = "rare-first", beam_width: int = 1, max_len: int = 6, **hparams):
        super().__init__(num_labels, feature_dim, label_counts=label_counts, hidden=hidden, embed_dim=embed_dim,
                         embedding=embedding, dropout=dropout, order=order, beam_width=beam_width,
                         max_len=max_len, **hparams)
        self.stop, self.start = num_labels, num_labels + 1
        self.order, self.beam_width, self.max_len = order, beam_width, max_len
        counts = torch.tensor(label_counts if label_counts is not None else [0] * num_labels)
        self.register_buffer("rank", order_rank(counts, order if order != "random" else "rare-first"), persistent=False)
        if embedding == "glove":
            embed_dim = 300
            self.embed = nn.Embedding(num_labels + 2, embed_dim)
            self.embed.weight.requires_grad_(False)  # frozen, as in RIA
        elif embedding == "learned":
            self.embed = nn.Embedding(num_labels + 2, embed_dim)
        else:
            raise ValueError(f"embedding must be 'learned' or 'glove', not {embedding!r}")
        self.embed_dim, self.hidden = embed_dim, hidden
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTMCell(self.input_dim(), hidden)
        if (out := self.output_layer()) is not None:
            self.out = out
        self.build()

    # -- pieces subclasses change ---------------------------------------------------------------
    def input_dim(self) -> int:
        return self.embed_dim

    def output_layer(self) -> nn.Module | None:
        """What `step` scores the labels and STOP with (`self.out`), built before `build()`'s layers;
        None for a decoder that scores them another way."""
        return nn.Linear(self.hidden, self.num_labels + 1)

    def build(self) -> None:
        self.init_h = nn.Linear(self.feature_dim, self.hidden)

    def init_state(self, features: torch.Tensor) -> tuple:
        h = self.init_h(features)
        return h, torch.zeros_like(h)

    def step(self, tokens: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        h, c, *rest = state
        h, c = self.lstm(self.drop(self.embed(tokens)), (h, c))
        return self.out(self.drop(h)), (h, c, *rest)

    def extra_loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | float:
        return 0.0

    # -- shared -------------------------------------------------------------------------------
    def validation_kwargs(self) -> dict:
        return {"beam_width": 1}

    def load_glove(self, path, labels: list[str]) -> None:
        vectors = read_glove(path, list(labels) + ["stop", "start"])
        with torch.no_grad():
            self.embed.weight.copy_(vectors)

    def current_rank(self) -> torch.Tensor:
        if self.order == "random" and self.training:
            return order_rank(torch.zeros(self.num_labels), "random")  # a fresh order per batch
        return self.rank

    def loss(self, features, targets):
        seq = label_sequences(targets, self.current_rank(), self.stop)
        inputs = torch.cat([torch.full((len(seq), 1), self.start, device=seq.device), seq[:, :-1].clamp(min=0)], dim=1)
        state = self.init_state(features)
        total, count = 0.0, 0
        for t in range(seq.shape[1]):
            logits, state = self.step(inputs[:, t], state)
            valid = seq[:, t] != IGNORE
            if valid.any():
                total = total + F.cross_entropy(logits[valid], seq[valid, t], reduction="sum")
                count += int(valid.sum())
        return total / max(count, 1) + self.extra_loss(features, targets)

    @torch.no_grad()
    def predict(self, features, beam_width: int | None = None):
        width = beam_width or self.beam_width
        result = beam_search(lambda tok, st: self._log_probs(tok, st), self.init_state(features),
                             batch_size=len(features), start_token=self.start, stop_token=self.stop,
                             beam_width=width, max_len=self.max_len, forbid_repeats=True, device=features.device)
        return self.outputs_from_paths(result.sequences, result.step_log_probs)

    def _log_probs(self, tokens, state):
        logits, state = self.step(tokens, state)
        return F.log_softmax(logits, dim=-1), state

    def outputs_from_paths(self, sequences, paths) -> DecoderOutput:
        """Per-step label probabilities along each decoded path; final score = max over steps."""
        b, c = len(sequences), self.num_labels
        steps = max(len(p) for p in paths) if paths else 0
        step_scores = torch.zeros(b, steps, c)
        step_labels = torch.full((b, steps), -1, dtype=torch.long)
        emitted = torch.zeros(b, c, dtype=torch.bool)
        for i, (seq, path) in enumerate(zip(sequences, paths)):  # outputs are gathered on the CPU
            step_scores[i, : len(path)] = path.exp()[:, :c].cpu()
            step_labels[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            if seq:
                emitted[i, seq] = True
        scores = step_scores.max(1).values if steps else torch.zeros(b, c)
        return DecoderOutput(scores=scores, step_scores=step_scores, step_labels=step_labels, emitted=emitted)


class ConceptLayer(nn.Module):
    """The CNN baseline (dropout + linear, BCE) whose probabilities start an LSTM. Its loss is added to
    the decoder's; its probabilities are detached, so no gradient flows from the LSTM into it."""

    def __init__(self, feature_dim: int, num_labels: int, dropout: float = 0.3):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, num_labels)

    def logits(self, features):
        return self.fc(self.drop(features))

    def loss(self, features, targets):
        return bce(self.logits(features), targets)

    def probs(self, features):
        return torch.sigmoid(self.logits(features)).detach()
