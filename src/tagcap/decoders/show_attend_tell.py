"""Show, Attend and Tell (Xu et al. 2015), soft attention, on the cached feature grid.

Per step t, with a = the grid's cells:
  e_ti = w^T tanh(W_a a_i + W_h h_{t-1}),  alpha_t = softmax(e_t)
  z_t = sigmoid(f_beta(h_{t-1})) * sum_i alpha_ti a_i                     (the gate beta)
  h_t, c_t = LSTM([E y_{t-1}; z_t], (h_{t-1}, c_{t-1}))
  p(y_t) = softmax(L_o(dropout(E y_{t-1} + L_h h_t + L_z z_t)))           (the deep output)
h_0, c_0 = tanh(linear(mean_i a_i)). The attention and that initial state are
`soft_attention.SoftAttention` and `MeanInitialState`, shared with the attention RNN. Loss: cross-entropy with teacher forcing plus the doubly
stochastic regulariser alpha_c * mean_i (1 - sum_t alpha_ti)^2.

One departure, said here: the 1280-d grid of the default backbone is first projected to 512-d
(`context_dim`), the width of the VGG conv5 cells the paper attends over; it also keeps a CPU
training epoch affordable. Decoding is greedy or the shared beam search (decoders/beam.py); the
tokens <pad> and <start> are never emitted, nor <unk> unless `allow_unk`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tagcap.decoders.base import Decoder, DecoderOutput, register
from tagcap.decoders.beam import beam_search
from tagcap.decoders.soft_attention import MeanInitialState, SoftAttention, rename_legacy_keys


@register("show-attend-tell")
class ShowAttendTell(Decoder):
    feature_kind = "grid"
    task = "caption"
    chunk = 40  # sentences stepped together in training (see `loss`)

    def __init__(self, num_labels: int, feature_dim: int, embed_dim: int = 512, hidden: int = 512,
                 attention_dim: int = 512, context_dim: int = 512, dropout: float = 0.5, alpha_c: float = 1.0,
                 max_len: int = 20, beam_width: int = 3, length_norm: bool = False, allow_unk: bool = False,
                 pad: int = 0, start: int = 1, end: int = 2, unk: int = 3):
        # num_labels is the word vocabulary's size here (special tokens included)
        super().__init__(num_labels, feature_dim, embed_dim=embed_dim, hidden=hidden, attention_dim=attention_dim,
                         context_dim=context_dim, dropout=dropout, alpha_c=alpha_c, max_len=max_len,
                         beam_width=beam_width, length_norm=length_norm, allow_unk=allow_unk,
                         pad=pad, start=start, end=end, unk=unk)
        self.pad, self.start, self.end, self.unk = pad, start, end, unk
        self.alpha_c, self.max_len, self.beam_width = alpha_c, max_len, beam_width
        self.length_norm, self.allow_unk = length_norm, allow_unk
        self.feature_proj = nn.Linear(feature_dim, context_dim)
        self.attention = SoftAttention(context_dim, hidden, attention_dim)
        self.f_beta = nn.Linear(hidden, 1)
        self.initial = MeanInitialState(context_dim, hidden)
        self.embed = nn.Embedding(num_labels, embed_dim, padding_idx=pad)
        self.lstm = nn.LSTMCell(embed_dim + context_dim, hidden)
        self.L_h = nn.Linear(hidden, embed_dim)
        self.L_z = nn.Linear(context_dim, embed_dim)
        self.L_o = nn.Linear(embed_dim, num_labels)
        self.drop = nn.Dropout(dropout)
        rename_legacy_keys(self, {"att_a": "attention.key", "att_h": "attention.query", "att_w": "attention.score",
                                  "init_h": "initial.h", "init_c": "initial.c"})

    # --- pieces -------------------------------------------------------------------------------
    def encode(self, grid: torch.Tensor):
        """Projected cells [B, HW, ctx], their attention keys, and the initial state."""
        a = self.feature_proj(grid)
        return a, self.attention.keys(a), *self.initial(a)

    def step_logits(self, words, h, c, a, keys):
        context, alpha = self.attention(h, a, keys)
        z = torch.sigmoid(self.f_beta(h)) * context
        e = self.embed(words)
        h, c = self.lstm(torch.cat([e, z], dim=1), (h, c))
        logits = self.L_o(self.drop(e + self.L_h(h) + self.L_z(z)))
        return logits, alpha, h, c

    def _banned(self) -> list[int]:
        return [self.pad, self.start] + ([] if self.allow_unk else [self.unk])

    def _decoding_start(self, grid: torch.Tensor):
        """`encode` for decoding. Under bfloat16 autocast (devices.decoding) the matrix products run in
        bfloat16 while the LSTM state starts, and so stays, in float32: its cell sums over the whole
        sentence. A no-op in float32."""
        a, keys, h, c = self.encode(grid)
        return a, keys, h.float(), c.float()

    # --- training -----------------------------------------------------------------------------
    def loss(self, grid: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """grid [B, HW, D]; targets [B, K, L] word ids (K captions per image, rows of <pad> for none)
        or [B, L]. Each caption ends with <end>, then <pad>."""
        targets = targets.long()
        if targets.dim() == 2:
            targets = targets.unsqueeze(1)
        b, k, _ = targets.shape
        rows = targets.reshape(b * k, -1)
        img = torch.arange(b, device=grid.device).repeat_interleave(k)
        lengths = (rows != self.pad).sum(1)
        keep = lengths > 0
        rows, img, lengths = rows[keep], img[keep], lengths[keep]
        # Sentences of similar length run together: sorted by length, in chunks, each chunk stepping
        # only to its own longest sentence. (Shrinking one batch step by step instead makes autograd
        # zero-fill a full-size gradient for every slice, which costs more than the steps it saves.)
        order = lengths.argsort(descending=True)
        a, keys, h0, c0 = self.encode(grid)  # once per image, shared by its K captions
        inputs = torch.cat([torch.full_like(rows[:, :1], self.start), rows[:, :-1]], dim=1)
        ce = grid.new_zeros(())
        reg = grid.new_zeros(())
        for idx in order.split(self.chunk):
            im, n_steps = img[idx], int(lengths[idx].max())
            a_c, keys_c, h, c = a[im], keys[im], h0[im], c0[im]
            alpha_sum = 0.0
            for t in range(n_steps):
                logits, alpha, h, c = self.step_logits(inputs[idx, t], h, c, a_c, keys_c)
                ce = ce + F.cross_entropy(logits.float(), rows[idx, t], ignore_index=self.pad, reduction="sum")
                alpha_sum = alpha_sum + alpha * (lengths[idx] > t).unsqueeze(1)
            reg = reg + ((1.0 - alpha_sum) ** 2).sum()
        ce = ce / lengths.sum()
        return ce + self.alpha_c * reg / (len(rows) * a.shape[1])

    # --- decoding -----------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, grid: torch.Tensor, max_len: int | None = None, word_bias: torch.Tensor | None = None,
               once: torch.Tensor | None = None) -> list[list[int]]:
        max_len = max_len or self.max_len
        a, keys, h, c = self._decoding_start(grid)
        words = torch.full((len(grid),), self.start, dtype=torch.long, device=grid.device)
        out = torch.full((len(grid), max_len), self.end, dtype=torch.long)
        done = torch.zeros(len(grid), dtype=torch.bool)
        banned = self._banned()
        rows = torch.arange(len(grid), device=grid.device)
        # the words each caption has said, kept only where some may be said once
        said = None if once is None else torch.zeros((len(grid), self.num_labels), dtype=torch.bool, device=grid.device)
        for t in range(max_len):
            logits, _, h, c = self.step_logits(words, h, c, a, keys)
            logits = logits.float()
            logits[:, banned] = float("-inf")
            if word_bias is not None:  # added to log-probabilities: the same argmax after log_softmax
                logits = F.log_softmax(logits, dim=-1) + word_bias
                logits[rows, words] = float("-inf")  # `yellow yellow`: no word twice in a row
            if once is not None:
                logits = logits.masked_fill(said & once, float("-inf"))
            words = logits.argmax(1)
            if said is not None:
                said[rows, words] = True
            out[:, t] = torch.where(done, torch.full_like(words.cpu(), self.end), words.cpu())
            done |= words.cpu() == self.end
            if bool(done.all()):
                break
        return [[int(w) for w in row[: (row == self.end).nonzero()[0, 0] if (row == self.end).any() else max_len]]
                for row in out]

    @torch.no_grad()
    def beam(self, grid: torch.Tensor, beam_width: int, max_len: int | None = None,
             length_norm: bool | None = None, word_bias: torch.Tensor | None = None,
             once: torch.Tensor | None = None):
        a, keys, h, c = self._decoding_start(grid)
        banned = self._banned()

        def step(words, state, context):
            logits, _, h, c = self.step_logits(words, *state, *context[:2])
            logits = logits.float()  # the beam adds log-probabilities over the sentence: in float32
            logits[:, banned] = float("-inf")
            log_probs = F.log_softmax(logits, dim=-1)
            if len(context) == 2:
                return log_probs, (h, c)
            log_probs = log_probs + context[2]
            log_probs[torch.arange(len(words), device=words.device), words] = float("-inf")  # no word twice in a row
            return log_probs, (h, c)

        # the cells (and the bias) are context: repeated once per beam, never reordered, dropped with a
        # finished image
        context = (a, keys) if word_bias is None else (a, keys, word_bias.float())
        return beam_search(step, (h, c), len(grid), self.start, self.end, beam_width=beam_width,
                           max_len=max_len or self.max_len,
                           length_norm=self.length_norm if length_norm is None else length_norm,
                           device=grid.device, keep_step_log_probs=False, context=context,
                           forbid_repeats=once if once is not None else False)

    @torch.no_grad()
    def attention_along(self, grid: torch.Tensor, sequences: list[list[int]]) -> list[torch.Tensor]:
        """The attention map behind each word of given captions: [len(seq) + 1, HW] per image
        (the last row is the step that emitted <end>)."""
        a, keys, h, c = self._decoding_start(grid)
        longest = max((len(s) for s in sequences), default=0) + 1
        words = torch.full((len(grid), longest), self.end, dtype=torch.long, device=grid.device)
        words[:, 0] = self.start
        for i, s in enumerate(sequences):
            if s:
                words[i, 1:len(s) + 1] = torch.tensor(s)
        alphas = []
        for t in range(longest):
            _, alpha, h, c = self.step_logits(words[:, t], h, c, a, keys)
            alphas.append(alpha.float())
        stacked = torch.stack(alphas, 1).cpu()
        return [stacked[i, : len(s) + 1] for i, s in enumerate(sequences)]

    @torch.no_grad()
    def predict(self, grid: torch.Tensor, beam_width: int | None = None, max_len: int | None = None,
                length_norm: bool | None = None, attention: bool = False,
                word_bias: torch.Tensor | None = None, once: torch.Tensor | None = None) -> DecoderOutput:
        """Captions as word-id lists (`sequences`), their log-probabilities (`scores`), and with
        `attention` the map behind every word. `word_bias` [B, words]: added to each step's
        log-probabilities (evidence from outside the captioner, `inference.grounding`), and with it no
        word is said twice in a row; `once` [words] bool: words said at most once per caption."""
        width = self.beam_width if beam_width is None else beam_width
        if width <= 1 and not length_norm:
            sequences = self.greedy(grid, max_len, word_bias, once)
            scores = torch.full((len(grid),), float("nan"))
        else:
            result = self.beam(grid, width, max_len, length_norm, word_bias, once)
            sequences, scores = result.sequences, result.scores
        maps = self.attention_along(grid, sequences) if attention else None
        return DecoderOutput(scores=scores, sequences=sequences, attention=maps)

    def validation_kwargs(self) -> dict:
        return {"beam_width": 1}
