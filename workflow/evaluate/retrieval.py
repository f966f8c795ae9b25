"""Retrieval protocol: exact cosine retrieval scored with Precision@1, Recall@K, R-Precision and MAP@R.

* :func:`retrieval_scores`: leave-one-out retrieval within one labelled set (Musgrave et al. 2020).
* :func:`retrieval_scores_query_gallery`: the same metrics for a query set against a separate gallery.

Inputs are validated (:func:`workflow.measures.check_embeddings`,
:func:`workflow.evaluate.checks.check_labels`); bad ones raise :class:`workflow.errors.StrataError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from workflow.errors import StrataError
from workflow.evaluate.checks import check_labels
from workflow.measures import check_embeddings, check_int, l2_normalize

__all__ = ["retrieval_scores", "retrieval_scores_query_gallery"]

#: Upper bound on the entries of one (query batch × k_search) faiss result block in retrieval.
_MAX_RESULT_ENTRIES = 2**25


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
    ks_list = [check_int(k, "ks", 1) for k in ks]
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
    batch_size = check_int(batch_size, "batch_size", 1)

    _, y_idx, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    r_all = class_counts[y_idx] - 1  # number of OTHER items with the query's label
    if not (r_all > 0).any():
        raise StrataError(
            "every class in labels has a single item, so no query has a relevant item to retrieve.",
            where="labels",
            fix="Evaluate retrieval on data with at least two items per class.",
        )
    k_search = min(n, max(max(ks_list), int(class_counts.max()) - 1) + 1)
    xn = l2_normalize(x, "embeddings")
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
    batch_size = check_int(batch_size, "batch_size", 1)

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
    xgn = l2_normalize(xg, "gallery_emb")
    xqn = l2_normalize(xq, "query_emb")
    return _ranked_retrieval(_flat_ip_index(xgn), xqn, q_idx, g_idx, r_all, ks_list, k_search, batch_size,
                             queries_in_gallery=False)
