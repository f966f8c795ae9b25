"""Lloyd's loop: alternate the exact assignment and the centroid update over any engine, until a fixed point.

Minimises the inertia φ(C) = Σ_i min_j ‖x_i − c_j‖² by alternating assignment a(i) = argmin_j ‖x_i − c_j‖² (one
pass of a :class:`~workflow.kmeans.engine.LloydEngine`) and update c_j = mean{x_i : a(i) = j} from the pass's
float64 sums (:func:`update_centroids`); an empty cluster keeps its centroid (Vo et al. 2024, arXiv:2405.15613,
spec 1.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from workflow.kmeans import tuning
from workflow.kmeans.engine import LloydEngine, PassResult
from workflow.kmeans.threads import threads_for


def update_centroids(sums: torch.Tensor, counts: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Means from a pass's float64 ``(k, d)`` sums and int64 ``(k,)`` counts, in the dtype of ``centroids``;
    clusters with count 0 keep their centroid."""
    new = centroids.to(dtype=torch.float64, device=sums.device).clone()
    nonempty = counts > 0
    new[nonempty] = sums[nonempty] / counts[nonempty].unsqueeze(1).to(torch.float64)
    return new.to(centroids.dtype)


def lloyd_iterations(engine: LloydEngine, centroids: torch.Tensor, n_iters: int,
                     tol_abs: float | None = None, progress: Callable[[str], None] | None = None,
                     label: str = "k-means", on_pass: Callable[[PassResult], None] | None = None
                     ) -> tuple[torch.Tensor, int]:
    """The Lloyd loop from given centroids: at most ``n_iters`` updates.

    Stops early at an exact fixed point (no assignment changed: the next update would return the same
    centroids, so the result equals running all iterations) or when the squared centroid shift is at most
    ``tol_abs``.

    Args:
        engine: Any :class:`~workflow.kmeans.engine.LloydEngine` over the data.
        centroids: ``(k, d)`` float32 starting centroids.
        n_iters: Most updates to run.
        tol_abs: Absolute shift tolerance Σ_j ‖Δc_j‖² (None: off).
        progress: Optional callback (a line every :data:`.tuning.PROGRESS_EVERY` iterations).
        label: Prefix of the progress messages.
        on_pass: Called with every :class:`~workflow.kmeans.engine.PassResult` (e.g. to record the pruning
            statistics).

    Returns:
        ``(centroids, number of updates run)``.
    """
    device = engine.source.device
    k, d = centroids.shape
    n_run = 0
    for it in range(n_iters):
        part = engine.accumulate(centroids)
        if on_pass is not None:
            on_pass(part)
        if it > 0 and part.changed == 0:
            break  # fixed point: the update would return the same centroids
        with threads_for(k * d):  # small (k, d) update: no intra-op threads
            new = update_centroids(part.sums.to(device), part.counts.to(device), centroids)
            shift = float(((new.double() - centroids.double()) ** 2).sum().item())
        n_run += 1
        centroids = new
        if progress is not None and (n_run % tuning.PROGRESS_EVERY == 0):
            progress(f"{label}: iteration {n_run}/{n_iters} inertia={part.inertia:.6g} "
                     f"changed={part.changed}")
        if tol_abs is not None and shift <= tol_abs:
            break
    return centroids, n_run
