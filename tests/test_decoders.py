"""Every decoder on tiny tensors: a label dependency it must learn, its step-by-step targets,
and a save/load round trip that gives the same outputs."""

import numpy as np
import pytest

import torch

from conftest import annotation_meta
from tagcap.decision import apply_rule
from tagcap.decoders import create_decoder, registered
from tagcap.decoders.multi_order import step_targets
from tagcap.decoders.order_free import pool_targets
from tagcap.decoders.recurrent import label_sequences, order_rank, read_glove
from tagcap.train.checkpoint import save_checkpoint
from tagcap.inference.checkpoint import load_checkpoint
from tagcap.train.loop import TrainConfig, train_on_features
from tagcap.inference.outputs import predict_outputs
from tagcap.errors import DataError

A, B, C, D = range(4)
DIM = 16
SMALL = {"hidden": 64, "embed_dim": 16}
DECODERS = {  # method -> (constructor arguments, decision rule)
    "ria": (SMALL, {"kind": "sequence"}),
    "sr-cnn-rnn": (SMALL, {"kind": "sequence"}),
    "cnn-rnn": ({"hidden": 64}, {"kind": "sequence"}),  # its joint embedding keeps the paper's 64 dims
    "order-free": (SMALL, {"kind": "sequence"}),
    "attention-rnn": (SMALL, {"kind": "sequence"}),
    "multi-order": ({"hidden": 64, "embed_dim": 16, "steps": 3}, {"kind": "threshold", "t": 0.5}),
    "label-attention": ({"attention_dim": 16, "value_dim": 16, "loss": "bce"}, {"kind": "threshold", "t": 0.5}),
    "cnn": ({"loss": "bce"}, {"kind": "threshold", "t": 0.5}),
}
# single-label heads (one class per image, scores summing to 1): the bundled ImageNet classes. They do not
# face the multi-label dependency problem, only the round trip and the loss below.
SINGLE_LABEL = {"softmax": ({}, {"kind": "top-k", "k": 1})}


def dependency_problem(n, seed, grid):
    """B occurs only with A, C never with A; B and C look *the same* in the features, so telling
    them apart needs A. D is independent. Grid features put each label's pattern in a random cell."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(99).standard_normal((3, DIM)) * 2  # A, B-or-C, D
    y = np.zeros((n, 4), np.uint8)
    y[:, A] = rng.random(n) < 0.5
    y[:, B] = y[:, A] & (rng.random(n) < 0.6)
    y[:, C] = (1 - y[:, A]) & (rng.random(n) < 0.6)
    y[:, D] = rng.random(n) < 0.5
    present = np.stack([y[:, A], y[:, B] | y[:, C], y[:, D]], 1)
    if not grid:
        x = present @ patterns + 0.3 * rng.standard_normal((n, DIM))
        x = np.stack([x, x], 1)  # two identical "views"
    else:
        x = 0.3 * rng.standard_normal((n, 9, DIM))
        for i in range(n):
            cells = rng.permutation(9)[:3]
            for k in range(3):
                x[i, cells[k]] += present[i, k] * patterns[k]
        x = np.stack([x, x[:, [2, 1, 0, 5, 4, 3, 8, 7, 6]]], 1)  # the flipped view mirrors the 3x3 grid
    return x.astype(np.float32), y


def make(method):
    kwargs, rule = {**DECODERS, **SINGLE_LABEL}[method]
    extra = {"label_counts": [50, 15, 15, 50], "max_len": 4} if method not in ("multi-order", "label-attention", "cnn", "softmax") else {}
    return create_decoder(method, 4, DIM, **kwargs, **extra), rule


def test_every_registered_decoder_is_covered():
    """Every annotation decoder faces the dependency problem below (captioners: test_captioning.py)."""
    from tagcap.decoders.base import decoder_class

    annotation = {m for m in registered() if decoder_class(m).task == "annotation"}
    assert annotation == set(DECODERS) | set(SINGLE_LABEL)
    assert set(registered()) - annotation == {"show-attend-tell"}


@pytest.mark.parametrize("method", sorted(DECODERS))
def test_decoder_learns_the_label_dependency(method):
    torch.manual_seed(0)
    decoder, rule = make(method)
    grid = decoder.feature_kind == "grid"
    (xt, yt), (xv, yv), (xs, ys) = (dependency_problem(n, s, grid) for n, s in ((600, 0), (100, 1), (200, 2)))
    train_on_features(decoder, xt, yt, xv, yv, TrainConfig(epochs=40, batch_size=32, lr=3e-3, patience=10),
                      progress=False)
    out = predict_outputs(decoder, xs)
    pred = apply_rule(out["scores"], rule, out.get("emitted"))
    exact = (pred == ys.astype(bool)).all(1).mean()
    violations = ((pred[:, B] & ~pred[:, A]) | (pred[:, C] & pred[:, A])).mean()
    assert exact > 0.85, f"{method}: exact-set accuracy {exact:.2f}"
    assert violations < 0.05, f"{method}: {violations:.2f} of images break B=>A or C=>not A"


@pytest.mark.parametrize("method", sorted({**DECODERS, **SINGLE_LABEL}))
def test_round_trip_gives_the_same_outputs(method, tmp_path):
    torch.manual_seed(1)
    decoder, _ = make(method)
    x, y = dependency_problem(6, 3, decoder.feature_kind == "grid")
    decoder.train().loss(torch.from_numpy(x[:, 0]), torch.from_numpy(y).float()).backward()  # runs
    save_checkpoint(tmp_path / "ckpt", decoder.eval(), annotation_meta(decoder.num_labels))
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    a, b = predict_outputs(decoder, x), predict_outputs(loaded, x)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert a["scores"].shape == (6, 4)
    if "step_labels" in a:
        assert a["step_scores"].shape[:2] == a["step_labels"].shape


def test_weights_saved_before_the_shared_attention_module_still_load():
    """Checkpoints written before `SoftAttention` named its weights on the decoder (att_grid, att_v, ...):
    such a state dict loads into today's attention RNN and gives the same outputs."""
    torch.manual_seed(2)
    decoder, _ = make("attention-rnn")
    legacy = {"attention.key": "att_grid", "attention.query": "att_h", "attention.score": "att_v",
              "initial.h": "init_h", "initial.c": "init_c"}
    old = {}
    for key, value in decoder.state_dict().items():
        for new, was in legacy.items():
            if key.startswith(new + "."):
                key = was + key[len(new):]
        old[key] = value
    assert "att_grid.weight" in old and not any(k.startswith("attention.") for k in old)
    fresh, _ = make("attention-rnn")
    fresh.load_state_dict(old)  # strict: every key found a home
    x, _ = dependency_problem(5, 4, grid=True)
    a, b = predict_outputs(decoder.eval(), x), predict_outputs(fresh.eval(), x)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_cnn_rnn_scores_with_its_label_embedding_and_builds_no_output_layer():
    """CNN-RNN's scores are dot products with the labels' own input embeddings; the other sequence
    decoders score with an output layer over the labels and STOP."""
    cnn_rnn, _ = make("cnn-rnn")
    assert not hasattr(cnn_rnn, "out") and not any(k.startswith("out.") for k in cnn_rnn.state_dict())
    ria, _ = make("ria")
    assert ria.out.out_features == 4 + 1


def test_softmax_head_scores_sum_to_one_and_learns_one_class_per_image():
    torch.manual_seed(0)
    decoder, _ = make("softmax")
    x = torch.randn(300, DIM)
    y = torch.nn.functional.one_hot((x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long(), 4).float()
    opt = torch.optim.Adam(decoder.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        decoder.train().loss(x, y).backward()
        opt.step()
    scores = decoder.eval().predict(x).scores
    assert torch.allclose(scores.sum(1), torch.ones(300), atol=1e-5)
    assert (scores.argmax(1) == y.argmax(1)).float().mean() > 0.95


def test_label_sequences_in_rare_first_order():
    counts = torch.tensor([5, 1, 3, 2])
    rank = order_rank(counts, "rare-first")
    targets = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0.0]])
    assert label_sequences(targets, rank, stop=4).tolist() == [[3, 2, 0, 4], [4, -100, -100, -100],
                                                               [1, 4, -100, -100]]
    assert label_sequences(targets, order_rank(counts, "frequent-first"), 4)[0].tolist() == [0, 2, 3, 4]


def test_multi_order_step_targets_paper_and_cumulative():
    truth = torch.tensor([[1.0, 1, 1, 0]])
    picks = torch.tensor([[0, 2, 3]])
    paper = step_targets(truth, picks, "paper")[0].tolist()
    assert paper == [[1, 1, 1, 0],     # step 1: every true label
                     [0, 1, 1, 0],     # step 2: all but the label picked at step 1
                     [1, 1, 0, 0]]     # step 3: all but step 2's pick; step 1's pick is back
    cumulative = step_targets(truth, picks, "cumulative")[0].tolist()
    assert cumulative == [[1, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0]]


def test_order_free_target_is_the_best_scored_label_left_in_the_pool():
    logits = torch.tensor([[5.0, 1.0, 3.0, 0.0, 9.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    pool = torch.tensor([[False, True, True, False], [False, False, False, False]])
    # label 0 scores highest but is not in the pool (already emitted or false): label 2 is the target
    assert pool_targets(logits, pool, stop=4).tolist() == [2, 4]


def test_order_free_pool_empties_as_labels_are_emitted():
    torch.manual_seed(0)
    decoder, _ = make("order-free")
    targets = torch.tensor([[1.0, 0, 1, 1]])
    seen = []
    real_step = decoder.step

    def spy(tokens, state):
        seen.append(int(tokens[0]))
        return real_step(tokens, state)

    decoder.step = spy
    decoder.loss(torch.randn(1, DIM), targets)
    # inputs: START, then the three true labels in the model's own order, each exactly once
    assert seen[0] == decoder.start and sorted(seen[1:]) == [0, 2, 3]


def test_glove_reader(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("sky 1 2\nblue 3 4\nstart 0 1\nstop 1 0\n")
    vectors = read_glove(path, ["sky", "blue_sky", "start", "stop"])
    assert vectors.tolist() == [[1, 2], [2, 3], [0, 1], [1, 0]]
    with pytest.raises(DataError, match="no GloVe vector for label 'moon'"):
        read_glove(path, ["moon"])
