"""Tests for workflow.evaluate.metrics (small, fast, each an independent check)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from workflow.errors import StrataError
from workflow.evaluate import metrics
from workflow.evaluate.metrics import (
    _drop_self,
    alignment,
    check_embeddings,
    check_labels,
    cluster_scores,
    clustering_accuracy,
    linear_probe_accuracy,
    rankme,
    retrieval_scores,
    retrieval_scores_query_gallery,
    uniformity,
    vendi_score,
    weighted_knn_accuracy,
)

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _blobs(n_per_class: int, n_classes: int, dim: int, seed: int, std: float = 0.3):
    """Blobs around 5·e_c (distinct directions, so they are separated in cosine geometry too)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centers = 5.0 * np.eye(dim)[:n_classes]
    x = centers[labels] + std * rng.standard_normal((labels.size, dim))
    perm = rng.permutation(labels.size)
    return x[perm].astype(np.float32), labels[perm]


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


def _brute_force_knn(x_tr, y_tr, x_te, y_te, k, t) -> float:
    a = x_tr / np.linalg.norm(x_tr, axis=1, keepdims=True)
    b = x_te / np.linalg.norm(x_te, axis=1, keepdims=True)
    sim = b.astype(np.float64) @ a.T.astype(np.float64)
    n_cls = int(max(y_tr.max(), y_te.max())) + 1
    correct = 0
    for i in range(len(y_te)):
        top = np.argsort(-sim[i], kind="stable")[:k]
        scores = np.zeros(n_cls)
        for j in top:
            scores[y_tr[j]] += np.exp(sim[i, j] / t)
        correct += int(np.argmax(scores) == y_te[i])
    return correct / len(y_te)


def _angles(deg) -> np.ndarray:
    a = np.deg2rad(np.asarray(deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


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
    x, y = _blobs(30, 3, 6, seed=1)
    scores = cluster_scores(x, y, seed=0, n_init=3)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pred = KMeans(n_clusters=3, n_init=3, random_state=0).fit_predict(xn)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(y, pred), abs=1e-12)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(y, pred), abs=1e-12)
    assert scores["acc"] == 1.0
    assert scores["purity"] == 1.0
    assert scores["nmi"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)


def test_cluster_scores_more_clusters_than_classes():
    x, y = _blobs(20, 2, 4, seed=2)
    scores = cluster_scores(x, y, n_clusters=4, n_init=2)
    assert scores["purity"] == 1.0  # splitting a pure blob keeps clusters pure
    assert scores["acc"] < 1.0  # but only 2 of the 4 clusters can be matched


# --------------------------------------------------------------------------------------------------
# retrieval
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
    x = _angles([0, 15, 35, 60, 90, 130])
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
    x, y = _blobs(15, 2, 4, seed=3, std=0.05)
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


# --------------------------------------------------------------------------------------------------
# weighted kNN
# --------------------------------------------------------------------------------------------------


def test_weighted_knn_hand_case_weights_decide():
    # Query at 0deg. Class 0: one point at 0deg (s = 1). Class 1: two points at +-30deg (s = 0.866).
    # T = 0.07: e^{1/0.07} vs 2 e^{0.866/0.07} -> ratio e^{1.91}/2 ~ 3.4 -> class 0 wins despite fewer votes.
    # T = 10:   e^{0.1} = 1.105 vs 2 e^{0.0866} = 2.18 -> class 1 (majority) wins.
    x_tr = _angles([0, 30, -30])
    y_tr = np.array([0, 1, 1])
    x_te = _angles([0])
    assert weighted_knn_accuracy(x_tr, y_tr, x_te, np.array([0]), k=3, temperature=0.07) == 1.0
    assert weighted_knn_accuracy(x_tr, y_tr, x_te, np.array([1]), k=3, temperature=10.0) == 1.0


def test_weighted_knn_tie_goes_to_smallest_class():
    # Exactly symmetric neighbours of different classes -> equal scores -> smallest class id (1).
    x_tr = _angles([30, -30])
    y_tr = np.array([3, 1])
    assert weighted_knn_accuracy(x_tr, y_tr, _angles([0]), np.array([1]), k=2) == 1.0


def test_weighted_knn_matches_brute_force():
    rng = np.random.default_rng(5)
    x_tr = rng.standard_normal((80, 6)).astype(np.float32)
    y_tr = rng.integers(0, 3, 80)
    x_te = rng.standard_normal((40, 6)).astype(np.float32)
    y_te = rng.integers(0, 3, 40)
    for k, t in ((1, 0.07), (5, 0.07), (20, 0.5)):
        ref = _brute_force_knn(x_tr, y_tr, x_te, y_te, k, t)
        assert weighted_knn_accuracy(x_tr, y_tr, x_te, y_te, k=k, temperature=t, n_classes=3) == ref


# --------------------------------------------------------------------------------------------------
# linear probe, RankMe
# --------------------------------------------------------------------------------------------------


def test_linear_probe_separable_blobs():
    x, y = _blobs(40, 3, 5, seed=7, std=0.5)
    acc = linear_probe_accuracy(x[:80], y[:80], x[80:], y[80:], max_iter=200)
    assert acc > 0.9


def test_rankme_equal_singular_values_gives_rank():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    v, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    for r in (1, 4, 10, 20):
        x = 3.0 * u[:, :r] @ v[:, :r].T  # rank r, all non-zero singular values equal to 3
        assert rankme(x) == pytest.approx(r, abs=1e-3)


def test_rankme_rank_one_and_blocked_path():
    rng = np.random.default_rng(1)
    x = np.outer(rng.standard_normal(30), rng.standard_normal(8))
    assert rankme(x) == pytest.approx(1.0, abs=1e-3)
    # Tall matrix (> block size) goes through the blocked QR; must agree with a direct SVD.
    tall = rng.standard_normal((9000, 4)) * np.array([4.0, 2.0, 1.0, 0.5])
    s = np.linalg.svd(tall.astype(np.float32).astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert rankme(tall) == pytest.approx(float(np.exp(-np.sum(p * np.log(p)))), rel=1e-9)


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------


def test_check_embeddings_returns_float32_contiguous():
    x = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    out = check_embeddings(x, "embeddings")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(check_labels([0.0, 2.0, 1.0], 3, "labels"), [0, 2, 1])


def test_nan_embeddings_named_with_row_count():
    x = np.ones((6, 3))
    x[[1, 4], 0] = np.nan
    x[2, 1] = np.inf
    with pytest.raises(StrataError, match=r"embeddings has 3 of 6 rows") as err:
        retrieval_scores(x, np.zeros(6, dtype=int), ks=(1,))
    assert err.value.where == "embeddings" and err.value.fix


@pytest.mark.parametrize(
    "bad, pattern",
    [(np.ones(5), "train_embeddings must be a 2-D"), (np.zeros((0, 3)), "train_embeddings is empty")],
)
def test_bad_embedding_shapes(bad, pattern):
    with pytest.raises(StrataError, match=pattern):
        linear_probe_accuracy(bad, np.zeros(5, dtype=int), np.ones((2, 3)), np.zeros(2, dtype=int))


def test_label_length_mismatch():
    with pytest.raises(StrataError, match="labels has length 4 but 5") as err:
        cluster_scores(np.ones((5, 2)), np.array([0, 1, 0, 1]))
    assert err.value.where == "labels"


@pytest.mark.parametrize("labels", [[0, 1, np.nan], [0, -1, 1], [0.5, 1, 0], ["a", "b", "c"], [[0, 1, 2]]])
def test_bad_labels(labels):
    with pytest.raises(StrataError, match="labels"):
        check_labels(np.asarray(labels, dtype=object) if labels[0] == "a" else np.asarray(labels), 3, "labels")


def test_k_larger_than_points():
    x, y = _blobs(3, 2, 3, seed=0)
    with pytest.raises(StrataError, match="n_clusters=7"):
        cluster_scores(x, y, n_clusters=7)
    with pytest.raises(StrataError, match=r"ks contains \[6\]"):
        retrieval_scores(x, y, ks=(1, 6))
    with pytest.raises(StrataError, match="k=10 is larger than the number of training points"):
        weighted_knn_accuracy(x, y, x, y, k=10)


def test_fewer_than_two_classes():
    with pytest.raises(StrataError, match="labels has only 1 distinct class"):
        cluster_scores(np.random.default_rng(0).standard_normal((6, 3)), np.zeros(6, dtype=int))


def test_train_test_dimension_mismatch():
    y = np.array([0, 1, 0, 1])
    for fn in (weighted_knn_accuracy, linear_probe_accuracy):
        with pytest.raises(StrataError, match="test_embeddings has dimension 3") as err:
            fn(np.ones((4, 2)), y, np.ones((4, 3)), y)
        assert err.value.where == "test_embeddings"


def test_zero_rows_and_zero_matrix_rejected():
    x = np.ones((4, 3))
    x[2] = 0.0
    with pytest.raises(StrataError, match="all-zero rows"):
        retrieval_scores(x, np.array([0, 0, 1, 1]), ks=(1,))
    with pytest.raises(StrataError, match="all-zero matrix"):
        rankme(np.zeros((4, 3)))


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
    xg = _angles([0, 20, 40])
    yg = np.array([0, 1, 0])
    s = retrieval_scores_query_gallery(_angles([12]), np.array([0]), xg, yg, ks=(1, 2))
    # order: g1 (8deg), g0 (12deg), g2 (28deg) -> rel 0 1 1, R = 2: P@1 0, RP 1/2, MAP (1/2)(1/2) = 1/4.
    assert s["precision_at_1"] == 0.0 and s["recall_at_2"] == 1.0
    assert s["r_precision"] == pytest.approx(0.5) and s["map_at_r"] == pytest.approx(0.25)
    # Perfect embedding with a class larger than max(ks): MAP@R must see all R gallery items.
    xb, yb = _blobs(20, 2, 4, seed=4, std=0.05)
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


# --------------------------------------------------------------------------------------------------
# alignment, uniformity, Vendi score
# --------------------------------------------------------------------------------------------------


def _direct_uniformity(x: np.ndarray, t: float) -> float:
    """O(N²) reference: every distinct pair i<j from explicit differences."""
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    d2 = ((xn[:, None, :] - xn[None, :, :]) ** 2).sum(-1)
    iu = np.triu_indices(len(x), k=1)
    return float(np.log(np.mean(np.exp(-t * d2[iu]))))


def test_alignment_values():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((30, 5))
    assert alignment(z, z) == 0.0
    assert alignment(z, 3.0 * z) == pytest.approx(0.0, abs=1e-12)  # scale-invariant (normalised)
    e = np.eye(2)
    assert alignment(e[:1], e[1:]) == pytest.approx(2.0)  # ‖e1 − e2‖² = 2
    assert alignment(e[:1], e[1:], alpha=1.0) == pytest.approx(np.sqrt(2.0))
    z2 = rng.standard_normal((30, 5))
    a = z / np.linalg.norm(z, axis=1, keepdims=True)
    b = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    assert alignment(z, z2, alpha=3.0) == pytest.approx(np.mean(np.linalg.norm(a - b, axis=1) ** 3), rel=1e-6)


def test_alignment_bad_inputs():
    z = np.ones((4, 3))
    with pytest.raises(StrataError, match=r"z2 has shape \(4, 2\) but z1 has shape \(4, 3\)"):
        alignment(z, np.ones((4, 2)))
    with pytest.raises(StrataError, match="z1 has 1 of 4 rows"):
        alignment(np.where(np.arange(12).reshape(4, 3) == 5, np.nan, 1.0), z)
    with pytest.raises(StrataError, match="z2 is empty"):
        alignment(z, np.zeros((0, 3)))
    with pytest.raises(StrataError, match="alpha must be a positive"):
        alignment(z, z, alpha=0.0)


def test_uniformity_matches_direct_formula_and_chunking(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, 4)).astype(np.float32)  # the metrics compute from float32 inputs
    for t in (0.5, 2.0):
        assert uniformity(x, t=t) == pytest.approx(_direct_uniformity(x, t), abs=1e-10)
    whole = uniformity(x)
    for entries in (1, 37, 100):  # 1 row, 1 row, 2 rows per block
        monkeypatch.setattr(metrics, "_PAIR_BLOCK_ENTRIES", entries)
        assert uniformity(x) == pytest.approx(whole, abs=1e-12)


def test_uniformity_extremes_and_subsample():
    # Two antipodal points: ‖zi − zj‖² = 4 -> L = −4t exactly, also where exp(−4t) underflows.
    pair = np.array([[1.0, 0.0], [-2.0, 0.0]])
    assert uniformity(pair, t=2.0) == pytest.approx(-8.0)
    assert uniformity(pair, t=500.0) == pytest.approx(-2000.0)
    assert uniformity(np.ones((5, 3))) == pytest.approx(0.0, abs=1e-12)  # full collapse
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    idx = np.sort(np.random.default_rng(7).choice(200, size=50, replace=False))
    assert uniformity(x, max_points=50, seed=7) == pytest.approx(_direct_uniformity(x[idx], 2.0), abs=1e-10)
    assert uniformity(x, max_points=500) == uniformity(x)


def test_uniformity_bad_inputs():
    with pytest.raises(StrataError, match="at least 2 points"):
        uniformity(np.ones((1, 3)))
    with pytest.raises(StrataError, match="z has 1 of 3 rows"):
        uniformity(np.array([[1.0, 0.0], [np.inf, 1.0], [0.0, 1.0]]))
    with pytest.raises(StrataError, match="t must be a positive"):
        uniformity(np.eye(3), t=-1.0)
    with pytest.raises(StrataError, match="max_points"):
        uniformity(np.eye(3), max_points=1)
    with pytest.raises(StrataError, match="all-zero rows"):
        uniformity(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_vendi_extremes():
    rng = np.random.default_rng(3)
    v = rng.standard_normal(6)
    assert vendi_score(np.tile(v, (20, 1))) == pytest.approx(1.0, abs=1e-6)
    assert vendi_score(np.outer(rng.uniform(0.5, 3.0, 20), v)) == pytest.approx(1.0, abs=1e-6)  # same direction
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    for n in (1, 3, 7):
        assert vendi_score(q[:n] * rng.uniform(0.5, 2.0, (n, 1))) == pytest.approx(n, rel=1e-6)


def test_vendi_matches_primal_kernel_eigenvalues():
    rng = np.random.default_rng(4)
    for n, d in ((15, 6), (5, 12)):  # n > d and n < d
        x = rng.standard_normal((n, d))
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        lam = np.linalg.eigvalsh(xn @ xn.T / n)
        lam = lam[lam > 1e-12]
        ref = float(np.exp(-np.sum(lam * np.log(lam))))
        assert vendi_score(x) == pytest.approx(ref, rel=1e-6)
    x = rng.standard_normal((300, 4))
    idx = np.sort(np.random.default_rng(5).choice(300, size=40, replace=False))
    assert vendi_score(x, max_points=40, seed=5) == pytest.approx(vendi_score(x[idx]), rel=1e-12)


def test_vendi_bad_inputs():
    with pytest.raises(StrataError, match="x has 1 of 2 rows"):
        vendi_score(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(StrataError, match="x is empty"):
        vendi_score(np.zeros((3, 0)))
    with pytest.raises(StrataError, match="all-zero rows"):
        vendi_score(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(StrataError, match="x must be a 2-D"):
        vendi_score(np.ones(4))


# --------------------------------------------------------------------------------------------------
# cluster_scores, strata backend
# --------------------------------------------------------------------------------------------------


def test_cluster_scores_strata_backend():
    from workflow.kmeans import kmeans

    x, y = _blobs(30, 3, 6, seed=8)
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
    x, y = _blobs(5, 2, 3, seed=0)
    with pytest.raises(StrataError, match="backend must be one of") as err:
        cluster_scores(x, y, backend="faiss")
    assert err.value.where == "backend"
