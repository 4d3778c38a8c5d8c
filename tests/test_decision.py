import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from tagcap.decision import MCC_GRID, apply_rule, fit_mcc_thresholds, mcc_per_label, threshold, top_k


def test_grid_is_005_to_070():
    assert MCC_GRID[0] == 0.05 and MCC_GRID[-1] == 0.70 and len(MCC_GRID) == 14


def test_threshold_and_top_k():
    s = np.array([[.9, .5, .2, .7], [.1, .3, .35, .2]])
    assert threshold(s, .5).tolist() == [[True, True, False, True], [False, False, False, False]]
    assert top_k(s, 2).tolist() == [[True, False, False, True], [False, True, True, False]]
    assert top_k(s, 10).sum() == 8


def test_mcc_matches_sklearn():
    rng = np.random.default_rng(1)
    truth = rng.random((50, 6)) < .3
    pred = rng.random((50, 6)) < .4
    pred[:, 5] = False  # undefined MCC: sklearn returns 0
    ours = mcc_per_label(pred, truth)
    ref = [matthews_corrcoef(truth[:, c], pred[:, c]) for c in range(6)]
    assert ours == pytest.approx(ref)


def test_fit_mcc_thresholds_picks_the_separating_threshold():
    # label 0: positives score .32-.4, negatives below .25 -> any threshold in (.25, .32] separates;
    # ties go to the smallest: 0.30. label 1 has no positive: keeps the default.
    scores = np.array([[.4, .9], [.32, .1], [.2, .2], [.25, .3], [.05, .6]])
    truth = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [0, 0]], bool)
    th = fit_mcc_thresholds(scores, truth, default=0.5)
    assert th[0] == pytest.approx(0.30)
    assert th[1] == 0.5
    pred = apply_rule(scores, {"kind": "mcc", "thresholds": th})
    assert (pred[:, 0] == truth[:, 0]).all()


def test_unknown_rule():
    with pytest.raises(ValueError):
        apply_rule(np.zeros((1, 1)), {"kind": "nope"})
