"""Evaluation metrics for self-supervised embeddings.

Every public function validates its inputs with :func:`check_embeddings` / :func:`check_labels` and
raises :class:`workflow.errors.StrataError` (naming the offending argument) instead of returning a
number that could be silently wrong.

Metrics:

* :func:`clustering_accuracy`, :func:`cluster_scores`: k-means on L2-normalised embeddings, scored
  with Hungarian-matched accuracy, NMI, ARI and purity.
* :func:`retrieval_scores`: leave-one-out exact cosine retrieval (Precision@1, Recall@k, R-Precision,
  MAP@R) following Musgrave et al. 2020.
* :func:`weighted_knn_accuracy`: DINO's temperature-weighted k-NN classifier.
* :func:`linear_probe_accuracy`: standardised logistic-regression probe.
* :func:`rankme`: effective rank of the embedding matrix (Garrido et al. 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.preprocessing import StandardScaler

from workflow.errors import StrataError

__all__ = [
    "check_embeddings",
    "check_labels",
    "cluster_scores",
    "clustering_accuracy",
    "linear_probe_accuracy",
    "rankme",
    "retrieval_scores",
    "weighted_knn_accuracy",
]

#: Number of test queries searched at once by :func:`weighted_knn_accuracy` (bounds memory).
_KNN_QUERY_BATCH = 4096
#: Row-block size of the blocked QR used by :func:`rankme` (bounds memory for tall matrices).
_RANKME_BLOCK = 8192


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def check_embeddings(embeddings: np.ndarray, name: str) -> np.ndarray:
    """Validate an embedding matrix and return it as float32, C-contiguous.

    Args:
        embeddings: Array-like of shape ``(n, d)`` with real numbers.
        name: Name of the argument, used in error messages (e.g. ``"embeddings"``).

    Returns:
        The embeddings as a C-contiguous ``float32`` array of shape ``(n, d)`` (no copy if the
        input already is one).

    Raises:
        StrataError: If the array is not 2-D, has no rows or no columns, is not real-valued, or has
            rows containing NaN/inf (also values too large for float32); the message gives the
            number of bad rows and the first few row indices.
    """
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise StrataError(
            f"{name} must be a 2-D array (n_samples, dim), got {arr.ndim}-D with shape {arr.shape}.",
            where=name,
            fix="Pass one embedding vector per row; reshape a single vector with x.reshape(1, -1).",
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise StrataError(
            f"{name} is empty (shape {arr.shape}).",
            where=name,
            fix="Check that the embedding step produced vectors for the selected samples.",
        )
    if arr.dtype.kind not in "biuf":
        raise StrataError(
            f"{name} must hold real numbers, got dtype {arr.dtype}.",
            where=name,
            fix="Convert the embeddings to a float array (e.g. np.asarray(x, dtype=np.float32)).",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad_rows.size:
        first = ", ".join(str(i) for i in bad_rows[:5])
        raise StrataError(
            f"{name} has {bad_rows.size} of {out.shape[0]} rows with NaN/inf values (or values too large "
            f"for float32), e.g. rows [{first}].",
            where=name,
            fix="Drop or recompute those samples (a diverged model often produces NaN embeddings).",
        )
    return out


def check_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    """Validate a label vector and return it as int64.

    Args:
        labels: Array-like of shape ``(n,)`` with non-negative integer class ids. Float arrays are
            accepted only if every value is a whole number (e.g. ints stored as float).
        n: Required length (the number of rows of the matching embeddings).
        name: Name of the argument, used in error messages (e.g. ``"labels"``).

    Returns:
        The labels as a 1-D ``int64`` array of length ``n``.

    Raises:
        StrataError: If the labels are not 1-D, are empty, have the wrong length, are not numeric,
            contain missing values (NaN/inf), non-integer values or negative values.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise StrataError(
            f"{name} must be a 1-D array of class ids, got {arr.ndim}-D with shape {arr.shape}.",
            where=name,
            fix="Pass one integer class id per sample (flatten column vectors with .ravel()).",
        )
    if arr.shape[0] == 0:
        raise StrataError(f"{name} is empty.", where=name, fix="Provide one class id per sample.")
    if arr.shape[0] != n:
        raise StrataError(
            f"{name} has length {arr.shape[0]} but {n} samples were given.",
            where=name,
            fix="Make sure labels and embeddings refer to the same samples, in the same order.",
        )
    if arr.dtype.kind == "f":
        missing = int(np.count_nonzero(~np.isfinite(arr)))
        if missing:
            raise StrataError(
                f"{name} has {missing} missing (NaN/inf) values.",
                where=name,
                fix="Drop unlabelled samples before evaluation.",
            )
        if not np.all(arr == np.round(arr)):
            raise StrataError(
                f"{name} contains non-integer values.",
                where=name,
                fix="Class ids must be integers; encode classes with np.unique(y, return_inverse=True).",
            )
    elif arr.dtype.kind not in "biu":
        raise StrataError(
            f"{name} must hold integer class ids, got dtype {arr.dtype} (object arrays often hide "
            f"missing values).",
            where=name,
            fix="Drop unlabelled samples and encode classes with np.unique(y, return_inverse=True).",
        )
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8 and arr.max() > np.iinfo(np.int64).max:
        raise StrataError(f"{name} has class ids too large for int64.", where=name,
                          fix="Re-encode classes with np.unique(y, return_inverse=True).")
    out = arr.astype(np.int64)
    negative = int(np.count_nonzero(out < 0))
    if negative:
        raise StrataError(
            f"{name} has {negative} negative values (missing-label markers such as -1 are not allowed).",
            where=name,
            fix="Drop unlabelled samples before evaluation; class ids must be >= 0.",
        )
    return out


def _check_int(value: object, name: str, minimum: int) -> int:
    """Return ``value`` as int if it is an integer >= ``minimum``, else raise StrataError."""
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise StrataError(
            f"{name} must be an integer >= {minimum}, got {value!r}.",
            where=name,
            fix=f"Set {name} to an integer >= {minimum}.",
        )
    return int(value)


def _l2_normalize(x: np.ndarray, name: str) -> np.ndarray:
    """Return the rows of ``x`` scaled to unit L2 norm (float32, C-contiguous).

    Norms are computed in float64 so tiny-but-nonzero vectors do not underflow.

    Raises:
        StrataError: If a row has zero norm (its cosine similarity is undefined).
    """
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        first = ", ".join(str(i) for i in zero[:5])
        raise StrataError(
            f"{name} has {zero.size} all-zero rows (e.g. rows [{first}]); cosine similarity is undefined "
            f"for them.",
            where=name,
            fix="Drop or recompute those samples (all-zero vectors usually mean a collapsed or broken model).",
        )
    return np.ascontiguousarray((x / norms[:, None]).astype(np.float32))


def _contingency(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
    """Count matrix ``C[i, j] = |{s : a_s = i-th distinct a, b_s = j-th distinct b}|``."""
    _, ia = np.unique(labels_a, return_inverse=True)
    _, ib = np.unique(labels_b, return_inverse=True)
    n_b = int(ib.max()) + 1
    counts = np.bincount(ia * n_b + ib, minlength=(int(ia.max()) + 1) * n_b)
    return counts.reshape(-1, n_b)


# --------------------------------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------------------------------


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
) -> dict[str, float]:
    """k-means clustering quality of L2-normalised embeddings.

    The rows are L2-normalised (so Euclidean k-means approximates spherical / cosine k-means),
    clustered with ``KMeans(n_clusters=K, n_init=n_init, random_state=seed)`` and scored with:

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
        seed: ``random_state`` of k-means.
        n_init: Number of k-means restarts.

    Returns:
        ``{"acc", "nmi", "ari", "purity"}`` as floats.

    Raises:
        StrataError: On invalid embeddings/labels, fewer than 2 classes, ``K`` < 1 or ``K`` > N,
            all-zero embedding rows, or ``n_init`` < 1.
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
    k = n_classes if n_clusters is None else _check_int(n_clusters, "n_clusters", 1)
    if k > x.shape[0]:
        raise StrataError(
            f"n_clusters={k} is larger than the number of points ({x.shape[0]}).",
            where="n_clusters",
            fix="Use fewer clusters or more samples.",
        )
    n_init = _check_int(n_init, "n_init", 1)
    xn = _l2_normalize(x, "embeddings")
    pred = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(xn)
    counts = _contingency(pred, y)
    return {
        "acc": clustering_accuracy(y, pred),
        "nmi": float(normalized_mutual_info_score(y, pred, average_method="arithmetic")),
        "ari": float(adjusted_rand_score(y, pred)),
        "purity": float(counts.max(axis=1).sum() / y.shape[0]),
    }


# --------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------


def _drop_self(neighbors: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """Remove each query's own id from its neighbour list.

    Args:
        neighbors: ``(b, k)`` neighbour ids per query (as returned by a faiss search on the database
            that contains the queries).
        query_ids: ``(b,)`` database id of each query.

    Returns:
        ``(b, k - 1)`` neighbour ids. If a query's own id is not in its list (possible when exact
        duplicates tie with it), the last neighbour is dropped instead, so every query keeps
        ``k - 1`` other items in rank order.
    """
    drop = neighbors == query_ids[:, None]
    drop[~drop.any(axis=1), -1] = True
    b, k = neighbors.shape
    return neighbors[~drop].reshape(b, k - 1)


def retrieval_scores(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 4096,
) -> dict[str, float]:
    """Leave-one-out exact cosine retrieval metrics (Musgrave et al. 2020).

    Every item is a query against all *other* items, ranked by cosine similarity (exact search with
    ``faiss.IndexFlatIP`` on L2-normalised float32 vectors, in query batches of ``batch_size``). For a
    query ``q`` with label ``y`` let ``rel(i) = 1`` if the ``i``-th retrieved item has label ``y``,
    and ``R`` = number of other items with label ``y``. Queries with ``R = 0`` are excluded. Per
    query:

    * ``precision_at_1 = rel(1)``
    * ``recall_at_k = 1[Σ_{i≤k} rel(i) ≥ 1]`` (metric-learning convention, a.k.a. hit rate)
    * ``r_precision = (1/R) Σ_{i≤R} rel(i)``
    * ``map_at_r = (1/R) Σ_{i≤R} P(i)·rel(i)`` with ``P(i) = (1/i) Σ_{j≤i} rel(j)``

    and each metric is the mean over the included queries.

    The search retrieves ``k_search = max(max(ks), max_class_count - 1) + 1`` neighbours (capped at
    ``N``), then drops the query itself (if the query is not in its own list because exact duplicates
    tie with it, the last neighbour is dropped instead). Memory is ``O(N·d + batch_size·k_search)``.

    References:
        Musgrave, Belongie & Lim 2020, "A Metric Learning Reality Check" (ECCV).

    Args:
        embeddings: Array of shape ``(N, d)``.
        labels: Class ids, shape ``(N,)``.
        ks: Cut-offs for ``recall_at_k``; each must satisfy ``1 <= k <= N - 1``.
        batch_size: Number of queries searched at once.

    Returns:
        ``{"precision_at_1", "recall_at_<k>" for each k, "r_precision", "map_at_r", "n_queries",
        "n_queries_excluded"}``; the two counts are whole numbers stored as floats.

    Raises:
        StrataError: On invalid embeddings/labels, fewer than 2 points, an empty ``ks`` or a ``k``
            outside ``[1, N - 1]``, ``batch_size`` < 1, all-zero rows, or if every class is a
            singleton (no query has a relevant item).
    """
    x = check_embeddings(embeddings, "embeddings")
    n = x.shape[0]
    y = check_labels(labels, n, "labels")
    if n < 2:
        raise StrataError(
            f"retrieval needs at least 2 points, got {n}.",
            where="embeddings",
            fix="Evaluate on more samples.",
        )
    ks_list = [_check_int(k, "ks", 1) for k in ks]
    if not ks_list:
        raise StrataError("ks is empty.", where="ks", fix="Give at least one cut-off, e.g. ks=(1, 5).")
    too_big = [k for k in ks_list if k > n - 1]
    if too_big:
        raise StrataError(
            f"ks contains {too_big}, larger than the {n - 1} other items available per query.",
            where="ks",
            fix=f"Use cut-offs <= {n - 1} or evaluate on more samples.",
        )
    ks_list = list(dict.fromkeys(ks_list))
    batch_size = _check_int(batch_size, "batch_size", 1)

    _, y_idx, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    r_all = class_counts[y_idx] - 1  # number of OTHER items with the query's label
    k_search = min(n, max(max(ks_list), int(class_counts.max()) - 1) + 1)
    n_ret = k_search - 1  # neighbours kept per query after dropping self

    xn = _l2_normalize(x, "embeddings")
    index = faiss.IndexFlatIP(xn.shape[1])
    index.add(xn)

    ranks = np.arange(1, n_ret + 1, dtype=np.float64)
    # Per-query values (NaN = excluded); averaged once at the end so the result does not depend on
    # batch_size (summation order).
    p1 = np.full(n, np.nan)
    rp = np.full(n, np.nan)
    mapr = np.full(n, np.nan)
    recall = {k: np.full(n, np.nan) for k in ks_list}
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        query_ids = np.arange(start, stop)
        r = r_all[start:stop]
        keep = r > 0
        if not keep.any():
            continue
        _, nbrs = index.search(xn[start:stop], k_search)
        if (nbrs < 0).any():  # faiss pads with -1 when it finds fewer than k_search results
            raise StrataError(
                "faiss returned fewer neighbours than requested; the similarity search is unreliable.",
                where="embeddings",
                fix="Check the embeddings for degenerate values.",
            )
        nbrs = _drop_self(nbrs, query_ids)[keep]
        ids = query_ids[keep]
        r = r[keep]
        rel = y_idx[nbrs] == y_idx[ids][:, None]  # (b, n_ret) bool
        rel_r = rel & (ranks[None, :] <= r[:, None])  # relevant and within the first R ranks
        prec_at_i = np.cumsum(rel, axis=1) / ranks[None, :]
        p1[ids] = rel[:, 0]
        rp[ids] = rel_r.sum(axis=1) / r
        mapr[ids] = (prec_at_i * rel_r).sum(axis=1) / r
        for k in ks_list:
            recall[k][ids] = rel[:, :k].any(axis=1)

    included = r_all > 0
    n_queries = int(included.sum())
    if n_queries == 0:
        raise StrataError(
            "every class in labels has a single item, so no query has a relevant item to retrieve.",
            where="labels",
            fix="Evaluate retrieval on data with at least two items per class.",
        )
    out: dict[str, float] = {"precision_at_1": float(p1[included].mean())}
    for k in ks_list:
        out[f"recall_at_{k}"] = float(recall[k][included].mean())
    out["r_precision"] = float(rp[included].mean())
    out["map_at_r"] = float(mapr[included].mean())
    out["n_queries"] = float(n_queries)
    out["n_queries_excluded"] = float(n - n_queries)
    return out


# --------------------------------------------------------------------------------------------------
# Classification probes
# --------------------------------------------------------------------------------------------------


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
    k = _check_int(k, "k", 1)
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
        n_classes = _check_int(n_classes, "n_classes", 1)
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
    index.add(_l2_normalize(x_train, "train_embeddings"))
    xq = _l2_normalize(x_test, "test_embeddings")

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
    max_iter = _check_int(max_iter, "max_iter", 1)
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(max_iter=max_iter, random_state=seed)
    clf.fit(scaler.transform(x_train), y_train)
    pred = clf.predict(scaler.transform(x_test))
    return float(np.mean(pred == y_test))


# --------------------------------------------------------------------------------------------------
# Representation quality without labels
# --------------------------------------------------------------------------------------------------


def _singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values of ``x`` (float64), via a blocked QR for tall matrices to bound memory.

    For ``n`` rows > block size, ``R`` is updated as ``qr([R; X_block]).R`` so that ``RᵀR = XᵀX``
    and ``R`` (at most ``d × d``) has the same singular values as ``X``.
    """
    n = x.shape[0]
    if n <= _RANKME_BLOCK:
        return np.linalg.svd(x.astype(np.float64), compute_uv=False)
    r = np.zeros((0, x.shape[1]), dtype=np.float64)
    for start in range(0, n, _RANKME_BLOCK):
        block = x[start:start + _RANKME_BLOCK].astype(np.float64)
        r = np.linalg.qr(np.vstack([r, block]), mode="r")
    return np.linalg.svd(r, compute_uv=False)


def rankme(embeddings: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe: the smooth effective rank of the embedding matrix (Garrido et al. 2023).

    With singular values ``σ_1..σ_m`` of the (uncentred) ``N × d`` matrix, ``m = min(N, d)``:

        p_k = σ_k / Σ_j σ_j + ε,      RankMe = exp(-Σ_k p_k log p_k)

    It lies in ``[1, m]`` (up to ``ε`` effects) and equals ``r`` for a rank-``r`` matrix with equal
    non-zero singular values. Singular values are computed in float64.

    References:
        Garrido, Balestriero, Najman & LeCun 2023, "RankMe: Assessing the Downstream Performance of
        Pretrained Self-Supervised Representations by Their Rank" (ICML); Roy & Vetterli 2007,
        "The effective rank: a measure of effective dimensionality".

    Args:
        embeddings: Array of shape ``(N, d)``.
        eps: Smoothing constant ``ε >= 0``.

    Returns:
        The RankMe value.

    Raises:
        StrataError: On invalid embeddings, an all-zero matrix (rank 0, RankMe undefined), or a
            negative / non-finite ``eps``.
    """
    x = check_embeddings(embeddings, "embeddings")
    if isinstance(eps, bool) or not (isinstance(eps, Real) and np.isfinite(eps) and eps >= 0):
        raise StrataError(
            f"eps must be a finite number >= 0, got {eps!r}.",
            where="eps",
            fix="Use the default eps=1e-7.",
        )
    sigma = _singular_values(x)
    total = float(sigma.sum())
    if total == 0.0:
        raise StrataError(
            "embeddings is an all-zero matrix; RankMe is undefined (rank 0).",
            where="embeddings",
            fix="Check the model: all-zero embeddings mean complete collapse or a broken export.",
        )
    p = sigma / total + eps
    p = p[p > 0]  # only reachable with eps = 0; uses the limit 0·log 0 = 0
    return float(np.exp(-np.sum(p * np.log(p))))
