"""Tests for workflow.evaluate.probes (weighted kNN, linear probe; small, fast, independent checks)."""

from __future__ import annotations

import numpy as np
import pytest
from metric_helpers import angles, blobs, brute_force_knn

from workflow.errors import StrataError
from workflow.evaluate.probes import linear_probe_accuracy, weighted_knn_accuracy

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# weighted kNN
# --------------------------------------------------------------------------------------------------


def test_weighted_knn_hand_case_weights_decide():
    # Query at 0deg. Class 0: one point at 0deg (s = 1). Class 1: two points at +-30deg (s = 0.866).
    # T = 0.07: e^{1/0.07} vs 2 e^{0.866/0.07} -> ratio e^{1.91}/2 ~ 3.4 -> class 0 wins despite fewer votes.
    # T = 10:   e^{0.1} = 1.105 vs 2 e^{0.0866} = 2.18 -> class 1 (majority) wins.
    x_tr = angles([0, 30, -30])
    y_tr = np.array([0, 1, 1])
    x_te = angles([0])
    assert weighted_knn_accuracy(x_tr, y_tr, x_te, np.array([0]), k=3, temperature=0.07) == 1.0
    assert weighted_knn_accuracy(x_tr, y_tr, x_te, np.array([1]), k=3, temperature=10.0) == 1.0


def test_weighted_knn_tie_goes_to_smallest_class():
    # Exactly symmetric neighbours of different classes -> equal scores -> smallest class id (1).
    x_tr = angles([30, -30])
    y_tr = np.array([3, 1])
    assert weighted_knn_accuracy(x_tr, y_tr, angles([0]), np.array([1]), k=2) == 1.0


def test_weighted_knn_matches_brute_force():
    rng = np.random.default_rng(5)
    x_tr = rng.standard_normal((80, 6)).astype(np.float32)
    y_tr = rng.integers(0, 3, 80)
    x_te = rng.standard_normal((40, 6)).astype(np.float32)
    y_te = rng.integers(0, 3, 40)
    for k, t in ((1, 0.07), (5, 0.07), (20, 0.5)):
        ref = brute_force_knn(x_tr, y_tr, x_te, y_te, k, t)
        assert weighted_knn_accuracy(x_tr, y_tr, x_te, y_te, k=k, temperature=t, n_classes=3) == ref


def test_weighted_knn_k_larger_than_training_points():
    x, y = blobs(3, 2, 3, seed=0)
    with pytest.raises(StrataError, match="k=10 is larger than the number of training points"):
        weighted_knn_accuracy(x, y, x, y, k=10)


# --------------------------------------------------------------------------------------------------
# linear probe
# --------------------------------------------------------------------------------------------------


def test_linear_probe_separable_blobs():
    x, y = blobs(40, 3, 5, seed=7, std=0.5)
    acc = linear_probe_accuracy(x[:80], y[:80], x[80:], y[80:], max_iter=200)
    assert acc > 0.9


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, pattern",
    [(np.ones(5), "train_embeddings must be a 2-D"), (np.zeros((0, 3)), "train_embeddings is empty")],
)
def test_bad_embedding_shapes(bad, pattern):
    with pytest.raises(StrataError, match=pattern):
        linear_probe_accuracy(bad, np.zeros(5, dtype=int), np.ones((2, 3)), np.zeros(2, dtype=int))


def test_train_test_dimension_mismatch():
    y = np.array([0, 1, 0, 1])
    for fn in (weighted_knn_accuracy, linear_probe_accuracy):
        with pytest.raises(StrataError, match="test_embeddings has dimension 3") as err:
            fn(np.ones((4, 2)), y, np.ones((4, 3)), y)
        assert err.value.where == "test_embeddings"
