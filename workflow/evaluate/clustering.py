"""Clustering protocol: k-means on the embeddings, scored against the labels (ACC, NMI, ARI, purity).

* :func:`clustering_accuracy`: Hungarian-matched accuracy of a partition.
* :func:`cluster_scores`: k-means (scikit-learn or Strata's torch k-means) on L2-normalised
  embeddings, scored with Hungarian-matched accuracy, NMI, ARI and purity.

Inputs are validated (:func:`workflow.measures.check_embeddings`,
:func:`workflow.evaluate.checks.check_labels`); bad ones raise :class:`workflow.errors.StrataError`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from workflow.config import enum
from workflow.errors import StrataError
from workflow.evaluate.checks import check_labels
from workflow.measures import check_embeddings, check_int, l2_normalize

__all__ = ["cluster_scores", "clustering_accuracy"]

#: k-means implementations accepted by :func:`cluster_scores`.
_CLUSTER_BACKENDS = enum("evaluation", "cluster_backend")


def _contingency(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
    """Count matrix ``C[i, j] = |{s : a_s = i-th distinct a, b_s = j-th distinct b}|``."""
    _, ia = np.unique(labels_a, return_inverse=True)
    _, ib = np.unique(labels_b, return_inverse=True)
    n_b = int(ib.max()) + 1
    counts = np.bincount(ia * n_b + ib, minlength=(int(ia.max()) + 1) * n_b)
    return counts.reshape(-1, n_b)


def clustering_accuracy(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Unsupervised clustering accuracy (ACC) with Hungarian matching.

    Build the cluster × class count matrix ``C[k, c] = |{i : pred_i = k, true_i = c}|`` and find the
    one-to-one assignment ``m`` of clusters to classes that maximises the matched count:

        ACC = max_m (1/N) Σ_i 1[true_i = m(pred_i)]

    solved exactly with ``scipy.optimize.linear_sum_assignment(C, maximize=True)``. When the number
    of clusters differs from the number of classes the matrix is rectangular; samples in clusters
    (or of classes) left unmatched count as wrong.

    References:
        Yang et al. 2010, "Image Clustering Using Local Discriminant Models and Global Integration";
        Van Gansbeke et al. 2020, "SCAN: Learning to Classify Images without Labels" (ECCV).

    Args:
        labels_true: Ground-truth class ids, shape ``(N,)``.
        labels_pred: Cluster ids, shape ``(N,)``; the ids are arbitrary non-negative integers.

    Returns:
        ACC in ``[0, 1]``.

    Raises:
        StrataError: If either label vector is invalid or their lengths differ.
    """
    y_true = check_labels(labels_true, int(np.asarray(labels_true).size), "labels_true")
    y_pred = check_labels(labels_pred, y_true.shape[0], "labels_pred")
    counts = _contingency(y_pred, y_true)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / y_true.shape[0])


def cluster_scores(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_clusters: int | None = None,
    seed: int = 0,
    n_init: int = 10,
    backend: str = "sklearn",
    max_iter: int = 300,
) -> dict[str, float]:
    """k-means clustering quality of L2-normalised embeddings.

    The rows are L2-normalised (so Euclidean k-means approximates spherical / cosine k-means) and
    clustered into ``K`` clusters by one of two backends:

    * ``"sklearn"``: ``KMeans(n_clusters=K, n_init=n_init, random_state=seed, max_iter=max_iter)``;
    * ``"strata"``: :func:`workflow.kmeans.kmeans` (torch, greedy k-means++, Lloyd until the
      assignment is a fixed point or ``max_iter`` updates) run with seeds ``seed, ..., seed + n_init - 1``;
      the run with the lowest inertia ``Σ_i ‖x_i − c_{a(i)}‖²`` is kept (ties: the first).

    ``K`` may exceed the number of classes ("over-clustering", as in SCAN's overclustering heads):
    ACC then matches only as many clusters as there are classes (rectangular Hungarian), while
    purity, NMI and ARI use every cluster. The partition is scored with:

    * ``acc``: Hungarian-matched accuracy (see :func:`clustering_accuracy`).
    * ``nmi``: normalised mutual information, ``I(Y; Ŷ) / ((H(Y) + H(Ŷ)) / 2)`` (sklearn,
      arithmetic normalisation).
    * ``ari``: adjusted Rand index (Hubert & Arabie 1985).
    * ``purity``: ``(1/N) Σ_k max_c |cluster_k ∩ class_c|``.

    References:
        Van Gansbeke et al. 2020, "SCAN: Learning to Classify Images without Labels";
        Caron et al. 2018, "Deep Clustering for Unsupervised Learning of Visual Features".

    Args:
        embeddings: Array of shape ``(N, d)``.
        labels: Ground-truth class ids, shape ``(N,)``.
        n_clusters: Number of clusters ``K``; defaults to the number of distinct labels.
        seed: ``random_state`` of k-means (``"sklearn"``) or the first seed (``"strata"``).
        n_init: Number of k-means restarts.
        backend: ``"sklearn"`` or ``"strata"``.
        max_iter: Maximum number of Lloyd iterations per restart.

    Returns:
        ``{"acc", "nmi", "ari", "purity"}`` as floats.

    Raises:
        StrataError: On invalid embeddings/labels, fewer than 2 classes, ``K`` < 1 or ``K`` > N,
            all-zero embedding rows, ``n_init`` < 1, ``max_iter`` < 1 or an unknown ``backend``.
    """
    x = check_embeddings(embeddings, "embeddings")
    y = check_labels(labels, x.shape[0], "labels")
    n_classes = int(np.unique(y).size)
    if n_classes < 2:
        raise StrataError(
            f"labels has only {n_classes} distinct class; clustering scores need at least 2.",
            where="labels",
            fix="Evaluate on a data set with at least two classes.",
        )
    k = n_classes if n_clusters is None else check_int(n_clusters, "n_clusters", 1)
    if k > x.shape[0]:
        raise StrataError(
            f"n_clusters={k} is larger than the number of points ({x.shape[0]}).",
            where="n_clusters",
            fix="Use fewer clusters or more samples.",
        )
    n_init = check_int(n_init, "n_init", 1)
    max_iter = check_int(max_iter, "max_iter", 1)
    if backend not in _CLUSTER_BACKENDS:
        raise StrataError(
            f"backend must be one of {list(_CLUSTER_BACKENDS)}, got {backend!r}.",
            where="backend",
            fix='Use backend="sklearn" (scikit-learn KMeans) or backend="strata" (workflow.kmeans).',
        )
    xn = l2_normalize(x, "embeddings")
    if backend == "sklearn":
        pred = KMeans(n_clusters=k, n_init=n_init, random_state=seed, max_iter=max_iter).fit_predict(xn)
    else:
        from workflow.kmeans import KMeansOptions, kmeans

        seed = check_int(seed, "seed", 0)
        best = None
        for run_seed in range(seed, seed + n_init):
            result = kmeans(xn, k, KMeansOptions(n_iters=max_iter, seed=run_seed))
            if best is None or result.inertia < best.inertia:
                best = result
        pred = np.asarray(best.assignment, dtype=np.int64)
    counts = _contingency(pred, y)
    return {
        "acc": clustering_accuracy(y, pred),
        "nmi": float(normalized_mutual_info_score(y, pred, average_method="arithmetic")),
        "ari": float(adjusted_rand_score(y, pred)),
        "purity": float(counts.max(axis=1).sum() / y.shape[0]),
    }
