"""Classification probes on frozen embeddings: DINO's weighted k-NN classifier and a linear probe.

* :func:`weighted_knn_accuracy`: DINO's temperature-weighted k-NN classifier.
* :func:`linear_probe_accuracy`: standardised logistic-regression probe.

Both train on one labelled split and are scored by top-1 accuracy on another. Inputs are validated
(:func:`workflow.measures.check_embeddings`, :func:`workflow.evaluate.checks.check_labels`); bad ones
raise :class:`workflow.errors.StrataError`.
"""

from __future__ import annotations

from numbers import Real

import faiss
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from workflow.errors import StrataError
from workflow.evaluate.checks import check_labels
from workflow.measures import check_embeddings, check_int, l2_normalize

__all__ = ["linear_probe_accuracy", "weighted_knn_accuracy"]

#: Number of test queries searched at once by :func:`weighted_knn_accuracy` (bounds memory).
_KNN_QUERY_BATCH = 4096


def _check_train_test(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a train/test split of embeddings and labels (matching dimensions)."""
    x_train = check_embeddings(train_embeddings, "train_embeddings")
    y_train = check_labels(train_labels, x_train.shape[0], "train_labels")
    x_test = check_embeddings(test_embeddings, "test_embeddings")
    y_test = check_labels(test_labels, x_test.shape[0], "test_labels")
    if x_train.shape[1] != x_test.shape[1]:
        raise StrataError(
            f"test_embeddings has dimension {x_test.shape[1]} but train_embeddings has {x_train.shape[1]}.",
            where="test_embeddings",
            fix="Embed train and test sets with the same model and layer.",
        )
    return x_train, y_train, x_test, y_test


def weighted_knn_accuracy(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    n_classes: int | None = None,
) -> float:
    """Top-1 accuracy of the temperature-weighted k-NN classifier used by DINO.

    Both sets are L2-normalised; for each test vector the ``k`` most cosine-similar training vectors
    (exact search, ``faiss.IndexFlatIP``) vote with weight ``exp(s_j / T)``:

        score(c) = Σ_{j ∈ top-k} exp(s_j / T) · 1[y_j = c],     ŷ = argmax_c score(c)

    Ties go to the smallest class id. Internally the weights are computed as
    ``exp((s_j - max_j s_j) / T)``, which rescales all scores of a query by the same positive factor
    (same argmax) and cannot overflow or underflow to all zeros for small ``T``.

    References:
        Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination";
        Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (DINO,
        ``eval_knn.py``).

    Args:
        train_embeddings: ``(N_train, d)`` reference embeddings.
        train_labels: ``(N_train,)`` class ids.
        test_embeddings: ``(N_test, d)`` query embeddings.
        test_labels: ``(N_test,)`` class ids.
        k: Number of neighbours, ``1 <= k <= N_train``.
        temperature: Softmax temperature ``T > 0``.
        n_classes: Optional number of classes; if given, every label must be ``< n_classes``
            (a consistency check; the prediction does not depend on it).

    Returns:
        Top-1 accuracy in ``[0, 1]``.

    Raises:
        StrataError: On invalid inputs, a train/test dimension mismatch, ``k`` > ``N_train``, a
            non-positive temperature, all-zero rows, or labels ``>= n_classes``.
    """
    x_train, y_train, x_test, y_test = _check_train_test(
        train_embeddings, train_labels, test_embeddings, test_labels
    )
    k = check_int(k, "k", 1)
    if k > x_train.shape[0]:
        raise StrataError(
            f"k={k} is larger than the number of training points ({x_train.shape[0]}).",
            where="k",
            fix=f"Use k <= {x_train.shape[0]}.",
        )
    if isinstance(temperature, bool) or not (
        isinstance(temperature, Real) and np.isfinite(temperature) and temperature > 0
    ):
        raise StrataError(
            f"temperature must be a positive finite number, got {temperature!r}.",
            where="temperature",
            fix="Use e.g. temperature=0.07 (the DINO default).",
        )
    if n_classes is not None:
        n_classes = check_int(n_classes, "n_classes", 1)
        for name, yy in (("train_labels", y_train), ("test_labels", y_test)):
            if yy.max() >= n_classes:
                raise StrataError(
                    f"{name} contains class id {int(yy.max())} but n_classes={n_classes}.",
                    where=name,
                    fix="Set n_classes to the true number of classes (or leave it as None).",
                )

    classes, y_train_idx = np.unique(y_train, return_inverse=True)
    n_cls = classes.size
    index = faiss.IndexFlatIP(x_train.shape[1])
    index.add(l2_normalize(x_train, "train_embeddings"))
    xq = l2_normalize(x_test, "test_embeddings")

    n_correct = 0
    for start in range(0, xq.shape[0], _KNN_QUERY_BATCH):
        stop = min(start + _KNN_QUERY_BATCH, xq.shape[0])
        sims, nbrs = index.search(xq[start:stop], k)
        sims = sims.astype(np.float64)
        weights = np.exp((sims - sims[:, :1]) / float(temperature))  # faiss sorts descending
        b = stop - start
        scores = np.zeros((b, n_cls), dtype=np.float64)
        np.add.at(scores, (np.repeat(np.arange(b), k), y_train_idx[nbrs].ravel()), weights.ravel())
        pred = classes[np.argmax(scores, axis=1)]  # argmax returns the first (smallest) class on ties
        n_correct += int(np.count_nonzero(pred == y_test[start:stop]))
    return n_correct / xq.shape[0]


def linear_probe_accuracy(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
    max_iter: int = 1000,
) -> float:
    """Top-1 accuracy of a logistic-regression probe on frozen embeddings.

    Features are standardised with a ``StandardScaler`` fitted on the training set only, then a
    multinomial ``LogisticRegression(max_iter=max_iter, random_state=seed)`` (L2, C=1, lbfgs) is
    fitted and evaluated:

        acc = (1/N_test) Σ_i 1[argmax_c softmax(W·z_i + b)_c = y_i],   z_i = (x_i - μ_train) / σ_train

    References:
        Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes";
        Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"
        (linear evaluation protocol).

    Args:
        train_embeddings: ``(N_train, d)`` embeddings to fit the probe on.
        train_labels: ``(N_train,)`` class ids (at least 2 distinct).
        test_embeddings: ``(N_test, d)`` embeddings to evaluate on.
        test_labels: ``(N_test,)`` class ids.
        seed: ``random_state`` of the classifier.
        max_iter: Maximum number of solver iterations.

    Returns:
        Top-1 accuracy in ``[0, 1]``.

    Raises:
        StrataError: On invalid inputs, a train/test dimension mismatch, fewer than 2 training
            classes, or ``max_iter`` < 1.
    """
    x_train, y_train, x_test, y_test = _check_train_test(
        train_embeddings, train_labels, test_embeddings, test_labels
    )
    if np.unique(y_train).size < 2:
        raise StrataError(
            "train_labels has a single class; a linear probe needs at least 2.",
            where="train_labels",
            fix="Use a training split that contains at least two classes.",
        )
    max_iter = check_int(max_iter, "max_iter", 1)
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(max_iter=max_iter, random_state=seed)
    clf.fit(scaler.transform(x_train), y_train)
    pred = clf.predict(scaler.transform(x_test))
    return float(np.mean(pred == y_test))
