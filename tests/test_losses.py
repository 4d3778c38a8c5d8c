"""Each loss against an element-by-element reference written from its definition, plus gradients."""

import math

import pytest
import torch

from tagcap.losses import asl, bce, focal, get_loss, unsymmetrical

LOGITS = [[2.0, -1.0, 0.3, -3.0], [-0.5, 1.5, 4.0, 0.0]]
TARGETS = [[1, 0, 1, 0], [0, 1, 0, 1]]


def sig(x):
    return 1 / (1 + math.exp(-x))


def elements():
    for row_x, row_y in zip(LOGITS, TARGETS):
        yield from zip(row_x, row_y)


def ref_bce():
    return -sum(y * math.log(sig(x)) + (1 - y) * math.log(1 - sig(x)) for x, y in elements()) / 8


def ref_focal(gamma=2.0):
    total = 0.0
    for x, y in elements():
        p = sig(x)
        pt = p if y else 1 - p
        total += -((1 - pt) ** gamma) * math.log(pt)
    return total / 8


def ref_asl():
    total = 0.0
    for x, y in elements():
        p = sig(x)
        if y:
            total += math.log(p)  # gamma_pos = 0
        else:
            pm = max(p - 0.05, 0.0)  # 1 - p_neg where p_neg = min(1 - p + 0.05, 1)
            total += pm ** 4 * math.log(1 - pm)
    return -total


def ref_unsym():
    total = 0.0
    for x, y in elements():
        if y:
            p = sig(x - 1.1)
            total += math.log(p) if p >= 0.25 else (1 - p) ** 3 * math.log(p)
        else:
            pm = max(sig(x) - 0.05, 0.0)
            total += pm ** 4 * math.log(1 - pm)
    return -total / 8


@pytest.mark.parametrize("fn,ref", [(bce, ref_bce), (focal, ref_focal), (asl, ref_asl), (unsymmetrical, ref_unsym)])
def test_value_matches_definition(fn, ref):
    value = fn(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(TARGETS, dtype=torch.float64))
    assert value.item() == pytest.approx(ref(), rel=1e-9)


@pytest.mark.parametrize("fn", [bce, focal, unsymmetrical])
def test_gradient_matches_finite_differences(fn):
    x = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(TARGETS, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: fn(t, y), (x,))


def test_asl_focusing_weight_carries_no_gradient():
    # With the weight detached, d/dx of a negative term is w * d/dx log(1 - p_m), w held constant.
    x = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    asl(x, torch.zeros(1, 1, dtype=torch.float64)).backward()
    p = sig(1.0)
    pm = p - 0.05
    expected = pm ** 4 * p * (1 - p) / (1 - pm)  # -(w * dlog(1-pm)/dx) with dpm/dx = p(1-p)
    assert x.grad.item() == pytest.approx(expected, rel=1e-9)


def test_unsym_switches_branch_at_p_025():
    # p' = sigmoid(x - 1.1) = 0.25 at x = 1.1 + log(1/3): just above uses log p', just below the focused term.
    x0 = 1.1 + math.log(1 / 3)
    above = unsymmetrical(torch.tensor([[x0 + 1e-6]], dtype=torch.float64), torch.ones(1, 1))
    below = unsymmetrical(torch.tensor([[x0 - 1e-6]], dtype=torch.float64), torch.ones(1, 1))
    assert above.item() == pytest.approx(-math.log(0.25), rel=1e-4)
    assert below.item() == pytest.approx(-(0.75 ** 3) * math.log(0.25), rel=1e-4)


def test_negatives_below_clip_cost_nothing():
    x = torch.tensor([[-4.0]], dtype=torch.float64)  # sigmoid < 0.05
    assert unsymmetrical(x, torch.zeros(1, 1)).item() == 0.0
    assert asl(x, torch.zeros(1, 1)).item() == 0.0


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("hinge")


@pytest.mark.parametrize("name", ["bce", "focal", "asl", "unsym"])
def test_losses_run_in_float32_under_half_precision_logits(name):
    """Mixed precision hands the losses float16 logits; the loss must be the float32 one, finite."""
    torch.manual_seed(0)
    logits = (torch.randn(8, 6) * 12).half()  # large logits: p near 0 and 1, where float16 logs underflow
    targets = (torch.rand(8, 6) > 0.5).float()
    half = get_loss(name)(logits, targets)
    full = get_loss(name)(logits.float(), targets)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert torch.allclose(half, full)
