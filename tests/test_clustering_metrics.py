"""Tests for workflow.evaluate.clustering (k-means ACC / NMI / ARI / purity; small, fast, independent checks)."""

from __future__ import annotations

import numpy as np
import pytest
from metric_helpers import blobs
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from workflow.errors import StrataError
from workflow.evaluate.clustering import cluster_scores, clustering_accuracy

# --------------------------------------------------------------------------------------------------
# clustering accuracy
# --------------------------------------------------------------------------------------------------


def test_acc_permuted_labels_is_one():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    perm = np.array([2, 0, 1])  # cluster id = perm[class]
    assert clustering_accuracy(y, perm[y]) == 1.0


def test_acc_hand_computed():
    # C (cluster x class): cluster 1 -> {class 0: 2, class 1: 1}, cluster 0 -> {class 1: 1}.
    # Best matching 1->0, 0->1 gives 2 + 1 = 3 correct of 4 = 0.75.
    assert clustering_accuracy(np.array([0, 0, 1, 1]), np.array([1, 1, 1, 0])) == pytest.approx(0.75)


def test_acc_rectangular():
    # 3 clusters, 2 classes: best is 0->0 (2) and 2->1 (3); cluster 1 is unmatched -> 5/6.
    y_true = np.array([0, 0, 0, 1, 1, 1])
    assert clustering_accuracy(y_true, np.array([0, 0, 1, 2, 2, 2])) == pytest.approx(5 / 6)
    # 2 clusters, 3 classes: cluster 0 -> class 0 or 1 (1), cluster 1 -> class 2 (2) -> 3/4.
    assert clustering_accuracy(np.array([0, 1, 2, 2]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # Arbitrary (non-contiguous) ids behave the same.
    assert clustering_accuracy(np.array([3, 3, 7, 7]), np.array([40, 40, 9, 9])) == 1.0


# --------------------------------------------------------------------------------------------------
# cluster_scores
# --------------------------------------------------------------------------------------------------


def test_cluster_scores_match_sklearn_on_blobs():
    x, y = blobs(30, 3, 6, seed=1)
    scores = cluster_scores(x, y, seed=0, n_init=3)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pred = KMeans(n_clusters=3, n_init=3, random_state=0).fit_predict(xn)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(y, pred), abs=1e-12)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(y, pred), abs=1e-12)
    assert scores["acc"] == 1.0
    assert scores["purity"] == 1.0
    assert scores["nmi"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)


def test_cluster_scores_more_clusters_than_classes():
    x, y = blobs(20, 2, 4, seed=2)
    scores = cluster_scores(x, y, n_clusters=4, n_init=2)
    assert scores["purity"] == 1.0  # splitting a pure blob keeps clusters pure
    assert scores["acc"] < 1.0  # but only 2 of the 4 clusters can be matched


def test_label_length_mismatch():
    with pytest.raises(StrataError, match="labels has length 4 but 5") as err:
        cluster_scores(np.ones((5, 2)), np.array([0, 1, 0, 1]))
    assert err.value.where == "labels"


def test_more_clusters_than_points():
    x, y = blobs(3, 2, 3, seed=0)
    with pytest.raises(StrataError, match="n_clusters=7"):
        cluster_scores(x, y, n_clusters=7)


def test_fewer_than_two_classes():
    with pytest.raises(StrataError, match="labels has only 1 distinct class"):
        cluster_scores(np.random.default_rng(0).standard_normal((6, 3)), np.zeros(6, dtype=int))


# --------------------------------------------------------------------------------------------------
# cluster_scores, strata backend
# --------------------------------------------------------------------------------------------------


def test_cluster_scores_strata_backend():
    from workflow.kmeans import kmeans

    x, y = blobs(30, 3, 6, seed=8)
    scores = cluster_scores(x, y, backend="strata", n_init=2, seed=3)
    assert scores["acc"] == 1.0 and scores["purity"] == 1.0
    assert scores["nmi"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)
    # Over-clustering: 6 clusters for 3 classes keeps clusters pure, ACC matches only 3 clusters.
    over = cluster_scores(x, y, n_clusters=6, backend="strata", n_init=3, seed=0)
    assert over["purity"] == 1.0 and over["acc"] < 1.0
    # Best of n_init by inertia, against running the seeds by hand.
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    runs = [kmeans(xn, 6, n_iters=300, seed=s) for s in range(3)]
    best = min(runs, key=lambda r: r.inertia)
    assert over["nmi"] == pytest.approx(normalized_mutual_info_score(y, best.assignment), abs=1e-12)
    assert over["acc"] == pytest.approx(clustering_accuracy(y, best.assignment))


def test_cluster_scores_bad_backend():
    x, y = blobs(5, 2, 3, seed=0)
    with pytest.raises(StrataError, match="backend must be one of") as err:
        cluster_scores(x, y, backend="faiss")
    assert err.value.where == "backend"
