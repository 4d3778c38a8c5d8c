import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score

from tagcap.metrics.annotation import annotation_metrics, per_label_scores

# 4 images x 3 labels, worked by hand below.
TRUTH = np.array([[1, 0, 1],
                  [0, 1, 0],
                  [1, 1, 0],
                  [0, 0, 1]], bool)
PRED = np.array([[1, 0, 0],
                 [0, 1, 1],
                 [1, 0, 0],
                 [0, 0, 0]], bool)


def test_hand_computed_example():
    m = annotation_metrics(PRED, TRUTH)
    # labels: 0: TP2 PRED2 GT2 -> P1 R1; 1: TP1 PRED1 GT2 -> P1 R.5; 2: TP0 PRED1 GT2 -> P0 R0
    assert m["per_label"]["P"] == pytest.approx(2 / 3)
    assert m["per_label"]["R"] == pytest.approx(0.5)
    assert m["per_label"]["F1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # harmonic mean of means
    # images: P = 1, 1/2, 1, 0 (no prediction) ; R = 1/2, 1, 1/2, 0
    assert m["per_image"]["P"] == pytest.approx(2.5 / 4)
    assert m["per_image"]["R"] == pytest.approx(2 / 4)
    # overall: TP 3, PRED 4, GT 6
    assert m["overall"]["P"] == pytest.approx(3 / 4)
    assert m["overall"]["R"] == pytest.approx(3 / 6)
    assert m["overall"]["F1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert m["n_plus"] == 2


def test_f1_is_harmonic_mean_of_means_not_mean_of_f1s():
    m = annotation_metrics(PRED, TRUTH)
    mean_of_f1 = per_label_scores(PRED, TRUTH)["F1"].mean()
    assert m["per_label"]["F1"] != pytest.approx(mean_of_f1)


def test_against_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    truth = rng.random((60, 9)) < 0.3
    truth[np.arange(60), rng.integers(0, 9, 60)] = True  # every image has a label
    pred = rng.random((60, 9)) < 0.35
    scores = rng.random((60, 9))
    m = annotation_metrics(pred, truth, scores)
    kw = dict(zero_division=0)
    assert m["per_label"]["P"] == pytest.approx(precision_score(truth, pred, average="macro", **kw))
    assert m["per_label"]["R"] == pytest.approx(recall_score(truth, pred, average="macro", **kw))
    assert m["overall"]["P"] == pytest.approx(precision_score(truth, pred, average="micro", **kw))
    assert m["overall"]["R"] == pytest.approx(recall_score(truth, pred, average="micro", **kw))
    assert m["per_image"]["P"] == pytest.approx(precision_score(truth, pred, average="samples", **kw))
    assert m["per_image"]["R"] == pytest.approx(recall_score(truth, pred, average="samples", **kw))
    assert m["mAP"] == pytest.approx(average_precision_score(truth, scores, average="macro"))


def test_map_skips_labels_without_positives_and_top1():
    truth = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], bool)
    scores = np.array([[.9, .1, .5], [.2, .8, .1], [.3, .6, .2]])
    m = annotation_metrics(scores > .5, truth, scores)
    assert m["mAP"] == pytest.approx(np.mean([average_precision_score(truth[:, c], scores[:, c]) for c in (0, 1)]))
    assert m["top1"] == pytest.approx(2 / 3)  # image 1's best label (1) is wrong


def test_images_without_truth_are_left_out_of_per_image_means():
    truth = np.array([[1, 0], [0, 0]], bool)
    pred = np.array([[1, 0], [0, 1]], bool)
    m = annotation_metrics(pred, truth)
    assert m["per_image"]["P"] == 1.0 and m["per_image"]["R"] == 1.0
    assert m["overall"]["P"] == 0.5  # the stray prediction still counts where it belongs


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        annotation_metrics(np.zeros((2, 3)), np.zeros((2, 4)))
