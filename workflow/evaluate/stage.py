"""Stage ``evaluate``: clustering, retrieval and classification metrics of one variant's embeddings.

Clustering (k-means, K = #classes, plus optional over-clustering K values) and leave-one-out retrieval run
on ``probe_test``; query/gallery retrieval uses ``probe_test`` queries against the ``probe_train`` gallery;
the weighted kNN classifier and the linear probe train on ``probe_train`` and test on ``probe_test``.
Label-free: RankMe and uniformity (Wang & Isola 2020, t = 2) of the ``probe_test`` embeddings.

One module per protocol: ``clustering.py``, ``retrieval.py``, ``probes.py``; the label-free measures live in
``workflow/measures.py`` (shared with the training monitors and the curation diagnostics).
"""

from __future__ import annotations

from typing import Any

from workflow.evaluate.clustering import cluster_scores
from workflow.evaluate.probes import linear_probe_accuracy, weighted_knn_accuracy
from workflow.evaluate.retrieval import retrieval_scores, retrieval_scores_query_gallery
from workflow.measures import rankme, uniformity
from workflow.tables import read_table


def evaluate(probe_train_path: str, probe_test_path: str, params: dict[str, Any], seed: int) -> dict[str, float]:
    """All metrics of one variant, as a flat ``{name: value}`` dict (names as logged to MLflow)."""
    train = read_table(probe_train_path, require_labels=True)
    test = read_table(probe_test_path, require_labels=True, expected_dim=train.dim)
    out: dict[str, float] = {}
    out["knn_accuracy"] = weighted_knn_accuracy(train.vectors, train.labels, test.vectors, test.labels,
                                                k=params["knn_k"], temperature=params["knn_temperature"])
    if params["linear_probe"]:
        out["linear_accuracy"] = linear_probe_accuracy(train.vectors, train.labels, test.vectors, test.labels,
                                                       seed=seed)
    retrieval = retrieval_scores(test.vectors, test.labels, ks=params["recall_ks"])
    out.update({k: v for k, v in retrieval.items() if not k.startswith("n_")})
    out["retrieval_queries_excluded"] = retrieval["n_queries_excluded"]
    if params["query_gallery"]:  # probe_test queries against the probe_train gallery
        qg = retrieval_scores_query_gallery(test.vectors, test.labels, train.vectors, train.labels,
                                            ks=params["recall_ks"])
        out.update({f"gallery_{k}": v for k, v in qg.items() if not k.startswith("n_")})
    clusters = cluster_scores(test.vectors, test.labels, seed=seed, n_init=params["cluster_n_init"],
                              backend=params["cluster_backend"])
    out.update({f"cluster_{k}": v for k, v in clusters.items()})
    for k in params["cluster_extra_k"]:  # over-clustering: ACC with a many-to-one Hungarian matching is capped
        extra = cluster_scores(test.vectors, test.labels, n_clusters=k, seed=seed, n_init=params["cluster_n_init"],
                               backend=params["cluster_backend"])
        out.update({f"cluster_k{k}_{name}": v for name, v in extra.items()})
    out["rankme"] = rankme(test.vectors)
    out["uniformity"] = uniformity(test.vectors, t=2.0, max_points=5000, seed=seed)
    return out
