"""Stage ``evaluate``: clustering, retrieval and classification metrics of one variant's embeddings.

Clustering (k-means, K = #classes) and leave-one-out retrieval run on ``probe_test``; the weighted
kNN classifier and the linear probe train on ``probe_train`` and test on ``probe_test``.
"""

from __future__ import annotations

from typing import Any

from workflow.evaluate import metrics as m
from workflow.tables import read_table


def evaluate(probe_train_path: str, probe_test_path: str, params: dict[str, Any], seed: int) -> dict[str, float]:
    """All metrics of one variant, as a flat ``{name: value}`` dict (names as logged to MLflow)."""
    train = read_table(probe_train_path, require_labels=True)
    test = read_table(probe_test_path, require_labels=True, expected_dim=train.dim)
    out: dict[str, float] = {}
    out["knn_accuracy"] = m.weighted_knn_accuracy(train.vectors, train.labels, test.vectors, test.labels,
                                                  k=params["knn_k"], temperature=params["knn_temperature"])
    if params["linear_probe"]:
        out["linear_accuracy"] = m.linear_probe_accuracy(train.vectors, train.labels, test.vectors, test.labels,
                                                         seed=seed)
    retrieval = m.retrieval_scores(test.vectors, test.labels, ks=params["recall_ks"])
    out.update({k: v for k, v in retrieval.items() if not k.startswith("n_")})
    clusters = m.cluster_scores(test.vectors, test.labels, seed=seed, n_init=params["cluster_n_init"])
    out.update({f"cluster_{k}": v for k, v in clusters.items()})
    out["rankme"] = m.rankme(test.vectors)
    return out
