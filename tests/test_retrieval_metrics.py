"""Tests for workflow.evaluate.retrieval (Recall@K, R-precision, MAP@R; small, fast, independent checks)."""

from __future__ import annotations

import numpy as np
import pytest
from metric_helpers import angles, blobs

from workflow.errors import StrataError
from workflow.evaluate.retrieval import _drop_self, retrieval_scores, retrieval_scores_query_gallery

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _brute_force_retrieval(x: np.ndarray, y: np.ndarray, ks) -> dict[str, float]:
    """Pure-NumPy reference: full cosine matrix, stable argsort, loop over queries."""
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    sim = xn @ xn.T
    n = len(y)
    p1, rp, mapr, n_q = 0.0, 0.0, 0.0, 0
    recall = dict.fromkeys(ks, 0.0)
    for q in range(n):
        others = np.array([j for j in range(n) if j != q])
        order = others[np.argsort(-sim[q, others], kind="stable")]
        rel = (y[order] == y[q]).astype(float)
        r = int(np.sum(y == y[q])) - 1
        if r == 0:
            continue
        n_q += 1
        p1 += rel[0]
        for k in ks:
            recall[k] += float(rel[:k].sum() > 0)
        rp += rel[:r].sum() / r
        prec = np.cumsum(rel) / np.arange(1, n)
        mapr += float(np.sum(prec[:r] * rel[:r]) / r)
    out = {"precision_at_1": p1 / n_q}
    out.update({f"recall_at_{k}": recall[k] / n_q for k in ks})
    out.update(r_precision=rp / n_q, map_at_r=mapr / n_q, n_queries=float(n_q), n_queries_excluded=float(n - n_q))
    return out


# --------------------------------------------------------------------------------------------------
# leave-one-out retrieval
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_singleton", [False, True])
def test_retrieval_matches_brute_force_across_batch_sizes(with_singleton):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 8)).astype(np.float32)
    y = rng.integers(0, 4, 60)
    if with_singleton:
        y[[5, 17]] = [4, 5]  # two singleton classes -> excluded queries
    ks = (1, 3, 10)
    ref = _brute_force_retrieval(x, y, ks)
    results = [retrieval_scores(x, y, ks=ks, batch_size=b) for b in (7, 4096)]
    assert results[0] == results[1]
    assert set(results[0]) == set(ref)
    for key, val in ref.items():
        assert results[0][key] == pytest.approx(val, abs=1e-12), key
    assert results[0]["n_queries_excluded"] == (2.0 if with_singleton else 0.0)


def test_retrieval_hand_computed_map_at_r():
    # Points on the unit circle (angles < 180 deg apart, so cosine order = angle order), labels:
    #   p0 0deg y0, p1 15deg y0, p2 35deg y1, p3 60deg y0, p4 90deg y1, p5 130deg y1.  R = 2 for all.
    # Ranked relevance (rel) of the 5 other items, then P@1, R-precision, MAP@R:
    #   p0: p1 p2 p3 p4 p5 -> 1 0 1 0 0 : P@1 1, RP 1/2, MAP (1/2)(1*1)       = 1/2
    #   p1: p0 p2 p3 p4 p5 -> 1 0 1 0 0 : P@1 1, RP 1/2, MAP 1/2
    #   p2: p1 p3 p0 p4 p5 -> 0 0 0 1 1 : P@1 0, RP 0,   MAP 0
    #   p3: p2 p4 p1 p0 p5 -> 0 0 1 1 0 : P@1 0, RP 0,   MAP 0
    #   p4: p3 p5 p2 p1 p0 -> 0 1 1 0 0 : P@1 0, RP 1/2, MAP (1/2)(P(2)=1/2)   = 1/4
    #   p5: p4 p3 p2 p1 p0 -> 1 0 1 0 0 : P@1 1, RP 1/2, MAP 1/2
    # Means: P@1 = 3/6, RP = 2/6, MAP@R = 1.75/6, recall@3 = 5/6 (only p2 misses), recall@5 = 1.
    x = angles([0, 15, 35, 60, 90, 130])
    y = np.array([0, 0, 1, 0, 1, 1])
    s = retrieval_scores(x, y, ks=(1, 3, 5))
    assert s["precision_at_1"] == pytest.approx(0.5)
    assert s["recall_at_1"] == pytest.approx(0.5)
    assert s["recall_at_3"] == pytest.approx(5 / 6)
    assert s["recall_at_5"] == pytest.approx(1.0)
    assert s["r_precision"] == pytest.approx(1 / 3)
    assert s["map_at_r"] == pytest.approx(1.75 / 6)
    assert s["n_queries"] == 6.0 and s["n_queries_excluded"] == 0.0


def test_retrieval_perfect_embedding_and_large_class():
    # One class bigger than max(ks): k_search must grow to R + 1 so MAP@R sees all R relevant items.
    x, y = blobs(15, 2, 4, seed=3, std=0.05)
    s = retrieval_scores(x, y, ks=(1,), batch_size=4)
    assert s["map_at_r"] == pytest.approx(1.0)
    assert s["r_precision"] == pytest.approx(1.0)


def test_drop_self_removes_own_id_or_last_neighbour():
    nbrs = np.array([[3, 0, 1], [2, 1, 0], [5, 4, 6]])
    out = _drop_self(nbrs, np.array([0, 1, 2]))
    # row 0: own id 0 at rank 2; row 1: own id at rank 2; row 2: own id absent -> drop last (6).
    np.testing.assert_array_equal(out, [[3, 1], [2, 0], [5, 4]])


def test_retrieval_all_singletons_raises():
    x = np.random.default_rng(0).standard_normal((5, 3))
    with pytest.raises(StrataError, match="labels"):
        retrieval_scores(x, np.arange(5), ks=(1,))


def test_nan_embeddings_named_with_row_count():
    x = np.ones((6, 3))
    x[[1, 4], 0] = np.nan
    x[2, 1] = np.inf
    with pytest.raises(StrataError, match=r"embeddings has 3 of 6 rows") as err:
        retrieval_scores(x, np.zeros(6, dtype=int), ks=(1,))
    assert err.value.where == "embeddings" and err.value.fix


def test_ks_larger_than_other_items():
    x, y = blobs(3, 2, 3, seed=0)
    with pytest.raises(StrataError, match=r"ks contains \[6\]"):
        retrieval_scores(x, y, ks=(1, 6))


def test_zero_rows_rejected():
    x = np.ones((4, 3))
    x[2] = 0.0
    with pytest.raises(StrataError, match="all-zero rows"):
        retrieval_scores(x, np.array([0, 0, 1, 1]), ks=(1,))


# --------------------------------------------------------------------------------------------------
# query/gallery retrieval
# --------------------------------------------------------------------------------------------------


def _brute_force_query_gallery(xq, yq, xg, yg, ks) -> dict[str, float]:
    """Pure-NumPy reference: full cosine matrix, stable argsort over the whole gallery, loop over queries."""
    qn = xq.astype(np.float64) / np.linalg.norm(xq.astype(np.float64), axis=1, keepdims=True)
    gn = xg.astype(np.float64) / np.linalg.norm(xg.astype(np.float64), axis=1, keepdims=True)
    sim = qn @ gn.T
    p1, rp, mapr, n_q = 0.0, 0.0, 0.0, 0
    recall = dict.fromkeys(ks, 0.0)
    for q in range(len(yq)):
        r = int(np.sum(yg == yq[q]))
        if r == 0:
            continue
        n_q += 1
        rel = (yg[np.argsort(-sim[q], kind="stable")] == yq[q]).astype(float)
        p1 += rel[0]
        for k in ks:
            recall[k] += float(rel[:k].sum() > 0)
        rp += rel[:r].sum() / r
        prec = np.cumsum(rel) / np.arange(1, len(yg) + 1)
        mapr += float(np.sum(prec[:r] * rel[:r]) / r)
    out = {"precision_at_1": p1 / n_q}
    out.update({f"recall_at_{k}": recall[k] / n_q for k in ks})
    out.update(r_precision=rp / n_q, map_at_r=mapr / n_q, n_queries=float(n_q),
               n_queries_excluded=float(len(yq) - n_q))
    return out


@pytest.mark.parametrize("with_lone_queries", [False, True])
def test_query_gallery_matches_brute_force_across_batch_sizes(with_lone_queries):
    rng = np.random.default_rng(11)
    xq = rng.standard_normal((45, 8)).astype(np.float32)
    yq = rng.integers(0, 4, 45)
    xg = rng.standard_normal((70, 8)).astype(np.float32)
    yg = rng.integers(0, 4, 70)
    if with_lone_queries:
        yq[[3, 20, 21]] = [7, 9, 7]  # labels absent from the gallery -> excluded queries
    ks = (1, 4, 10)
    ref = _brute_force_query_gallery(xq, yq, xg, yg, ks)
    results = [retrieval_scores_query_gallery(xq, yq, xg, yg, ks=ks, batch_size=b) for b in (1, 6, 4096)]
    assert results[0] == results[1] == results[2]
    assert set(results[0]) == set(ref)
    for key, val in ref.items():
        assert results[0][key] == pytest.approx(val, abs=1e-12), key
    assert results[0]["n_queries_excluded"] == (3.0 if with_lone_queries else 0.0)


def test_query_gallery_emulates_leave_one_out():
    # LOO = for every query, a gallery of all *other* items; average the per-query results.
    rng = np.random.default_rng(12)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 5, 40)
    y[7] = 9  # a singleton: no relevant item once the query is removed -> excluded
    ks = (1, 3)
    per_query = []
    for q in range(len(y)):
        others = np.arange(len(y)) != q
        if not np.any(y[others] == y[q]):
            continue
        per_query.append(retrieval_scores_query_gallery(x[q:q + 1], y[q:q + 1], x[others], y[others], ks=ks))
    loo = retrieval_scores(x, y, ks=ks)
    for key in ("precision_at_1", "recall_at_1", "recall_at_3", "r_precision", "map_at_r"):
        assert loo[key] == pytest.approx(np.mean([p[key] for p in per_query]), abs=1e-12), key
    assert loo["n_queries"] == len(per_query) == 39 and loo["n_queries_excluded"] == 1.0


def test_query_gallery_hand_case_and_large_class():
    # Gallery on the unit circle: g0 0deg y0, g1 20deg y1, g2 40deg y0. Query at 12deg, label 0.
    xg = angles([0, 20, 40])
    yg = np.array([0, 1, 0])
    s = retrieval_scores_query_gallery(angles([12]), np.array([0]), xg, yg, ks=(1, 2))
    # order: g1 (8deg), g0 (12deg), g2 (28deg) -> rel 0 1 1, R = 2: P@1 0, RP 1/2, MAP (1/2)(1/2) = 1/4.
    assert s["precision_at_1"] == 0.0 and s["recall_at_2"] == 1.0
    assert s["r_precision"] == pytest.approx(0.5) and s["map_at_r"] == pytest.approx(0.25)
    # Perfect embedding with a class larger than max(ks): MAP@R must see all R gallery items.
    xb, yb = blobs(20, 2, 4, seed=4, std=0.05)
    s = retrieval_scores_query_gallery(xb[:10], yb[:10], xb[10:], yb[10:], ks=(1,), batch_size=3)
    assert s["map_at_r"] == pytest.approx(1.0) and s["r_precision"] == pytest.approx(1.0)


def test_query_gallery_bad_inputs():
    rng = np.random.default_rng(0)
    xq, yq = rng.standard_normal((4, 3)), np.array([0, 1, 0, 1])
    xg, yg = rng.standard_normal((6, 3)), np.array([0, 1, 0, 1, 0, 1])
    with pytest.raises(StrataError, match="query_emb has dimension 3 but gallery_emb has 5") as err:
        retrieval_scores_query_gallery(xq, yq, rng.standard_normal((6, 5)), yg)
    assert err.value.where == "query_emb"
    bad = xg.copy()
    bad[2, 1] = np.nan
    with pytest.raises(StrataError, match="gallery_emb has 1 of 6 rows"):
        retrieval_scores_query_gallery(xq, yq, bad, yg, ks=(1,))
    with pytest.raises(StrataError, match="query_emb is empty"):
        retrieval_scores_query_gallery(np.zeros((0, 3)), np.zeros(0, dtype=int), xg, yg, ks=(1,))
    with pytest.raises(StrataError, match="gallery_labels has length 5 but 6"):
        retrieval_scores_query_gallery(xq, yq, xg, yg[:5], ks=(1,))
    with pytest.raises(StrataError, match=r"ks contains \[7\], larger than the 6 gallery items"):
        retrieval_scores_query_gallery(xq, yq, xg, yg, ks=(1, 7))
    with pytest.raises(StrataError, match="none of the query labels occurs") as err:
        retrieval_scores_query_gallery(xq, yq + 5, xg, yg, ks=(1,))
    assert err.value.where == "query_labels"
    with pytest.raises(StrataError, match="batch_size"):
        retrieval_scores_query_gallery(xq, yq, xg, yg, ks=(1,), batch_size=0)
