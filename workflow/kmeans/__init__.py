"""Exact k-means (Lloyd with greedy k-means++), used by curation and evaluation through this small API.

See :mod:`workflow.kmeans.api` for what the engine guarantees and where each of its ideas lives.
"""

from workflow.kmeans.api import (
    INIT_METHODS,
    PRUNE_MODES,
    KMeansOptions,
    KMeansResult,
    assign,
    kmeans,
    lloyd_engine,
    resolve_options,
)
from workflow.kmeans.seeding import kmeans_plusplus
from workflow.kmeans.source import DataSource, resolve_device

__all__ = ["INIT_METHODS", "PRUNE_MODES", "DataSource", "KMeansOptions", "KMeansResult", "assign", "kmeans",
           "kmeans_plusplus", "lloyd_engine", "resolve_device", "resolve_options"]
