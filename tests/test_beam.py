"""Beam search against brute-force enumeration, greedy equivalence, and the no-STOP fallback."""

import itertools

import pytest
import torch

from tagcap.decoders.beam import beam_search

V, STOP, START = 4, 3, 4  # tokens 0..2 are labels, 3 is STOP; START is an input only


def table_step(seed):
    """A deterministic toy model: log-probs depend on the last token only."""
    g = torch.Generator().manual_seed(seed)
    table = torch.log_softmax(torch.randn(V + 1, V, generator=g) * 2, dim=-1)  # rows: previous token

    def step(tokens, state):
        return table[tokens], state

    return step, table


def brute_force(table, max_len, forbid_repeats):
    """Best sequence ending in STOP within max_len steps, by sum of log-probabilities."""
    best, best_seq = float("-inf"), None
    for n in range(max_len):
        for seq in itertools.product(range(V - 1), repeat=n):
            if forbid_repeats and len(set(seq)) < n:
                continue
            prev, score = START, 0.0
            for tok in (*seq, STOP):
                score += table[prev, tok].item()
                prev = tok
            if score > best:
                best, best_seq = score, list(seq)
    return best, best_seq


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("forbid_repeats", [False, True])
def test_wide_beam_finds_the_brute_force_optimum(seed, forbid_repeats):
    step, table = table_step(seed)
    best, best_seq = brute_force(table, 4, forbid_repeats)
    result = beam_search(step, torch.zeros(1, 1), 1, START, STOP, beam_width=64, max_len=4,
                         forbid_repeats=forbid_repeats)
    assert result.finished[0]
    assert result.sequences[0] == best_seq
    assert result.scores[0].item() == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_width_one_is_greedy(seed):
    step, table = table_step(seed)
    prev, greedy = START, []
    for _ in range(6):
        tok = int(table[prev].argmax())
        if tok == STOP:
            break
        greedy.append(tok)
        prev = tok
    result = beam_search(step, torch.zeros(1, 1), 1, START, STOP, beam_width=1, max_len=6)
    assert result.sequences[0] == greedy


def test_wider_beams_never_score_worse_than_greedy():
    compared = 0
    for seed in range(10):
        step, _ = table_step(seed)
        scores = [beam_search(step, torch.zeros(1, 1), 1, START, STOP, beam_width=k, max_len=5).scores[0].item()
                  for k in (1, 2, 3)]
        finished = [beam_search(step, torch.zeros(1, 1), 1, START, STOP, beam_width=k, max_len=5).finished[0]
                    for k in (1, 2, 3)]
        if all(finished):
            assert scores[2] >= scores[0] - 1e-6
            compared += 1
    assert compared >= 3  # the check above must actually run, not be skipped for every seed


def test_no_stop_falls_back_to_the_best_unfinished_hypothesis():
    def never_stop(tokens, state):
        logp = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1e9]]).repeat(len(tokens), 1), dim=-1)
        return logp, state

    for max_len in (1, 2, 3):  # at most 3 distinct labels exist, so these lengths never need STOP
        result = beam_search(never_stop, torch.zeros(2, 1), 2, START, STOP, beam_width=3, max_len=max_len,
                             forbid_repeats=True)
        assert result.finished == [False, False]
        # the best unfinished path: the highest labels first (at length 3 every order ties)
        assert sorted(result.sequences[0]) == [0, 1, 2][:max_len]
        assert max_len == 3 or result.sequences[0] == [0, 1, 2][:max_len]
        assert len(set(result.sequences[0])) == len(result.sequences[0])  # no label repeated


def test_batch_items_decode_independently_and_state_follows_beams():
    # the state carries a per-item bias; each item must decode as if alone
    bias = torch.tensor([[5.0, 0, 0, 0], [0, 0, 5.0, 0]])

    def step(tokens, state):
        (b,) = state
        logp = torch.log_softmax(b + torch.where(tokens.unsqueeze(1) == torch.arange(V), -9.0, 0.0)
                                 + torch.tensor([0, 0, 0, 1.0]) * (tokens != START).unsqueeze(1) * 8, dim=-1)
        return logp, (b,)

    result = beam_search(step, (bias,), 2, START, STOP, beam_width=3, max_len=4)
    assert result.sequences == [[0], [2]]
    alone = beam_search(step, (bias[1:],), 1, START, STOP, beam_width=3, max_len=4)
    assert alone.sequences[0] == result.sequences[1]
    assert result.step_log_probs[0].shape == (2, V)  # the label step and the STOP step


def test_done_items_leave_the_batch_and_change_nothing():
    """Items whose best finished caption beats their live beams stop being computed: later steps get
    fewer rows (state and context pruned alike), and every item's result equals searching it alone."""
    tables = [table_step(seed)[1] for seed in range(5)]  # one toy model per item, chosen by its context row
    rows_seen = []

    def step(tokens, state, context):
        rows_seen.append(len(tokens))
        assert torch.equal(state, context)  # both carry the item id: pruned in step with each other
        item = context[:, 0].long()
        return torch.stack([tables[i][tok] for i, tok in zip(item.tolist(), tokens.tolist())]), state

    ids = torch.arange(5, dtype=torch.float32).unsqueeze(1)
    together = beam_search(step, ids, 5, START, STOP, beam_width=3, max_len=8, context=ids)
    assert rows_seen[0] == 15 and rows_seen[-1] < 15  # some items were done before the last step
    for i in range(5):
        alone = beam_search(step, ids[i:i + 1], 1, START, STOP, beam_width=3, max_len=8, context=ids[i:i + 1])
        assert alone.sequences[0] == together.sequences[i] and alone.finished[0] == together.finished[i]
        assert alone.scores[0].item() == together.scores[i].item()
