"""Evaluation metrics for self-supervised embeddings.

Every public function validates its inputs with :func:`check_embeddings` / :func:`check_labels` and
raises :class:`workflow.errors.StrataError` (naming the offending argument) instead of returning a
number that could be silently wrong.

Metrics:

* :func:`clustering_accuracy`, :func:`cluster_scores`: k-means (scikit-learn or Strata's torch
  k-means) on L2-normalised embeddings, scored with Hungarian-matched accuracy, NMI, ARI and purity.
* :func:`retrieval_scores`: leave-one-out exact cosine retrieval (Precision@1, Recall@k, R-Precision,
  MAP@R) following Musgrave et al. 2020.
* :func:`retrieval_scores_query_gallery`: the same metrics for a query set against a separate gallery.
* :func:`weighted_knn_accuracy`: DINO's temperature-weighted k-NN classifier.
* :func:`linear_probe_accuracy`: standardised logistic-regression probe.
* :func:`rankme`: effective rank of the embedding matrix (Garrido et al. 2023).
* :func:`alignment`, :func:`uniformity`: hypersphere alignment / uniformity (Wang & Isola 2020).
* :func:`vendi_score`: diversity as the exponentiated eigenvalue entropy of the cosine kernel
  (Friedman & Dieng 2023).
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
    "alignment",
    "check_embeddings",
    "check_labels",
    "cluster_scores",
    "clustering_accuracy",
    "linear_probe_accuracy",
    "rankme",
    "retrieval_scores",
    "retrieval_scores_query_gallery",
    "uniformity",
    "vendi_score",
    "weighted_knn_accuracy",
]

#: Number of test queries searched at once by :func:`weighted_knn_accuracy` (bounds memory).
_KNN_QUERY_BATCH = 4096
#: Row-block size of the blocked QR used by :func:`rankme` (bounds memory for tall matrices).
_RANKME_BLOCK = 8192
#: Row-block size of row-wise passes (norms, Gram accumulation); bounds float64 temporaries.
_ROW_BLOCK = 8192
#: Upper bound on the entries of one (query batch × k_search) faiss result block in retrieval.
_MAX_RESULT_ENTRIES = 2**25
#: Upper bound on the entries of one pairwise block in :func:`uniformity` (float64, 32 MiB).
_PAIR_BLOCK_ENTRIES = 2**22
#: k-means implementations accepted by :func:`cluster_scores`.
_CLUSTER_BACKENDS = ("sklearn", "strata")


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


def _row_norms(x: np.ndarray, name: str) -> np.ndarray:
    """Float64 L2 norm of every row of ``x``, in row blocks (no full float64 copy of ``x``).

    Raises:
        StrataError: If a row has zero norm (its cosine similarity is undefined).
    """
    n = x.shape[0]
    norms = np.empty(n, dtype=np.float64)
    for start in range(0, n, _ROW_BLOCK):
        block = x[start:start + _ROW_BLOCK].astype(np.float64)
        norms[start:start + _ROW_BLOCK] = np.sqrt(np.add.reduce(block * block, axis=1))
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        first = ", ".join(str(i) for i in zero[:5])
        raise StrataError(
            f"{name} has {zero.size} all-zero rows (e.g. rows [{first}]); cosine similarity is undefined "
            f"for them.",
            where=name,
            fix="Drop or recompute those samples (all-zero vectors usually mean a collapsed or broken model).",
        )
    return norms


def _l2_normalize(x: np.ndarray, name: str, dtype: type = np.float32) -> np.ndarray:
    """Return the rows of ``x`` scaled to unit L2 norm (C-contiguous, ``dtype``).

    Norms and the division are computed in float64 (so tiny-but-nonzero vectors do not underflow)
    one row block at a time; the only full-size allocation is the output.

    Raises:
        StrataError: If a row has zero norm (its cosine similarity is undefined).
    """
    norms = _row_norms(x, name)
    out = np.empty(x.shape, dtype=dtype)
    for start in range(0, x.shape[0], _ROW_BLOCK):
        stop = start + _ROW_BLOCK
        out[start:stop] = x[start:stop] / norms[start:stop, None]
    return out


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
    k = n_classes if n_clusters is None else _check_int(n_clusters, "n_clusters", 1)
    if k > x.shape[0]:
        raise StrataError(
            f"n_clusters={k} is larger than the number of points ({x.shape[0]}).",
            where="n_clusters",
            fix="Use fewer clusters or more samples.",
        )
    n_init = _check_int(n_init, "n_init", 1)
    max_iter = _check_int(max_iter, "max_iter", 1)
    if backend not in _CLUSTER_BACKENDS:
        raise StrataError(
            f"backend must be one of {list(_CLUSTER_BACKENDS)}, got {backend!r}.",
            where="backend",
            fix='Use backend="sklearn" (scikit-learn KMeans) or backend="strata" (workflow.kmeans).',
        )
    xn = _l2_normalize(x, "embeddings")
    if backend == "sklearn":
        pred = KMeans(n_clusters=k, n_init=n_init, random_state=seed, max_iter=max_iter).fit_predict(xn)
    else:
        from workflow.kmeans import KMeansOptions, kmeans

        seed = _check_int(seed, "seed", 0)
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


def _check_ks(ks: Sequence[int], n_available: int, what: str) -> list[int]:
    """Validate retrieval cut-offs: a non-empty sequence of integers in ``[1, n_available]``, deduplicated."""
    ks_list = [_check_int(k, "ks", 1) for k in ks]
    if not ks_list:
        raise StrataError("ks is empty.", where="ks", fix="Give at least one cut-off, e.g. ks=(1, 5).")
    too_big = [k for k in ks_list if k > n_available]
    if too_big:
        raise StrataError(
            f"ks contains {too_big}, larger than the {n_available} {what} available per query.",
            where="ks",
            fix=f"Use cut-offs <= {n_available} or evaluate on more samples.",
        )
    return list(dict.fromkeys(ks_list))


def _flat_ip_index(xn: np.ndarray) -> faiss.IndexFlatIP:
    """Exact inner-product faiss index holding the (already L2-normalised, float32) rows of ``xn``."""
    index = faiss.IndexFlatIP(xn.shape[1])
    index.add(xn)
    return index


def _ranked_retrieval(
    index: faiss.Index,
    xq: np.ndarray,
    query_cls: np.ndarray,
    gallery_cls: np.ndarray,
    r_all: np.ndarray,
    ks: list[int],
    k_search: int,
    batch_size: int,
    queries_in_gallery: bool,
) -> dict[str, float]:
    """Shared bookkeeping of :func:`retrieval_scores` and :func:`retrieval_scores_query_gallery`.

    Searches the ``k_search`` nearest gallery items of every included query (``r_all > 0``) in
    batches, turns them into the relevance matrix ``rel[q, i] = 1[gallery_cls[nbr_i(q)] = query_cls[q]]``
    and computes, per query, with ``hits(i) = Σ_{j≤i} rel(j)``:

        P@1 = rel(1),  Recall@k = 1[hits(k) ≥ 1],  RP = hits(R) / R,
        MAP@R = (1/R) Σ_{i≤R} rel(i) · hits(i) / i.

    Per-query values are stored and averaged once at the end, so the result does not depend on
    ``batch_size``; the per-query sums are accumulated in rank order (``np.bincount``), also
    independent of the batch.

    Args:
        index: faiss index over the gallery (L2-normalised rows, inner product).
        xq: ``(Q, d)`` L2-normalised float32 queries.
        query_cls: ``(Q,)`` class index of each query (in the gallery's class numbering; any value
            for excluded queries).
        gallery_cls: ``(G,)`` class index of each gallery item.
        r_all: ``(Q,)`` number of relevant gallery items per query (``R``; 0 = excluded query).
        ks: Validated recall cut-offs.
        k_search: Neighbours to retrieve per query; ``k_search - queries_in_gallery >= max(ks, R)``.
        batch_size: Queries per search (reduced so one result block stays ≤ ``_MAX_RESULT_ENTRIES``).
        queries_in_gallery: If true, query ``q`` is gallery item ``q`` and is removed from its own
            neighbour list (leave-one-out).

    Returns:
        The metric dict documented in :func:`retrieval_scores`.
    """
    n_total = xq.shape[0]
    included = np.flatnonzero(r_all > 0)
    n_q = included.size
    contiguous = n_q == n_total
    batch = max(1, min(batch_size, _MAX_RESULT_ENTRIES // k_search))

    p1 = np.empty(n_q, dtype=bool)
    hit_at = {k: np.empty(n_q, dtype=bool) for k in ks}
    rp = np.empty(n_q, dtype=np.float64)
    mapr = np.empty(n_q, dtype=np.float64)
    max_k = max(ks)
    for start in range(0, n_q, batch):
        stop = min(start + batch, n_q)
        b = stop - start
        if contiguous:  # every query is included: slice, no copy
            ids = np.arange(start, stop)
            _, nbrs = index.search(xq[start:stop], k_search)
        else:
            ids = included[start:stop]
            _, nbrs = index.search(xq[ids], k_search)
        if nbrs[:, -1].min() < 0:  # faiss pads with -1 when it finds fewer than k_search results
            raise StrataError(
                "faiss returned fewer neighbours than requested; the similarity search is unreliable.",
                where="embeddings",
                fix="Check the embeddings for degenerate values.",
            )
        r = r_all[ids]
        r_max = int(r.max())
        width = max(max_k, r_max)  # only the first max(k, R) ranks (after removing self) matter
        # Dropping self from the first width + 1 columns gives the same first width others as
        # dropping it from the full list (if self is further down, both keep the first width).
        nbrs = _drop_self(nbrs[:, :width + 1], ids) if queries_in_gallery else nbrs[:, :width]
        rel = gallery_cls[nbrs] == query_cls[ids][:, None]  # (b, width) bool
        hits = np.cumsum(rel, axis=1, dtype=np.int32)
        rows = np.arange(b)
        out = slice(start, stop)
        p1[out] = rel[:, 0]
        for k in ks:
            hit_at[k][out] = hits[:, k - 1] > 0
        rp[out] = hits[rows, r - 1] / r
        # MAP@R: sum hits(i)/i over relevant ranks i <= R, in rank order per query.
        qi, ri = np.nonzero(rel[:, :r_max] & (np.arange(1, r_max + 1) <= r[:, None]))
        prec = hits[qi, ri] / (ri + 1.0)
        mapr[out] = np.bincount(qi, weights=prec, minlength=b) / r

    result: dict[str, float] = {"precision_at_1": float(p1.mean())}
    for k in ks:
        result[f"recall_at_{k}"] = float(hit_at[k].mean())
    result["r_precision"] = float(rp.mean())
    result["map_at_r"] = float(mapr.mean())
    result["n_queries"] = float(n_q)
    result["n_queries_excluded"] = float(n_total - n_q)
    return result


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
    and ``R`` = number of other items with label ``y``. Queries with ``R = 0`` are excluded (and not
    searched). Per query:

    * ``precision_at_1 = rel(1)``
    * ``recall_at_k = 1[Σ_{i≤k} rel(i) ≥ 1]`` (metric-learning convention, a.k.a. hit rate)
    * ``r_precision = (1/R) Σ_{i≤R} rel(i)``
    * ``map_at_r = (1/R) Σ_{i≤R} P(i)·rel(i)`` with ``P(i) = (1/i) Σ_{j≤i} rel(j)``

    and each metric is the mean over the included queries.

    The search retrieves ``k_search = max(max(ks), max_class_count - 1) + 1`` neighbours (capped at
    ``N``), then drops the query itself (if the query is not in its own list because exact duplicates
    tie with it, the last neighbour is dropped instead). Memory is ``O(N·d + batch·k_search)``, where
    ``batch = min(batch_size, 2^25 // k_search)``.

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
    ks_list = _check_ks(ks, n - 1, "other items")
    batch_size = _check_int(batch_size, "batch_size", 1)

    _, y_idx, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    r_all = class_counts[y_idx] - 1  # number of OTHER items with the query's label
    if not (r_all > 0).any():
        raise StrataError(
            "every class in labels has a single item, so no query has a relevant item to retrieve.",
            where="labels",
            fix="Evaluate retrieval on data with at least two items per class.",
        )
    k_search = min(n, max(max(ks_list), int(class_counts.max()) - 1) + 1)
    xn = _l2_normalize(x, "embeddings")
    return _ranked_retrieval(_flat_ip_index(xn), xn, y_idx, y_idx, r_all, ks_list, k_search, batch_size,
                             queries_in_gallery=True)


def retrieval_scores_query_gallery(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 4096,
) -> dict[str, float]:
    """Exact cosine retrieval metrics of a query set against a separate gallery (Musgrave et al. 2020).

    Same definitions as :func:`retrieval_scores`, without self-removal: every query is ranked
    against all ``G`` gallery items by cosine similarity (``faiss.IndexFlatIP`` on L2-normalised
    float32 vectors, queries in batches). ``rel(i) = 1`` if the ``i``-th retrieved gallery item has
    the query's label and ``R`` = number of gallery items with the query's label; queries with
    ``R = 0`` (label absent from the gallery, "lone" queries) are excluded and counted. Per query:

    * ``precision_at_1 = rel(1)``
    * ``recall_at_k = 1[Σ_{i≤k} rel(i) ≥ 1]``
    * ``r_precision = (1/R) Σ_{i≤R} rel(i)``
    * ``map_at_r = (1/R) Σ_{i≤R} P(i)·rel(i)`` with ``P(i) = (1/i) Σ_{j≤i} rel(j)``

    averaged over the included queries. The search retrieves
    ``k_search = max(max(ks), max R over included queries)`` neighbours, so MAP@R and R-precision
    are exact. Memory is ``O(G·d + batch·k_search)``; no ``Q × G`` matrix is formed.

    References:
        Musgrave, Belongie & Lim 2020, "A Metric Learning Reality Check" (ECCV), §3.2;
        pytorch-metric-learning ``AccuracyCalculator`` (``ref_includes_query=False``).

    Args:
        query_emb: ``(Q, d)`` query embeddings.
        query_labels: ``(Q,)`` query class ids.
        gallery_emb: ``(G, d)`` gallery (reference) embeddings.
        gallery_labels: ``(G,)`` gallery class ids.
        ks: Cut-offs for ``recall_at_k``; each must satisfy ``1 <= k <= G``.
        batch_size: Number of queries searched at once.

    Returns:
        ``{"precision_at_1", "recall_at_<k>" for each k, "r_precision", "map_at_r", "n_queries",
        "n_queries_excluded"}``; the two counts are whole numbers stored as floats.

    Raises:
        StrataError: On invalid embeddings/labels, a query/gallery dimension mismatch, an empty
            ``ks`` or a ``k`` outside ``[1, G]``, ``batch_size`` < 1, all-zero rows, or if no query
            label occurs in the gallery.
    """
    xq = check_embeddings(query_emb, "query_emb")
    yq = check_labels(query_labels, xq.shape[0], "query_labels")
    xg = check_embeddings(gallery_emb, "gallery_emb")
    yg = check_labels(gallery_labels, xg.shape[0], "gallery_labels")
    if xq.shape[1] != xg.shape[1]:
        raise StrataError(
            f"query_emb has dimension {xq.shape[1]} but gallery_emb has {xg.shape[1]}.",
            where="query_emb",
            fix="Embed queries and gallery with the same model and layer.",
        )
    ks_list = _check_ks(ks, xg.shape[0], "gallery items")
    batch_size = _check_int(batch_size, "batch_size", 1)

    g_classes, g_idx, g_counts = np.unique(yg, return_inverse=True, return_counts=True)
    pos = np.minimum(np.searchsorted(g_classes, yq), g_classes.size - 1)
    found = g_classes[pos] == yq
    q_idx = np.where(found, pos, -1)
    r_all = np.where(found, g_counts[pos], 0)
    if not found.any():
        raise StrataError(
            "none of the query labels occurs in gallery_labels, so no query has a relevant item to retrieve.",
            where="query_labels",
            fix="Use a gallery that contains the query classes (same label encoding for both sets).",
        )
    k_search = max(max(ks_list), int(r_all.max()))
    xgn = _l2_normalize(xg, "gallery_emb")
    xqn = _l2_normalize(xq, "query_emb")
    return _ranked_retrieval(_flat_ip_index(xgn), xqn, q_idx, g_idx, r_all, ks_list, k_search, batch_size,
                             queries_in_gallery=False)


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


def _check_real(value: object, name: str, *, positive: bool, fix: str) -> float:
    """Return ``value`` as float if it is a finite real (and > 0 when ``positive``), else raise StrataError."""
    ok = not isinstance(value, bool) and isinstance(value, Real) and np.isfinite(value)
    if ok and positive:
        ok = float(value) > 0
    if not ok:
        kind = "a positive finite number" if positive else "a finite number"
        raise StrataError(f"{name} must be {kind}, got {value!r}.", where=name, fix=fix)
    return float(value)


def _subsample_rows(x: np.ndarray, max_points: int | None, seed: int, minimum: int) -> np.ndarray:
    """Rows of ``x``, or ``max_points`` of them drawn without replacement (seeded, original order kept)."""
    if max_points is None:
        return x
    max_points = _check_int(max_points, "max_points", minimum)
    if x.shape[0] <= max_points:
        return x
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(x.shape[0], size=max_points, replace=False))]


def alignment(z1: np.ndarray, z2: np.ndarray, alpha: float = 2.0) -> float:
    """Alignment of positive pairs on the hypersphere (Wang & Isola 2020).

    With ``f(x) = x / ‖x‖₂`` applied to every row and ``(z1_i, z2_i)`` the ``i``-th positive pair
    (e.g. two augmented views of the same sample):

        L_align = (1/N) Σ_i ‖f(z1_i) − f(z2_i)‖₂^α

    which is the empirical ``E_{(x,y)~p_pos} ‖f(x) − f(y)‖₂^α`` of the paper (``align_loss`` of
    ``SsnL/align_uniform``). Lower is better; it lies in ``[0, 2^α]`` and is 0 for identical views.
    Computed in float64.

    References:
        Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
        Uniformity on the Hypersphere" (ICML).

    Args:
        z1: ``(N, d)`` embeddings of the first views.
        z2: ``(N, d)`` embeddings of the second views (row ``i`` pairs with row ``i`` of ``z1``).
        alpha: Exponent ``α > 0`` (paper default 2).

    Returns:
        ``L_align`` as a float.

    Raises:
        StrataError: On invalid embeddings (NaN/inf, empty, not 2-D), different shapes, all-zero
            rows, or a non-positive ``alpha``.
    """
    a = check_embeddings(z1, "z1")
    b = check_embeddings(z2, "z2")
    if a.shape != b.shape:
        raise StrataError(
            f"z2 has shape {b.shape} but z1 has shape {a.shape}; alignment needs one positive pair per row.",
            where="z2",
            fix="Pass the two views of the same samples, in the same order and from the same model.",
        )
    alpha = _check_real(alpha, "alpha", positive=True, fix="Use alpha=2 (the paper's default).")
    diff = _l2_normalize(a, "z1", np.float64) - _l2_normalize(b, "z2", np.float64)
    dist = np.sqrt(np.add.reduce(diff * diff, axis=1))
    return float(np.mean(dist**alpha))


def uniformity(z: np.ndarray, t: float = 2.0, max_points: int | None = None, seed: int = 0) -> float:
    """Uniformity of embeddings on the hypersphere (Wang & Isola 2020).

    With ``f(x) = x / ‖x‖₂`` applied to every row, this is the log of the average Gaussian-potential
    over all **distinct unordered pairs** ``i < j`` (the ``torch.pdist`` variant of the reference code
    ``SsnL/align_uniform``, i.e. without the ``i = j`` terms):

        L_unif = log( (2 / (N(N−1))) Σ_{i<j} exp(−t ‖f(z_i) − f(z_j)‖₂²) )

    Lower (more negative) is more uniform; it lies in ``[−4t, 0]``. Squared distances are computed
    as ``2 − 2 f(z_i)·f(z_j)`` (clipped at 0) in float64, in row blocks of at most
    ``_PAIR_BLOCK_ENTRIES`` pairs, so no ``N × N`` matrix is formed for large ``N``; the sum is a
    running log-sum-exp, so it cannot underflow for large ``t``. With ``max_points``, a uniformly
    random subset of that many rows (``numpy.random.default_rng(seed)``, without replacement) is
    used; the cost is ``O(M² d)`` for ``M`` rows used.

    References:
        Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
        Uniformity on the Hypersphere" (ICML), Eq. (uniformity loss) with t = 2.

    Args:
        z: ``(N, d)`` embeddings, ``N >= 2``.
        t: Temperature ``t > 0`` of the Gaussian potential (paper default 2; lightly uses 1).
        max_points: Optional cap ``M >= 2`` on the number of rows used (random subsample).
        seed: Seed of the subsample.

    Returns:
        ``L_unif`` as a float.

    Raises:
        StrataError: On invalid embeddings, fewer than 2 rows, all-zero rows, a non-positive ``t``
            or ``max_points`` < 2.
    """
    x = check_embeddings(z, "z")
    t = _check_real(t, "t", positive=True, fix="Use t=2 (the paper's default).")
    x = _subsample_rows(x, max_points, seed, 2)
    n = x.shape[0]
    if n < 2:
        raise StrataError(f"uniformity needs at least 2 points, got {n}.", where="z",
                          fix="Evaluate on more samples.")
    xn = _l2_normalize(x, "z", np.float64)
    block = max(1, min(n, _PAIR_BLOCK_ENTRIES // n))
    log_total = -np.inf
    for start in range(0, n - 1, block):
        stop = min(start + block, n - 1)
        # Pairs (i, j) with start <= i < stop and j > i: columns start+1.. of rows start..stop-1.
        gram = xn[start:stop] @ xn[start + 1:].T  # (b, n - start - 1)
        logits = -t * np.maximum(2.0 - 2.0 * gram, 0.0)
        # Row r (i = start + r) keeps columns c with j = start + 1 + c > i, i.e. c >= r.
        mask = np.arange(gram.shape[1])[None, :] >= np.arange(stop - start)[:, None]
        vals = logits[mask]
        peak = float(vals.max())
        log_block = peak + float(np.log(np.sum(np.exp(vals - peak))))
        log_total = np.logaddexp(log_total, log_block)
    n_pairs = n * (n - 1) / 2.0
    return float(log_total - np.log(n_pairs))


def vendi_score(x: np.ndarray, max_points: int | None = None, seed: int = 0) -> float:
    """Vendi score with the cosine-similarity kernel (Friedman & Dieng 2023).

    Rows are L2-normalised to ``x̂_i`` so that ``K_ij = x̂_i·x̂_j`` has unit diagonal. With
    ``λ_1..λ_n`` the eigenvalues of ``K / n`` (they are ≥ 0 and sum to 1):

        VS = exp(−Σ_i λ_i log λ_i),   0 log 0 = 0

    the exponential of the Shannon entropy of the eigenvalues (order ``q = 1``). The non-zero
    eigenvalues of ``K/n = X̂X̂ᵀ/n`` equal those of the ``d × d`` matrix ``X̂ᵀX̂/n`` (dual form,
    ``score_dual`` of ``vertaix/Vendi-Score``), which is what is computed: accumulated in float64 over
    row blocks, then ``numpy.linalg.eigvalsh``; round-off negatives are clipped to 0. VS lies in
    ``[1, min(n, d)]``: 1 when all rows point the same way, ``n`` for ``n`` orthogonal rows. With
    ``max_points``, a uniformly random subset of that many rows (``numpy.random.default_rng(seed)``)
    is used.

    References:
        Friedman & Dieng 2023, "The Vendi Score: A Diversity Evaluation Metric for Machine Learning"
        (TMLR).

    Args:
        x: ``(n, d)`` embeddings.
        max_points: Optional cap ``>= 1`` on the number of rows used (random subsample).
        seed: Seed of the subsample.

    Returns:
        The Vendi score as a float.

    Raises:
        StrataError: On invalid embeddings, all-zero rows or ``max_points`` < 1.
    """
    arr = check_embeddings(x, "x")
    arr = _subsample_rows(arr, max_points, seed, 1)
    n, d = arr.shape
    norms = _row_norms(arr, "x")
    cov = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, _ROW_BLOCK):
        block = arr[start:start + _ROW_BLOCK] / norms[start:start + _ROW_BLOCK, None]
        cov += block.T @ block
    lam = np.clip(np.linalg.eigvalsh(cov / n), 0.0, None)
    lam = lam[lam > 0]
    return float(np.exp(-np.sum(lam * np.log(lam))))
