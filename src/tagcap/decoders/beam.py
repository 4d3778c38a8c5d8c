"""Beam search, written once for every sequence decoder (label sequences and captions).

A decoder supplies `step(tokens, state) -> (log_probs [N, V], state)`, where `state` is a
tensor or a tuple of tensors whose first dimension is N (batch x beams); this module expands,
reorders and prunes. Width 1 is greedy decoding.

Scores are sums of log-probabilities (optionally divided by length). A hypothesis is finished
when it emits `stop_token`; if none finishes within `max_len` steps, the best unfinished one is
returned instead (the public RIA code crashes there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BeamResult:
    sequences: list[list[int]]            # per batch item, tokens without START and STOP
    scores: torch.Tensor                  # [B] the returned hypothesis' score
    finished: list[bool]                  # did it end with STOP?
    step_log_probs: list[torch.Tensor | None]  # per batch item, [len(seq) (+1 if finished), V] along its path


def _map_state(state, fn):
    if isinstance(state, torch.Tensor):
        return fn(state)
    return type(state)(_map_state(s, fn) for s in state)


def beam_search(step, state, batch_size: int, start_token: int, stop_token: int, beam_width: int = 3,
                max_len: int = 10, forbid_repeats: bool | torch.Tensor = False, length_norm: bool = False,
                device: torch.device | str = "cpu", keep_step_log_probs: bool = True, context=None) -> BeamResult:
    """`forbid_repeats`: no hypothesis emits a token twice (STOP aside); or a [V] bool tensor, the tokens
    that may appear at most once (a grounded caption's object words).

    `keep_step_log_probs=False` skips recording each path's per-step distributions (captioners:
    a 10k-word vocabulary makes them large, and only label decoders report them).

    `context`: a tensor or tuple of tensors with one row per batch item that every step reads and none
    changes (a captioner's attention cells). It is repeated once per beam and handed to
    `step(tokens, state, context)`; beams never move between items, so it is never reordered.

    With plain sums (no `length_norm`) scores only fall, so an item whose best finished hypothesis
    beats its best live beam is done: its rows leave the batch (state, context, beams) and later
    steps compute only the items still searching. The results are those of searching them all."""
    b, k = batch_size, beam_width
    repeat_once = None
    if isinstance(forbid_repeats, torch.Tensor):
        repeat_once = forbid_repeats.to(device=device, dtype=torch.bool)
    elif forbid_repeats:
        repeat_once = torch.tensor(True, device=device)
    state = _map_state(state, lambda s: s.repeat_interleave(k, dim=0))
    if context is not None:
        context = _map_state(context, lambda s: s.repeat_interleave(k, dim=0))
    searching = list(range(b))  # the items still in the batch; row j of every tensor below is item searching[j]
    tokens = torch.full((b * k,), start_token, dtype=torch.long, device=device)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive so the first step doesn't pick duplicates
    history = torch.zeros((b, k, 0), dtype=torch.long, device=device)
    step_lp = None  # [items searching, K, t, V]
    finished: list[list[tuple[float, float, list[int], torch.Tensor]]] = [[] for _ in range(b)]

    def norm(score: float, length: int) -> float:
        return score / max(length, 1) if length_norm else score

    for t in range(max_len):
        n = len(searching)
        log_probs, state = step(tokens, state) if context is None else step(tokens, state, context)
        v = log_probs.shape[-1]
        log_probs = log_probs.view(n, k, v)
        if keep_step_log_probs:
            step_lp = log_probs.unsqueeze(2) if step_lp is None else torch.cat([step_lp, log_probs.unsqueeze(2)], 2)
        masked = log_probs.clone()
        if repeat_once is not None and t > 0:
            used = torch.zeros_like(masked, dtype=torch.bool).scatter_(2, history, True) & repeat_once
            used[..., stop_token] = False
            masked = masked.masked_fill(used, float("-inf"))
        cand = (scores.unsqueeze(2) + masked).view(n, k * v)
        top_scores, top_idx = cand.topk(min(2 * k, k * v), dim=1)
        new_scores = torch.full((n, k), float("-inf"), device=device)
        new_beam = torch.zeros((n, k), dtype=torch.long, device=device)
        new_token = torch.full((n, k), stop_token, dtype=torch.long, device=device)
        for j, item in enumerate(searching):
            live = 0
            for s, idx in zip(top_scores[j].tolist(), top_idx[j].tolist()):
                if s == float("-inf") or live == k:
                    break
                beam, tok = divmod(idx, v)
                if tok == stop_token:
                    seq = history[j, beam].tolist()
                    path = step_lp[j, beam].clone() if step_lp is not None else None
                    finished[item].append((norm(s, len(seq) + 1), s, seq, path))
                else:
                    new_scores[j, live], new_beam[j, live], new_token[j, live] = s, beam, tok
                    live += 1
        # reorder everything by the surviving beams' parents
        flat_parent = (new_beam + torch.arange(n, device=device).unsqueeze(1) * k).view(-1)
        state = _map_state(state, lambda s: s.index_select(0, flat_parent))
        history = torch.cat([history.gather(1, new_beam.unsqueeze(2).expand(-1, -1, history.shape[2])),
                             new_token.unsqueeze(2)], dim=2)
        if step_lp is not None:
            step_lp = step_lp.gather(1, new_beam[:, :, None, None].expand(-1, -1, *step_lp.shape[2:]))
        scores = new_scores
        tokens = new_token.view(-1)
        if length_norm:
            continue  # a longer hypothesis may still win on its mean: every item searches to max_len
        best_live = scores.max(dim=1).values.tolist()
        keep = [j for j, item in enumerate(searching)
                if not (finished[item] and max(f[0] for f in finished[item]) >= best_live[j])]
        if not keep:
            break
        if len(keep) < n:  # some items are done: their rows leave the batch
            items = torch.tensor(keep, device=device)
            rows = (items.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            state = _map_state(state, lambda s: s.index_select(0, rows))
            if context is not None:
                context = _map_state(context, lambda s: s.index_select(0, rows))
            tokens, scores, history = tokens.index_select(0, rows), scores[items], history[items]
            step_lp = step_lp[items] if step_lp is not None else None
            searching = [searching[j] for j in keep]

    sequences, out_scores, done, paths = [], [], [], []
    row = {item: j for j, item in enumerate(searching)}
    for i in range(b):
        if finished[i]:
            best = max(finished[i], key=lambda f: f[0])
            sequences.append(best[2])
            out_scores.append(best[0])
            done.append(True)
            paths.append(best[3])
        else:  # nothing reached STOP (so the item searched to the end): the best unfinished hypothesis
            j = row[i]
            best_beam = int(scores[j].argmax())
            seq = history[j, best_beam].tolist()
            sequences.append(seq)
            out_scores.append(norm(scores[j, best_beam].item(), len(seq)))
            done.append(False)
            paths.append(step_lp[j, best_beam] if step_lp is not None else None)
    return BeamResult(sequences, torch.tensor(out_scores), done, paths)
