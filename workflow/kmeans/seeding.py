"""Greedy k-means++ seeding (Arthur & Vassilvitskii 2007), chunked torch path; low-dimensional data go to the
compiled loop of :mod:`workflow.kmeans.seeding_lowdim` (same definition, same random draws).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from workflow.errors import StrataError
from workflow.kmeans import tuning
from workflow.kmeans.exact import seeding_margins
from workflow.kmeans.source import DataSource, check_int
from workflow.kmeans.threads import map_blocks, threads_for


def _sq_dists(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``(m, n)`` squared distances ‖c_j‖² − 2 c_j·x_i + ‖x_i‖² between rows of ``c`` and ``x``, ≥ 0."""
    c_sq = (c * c).sum(1)
    d = torch.addmm(x_sq.unsqueeze(0), c, x.T, alpha=-2.0)
    d.add_(c_sq.unsqueeze(1))
    return d.clamp_(min=0.0)


def kmeans_plusplus(x: torch.Tensor | DataSource, k: int, generator: torch.Generator,
                    n_local_trials: int | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding.

    Arthur & Vassilvitskii (2007), greedy variant as in scikit-learn's ``_kmeans_plusplus`` and in
    Vo et al. (2024, arXiv:2405.15613, spec 1.1): the first centroid is a uniformly random point; each
    next centroid is the best of ``L = 2 + ⌊ln k⌋`` candidates drawn with probability
    p(x_i) = D(x_i)² / Σ_j D(x_j)², where D is the distance to the nearest centroid chosen so far;
    "best" minimises the potential φ = Σ_i min(D(x_i)², ‖x_i − candidate‖²).

    Only rows a candidate can improve are computed (Elkan 2003, "Using the triangle inequality to accelerate
    k-means", ICML, lemma 1, applied per chosen centroid): every row remembers its nearest chosen centroid j, and
    every centroid the radius R_j ≥ max D over its rows; a row of centroid j is at least ‖cand − c_j‖ − D from the
    candidate, so when ‖cand − c_j‖ ≥ 2 R_j no row of j gets closer and the whole cluster is skipped. The
    candidates' improvements Σ_i max(0, D_i² − ‖x_i − cand‖²) are summed over the remaining rows only, and the
    best candidate maximises it, which is the same as minimising φ (the skipped rows contribute D_i² to φ
    for every candidate). The definition is unchanged: same candidates (the D² sampling is untouched), same
    choice up to float rounding of φ. Early centroids (few, large clusters) still touch every row; later ones
    only their neighbourhood, so the cost per centroid falls from a pass over all data to O(n) bookkeeping.

    Data of at most :data:`.tuning.LOWDIM_MAX_DIM` dimensions are seeded on the host by
    :func:`workflow.kmeans.seeding_lowdim.kmeans_plusplus_lowdim` (compiled loops; same definition and same random
    draws, for any device of the data; a memmap is read into memory, ``n × d`` floats).

    Memory: the ``(n,)`` vectors D², ‖x‖² and nearest centroid, and an ``(L, m)`` candidate buffer for the m rows
    computed (float32); the data are read in row chunks or gathered rows (a memmap is read up to k times:
    use ``init_max_points`` of :func:`workflow.kmeans.api.kmeans` for very large inputs).

    Args:
        x: ``(n, d)`` float tensor or :class:`DataSource`.
        k: Number of centroids, ``1 ≤ k ≤ n``.
        generator: Torch generator (CPU); the only source of randomness.
        n_local_trials: Candidates per step; default ``2 + ⌊ln k⌋``.
        chunk_size: Rows per distance block (default: about 2^17 floats per L × chunk block and at most
            2^18 / d rows; the blocks run in parallel on CPU threads, see :func:`map_blocks`).

    Returns:
        ``(k, d)`` tensor of centroids, each a row of ``x`` (float32, on the data's device).
    """
    src = x if isinstance(x, DataSource) else DataSource(x, x.device, check=False)
    n = src.n
    k = check_int(k, "k", 1, "kmeans_plusplus")
    if k > n:
        raise StrataError(f"cannot seed {k} centroids from {n} points.", where="kmeans_plusplus",
                          fix="Use k <= number of points.")
    trials = 2 + int(math.log(k)) if n_local_trials is None else check_int(
        n_local_trials, "n_local_trials", 1, "kmeans_plusplus")
    if src.d <= tuning.LOWDIM_MAX_DIM and generator.device.type == "cpu":
        # low-dimensional data: one compiled loop on the host, on any device (same draws, same definition);
        # imported here because numba takes 0.3 s to import
        from workflow.kmeans import seeding_lowdim

        data = np.ascontiguousarray(src.numpy_or_memmap(), dtype=np.float32)
        chosen = seeding_lowdim.kmeans_plusplus_lowdim(data, k, generator, trials)
        return src.rows(chosen)
    # about 2^17 distances per block, and at most ~1 MiB of rows (L2-resident: the skinny L × d × chunk GEMM
    # is memory bound, measured 4x faster on 6000 than on 16384 rows of d = 128)
    if chunk_size is not None:
        chunk = chunk_size
    elif src.device.type != "cpu":  # few large blocks (kernel launches, not caches, bound a GPU here)
        chunk = tuning.balanced(n, max(64, tuning.GPU_CHUNK_FLOATS // max(trials, src.d)))
    else:
        chunk = tuning.balanced(n, max(64, min((2**17) // trials, 2**18 // src.d)))
    return _kmeans_plusplus(src, k, generator, trials, chunk)


def _kmeans_plusplus(src: DataSource, k: int, generator: torch.Generator, trials: int, chunk: int) -> torch.Tensor:
    n, device, d = src.n, src.device, src.d
    x_sq = torch.empty(n, dtype=torch.float32, device=device)
    closest = torch.empty(n, dtype=torch.float32, device=device)
    near = torch.zeros(n, dtype=torch.int64, device=device)  # nearest chosen centroid of every row
    radius = torch.zeros(k, dtype=torch.float64, device=device)  # R_j ≥ max true D over the rows of centroid j
    buf = torch.empty((trials, n), dtype=torch.float32, device=device)  # D² to the candidates, computed rows
    centroids = torch.empty((k, d), dtype=torch.float32, device=device)
    centers64 = torch.empty((k, d), dtype=torch.float64, device=device)
    gen_device = generator.device
    first = int(torch.randint(n, (1,), generator=generator, device=gen_device).item())
    centroids[0] = src.rows(np.array([first]))[0]
    centers64[0] = centroids[0].double()

    def init(s: int, e: int) -> None:
        xb = src.chunk(s, e)
        x_sq[s:e] = (xb * xb).sum(1)
        closest[s:e] = _sq_dists(xb, x_sq[s:e], centroids[0:1])[0]

    def gains(s: int, e: int, rows: torch.Tensor | None, cand_rows: torch.Tensor) -> torch.Tensor:
        # positions [s, e) of ``rows`` (all rows when None): D² to every candidate into ``buf``, and the
        # improvements Σ max(0, D² − d²) in float64
        if rows is None:
            xb, xs, cl = src.chunk(s, e), x_sq[s:e], closest[s:e]
        else:
            idx = rows[s:e]
            xb, xs, cl = src.rows(idx), x_sq.index_select(0, idx), closest.index_select(0, idx)
        dist = torch.addmm(xs.unsqueeze(0), cand_rows, xb.T, alpha=-2.0, out=buf[:, s:e])
        dist.add_(cand_sq.unsqueeze(1)).clamp_(min=0.0)
        # float32 differences (exact sign: a float32 a - b is > 0 only when a > b), float64 sums
        return (cl.unsqueeze(0) - dist).clamp_(min=0).sum(1, dtype=torch.float64)

    all_bounds = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    for _ in map_blocks(init, all_bounds, trials * min(n, chunk) * d, device):
        pass
    closest[first] = 0.0
    # |D̂² − D²| ≤ E for the float32 expansion (centroids are rows, so ‖c‖ ≤ max‖x‖; see workflow.kmeans.exact)
    err, slack = seeding_margins(float(x_sq.max().item()), d, device)
    radius[0] = math.sqrt(float(closest.max().item()) + err)
    zero = torch.zeros((), dtype=torch.float64, device=device)
    cand_sq = torch.empty(trials, dtype=torch.float32, device=device)
    # below ~4 MiB of data a full pass is cheaper than the per-step bookkeeping of the pruning; on a GPU always
    # (its full pass over 1M x 128 rows takes ~0.1 ms; the pruning's row selections wait for the device)
    prune = n * d >= tuning.KMPP_PRUNE_MIN and device.type == "cpu"
    rows: torch.Tensor | None = None
    for c in range(1, k):
        with threads_for(n):
            cum = torch.cumsum(closest, 0, dtype=torch.float64)
            total = cum[-1]
            r = torch.rand(trials, generator=generator, dtype=torch.float64, device=gen_device).to(device) * total
            # r < total strictly, so searchsorted(right=True) only lands on points with D² > 0.
            r = torch.minimum(r, torch.nextafter(total, zero))
            cand = torch.searchsorted(cum, r, right=True).clamp_(max=n - 1)
            cand_rows = src.rows(cand)
            cand_sq.copy_((cand_rows * cand_rows).sum(1))
            cand64 = cand_rows.double()
        with threads_for(n if prune else 0):
            if prune:
                # clusters a candidate may improve: ‖cand − c_j‖ < 2 R_j (relative margin, absolute slack)
                cc = ((cand64 * cand64).sum(1, keepdim=True) - 2.0 * cand64 @ centers64[:c].T
                      + (centers64[:c] * centers64[:c]).sum(1)).clamp_(min=0)
                hit = (cc < (2.0 * radius[:c]) ** 2 * (1 + 1e-6) + slack).any(0)
                members = None if bool(hit.all()) else torch.nonzero(hit.index_select(0, near))[:, 0]
                # then per row, with its own D instead of its cluster's radius
                m_near = near if members is None else near.index_select(0, members)
                m_closest = closest if members is None else closest.index_select(0, members)
                lim = (m_closest.double() + err) * (4 * (1 + 1e-6)) + slack
                keep = (cc.T.contiguous().index_select(0, m_near) < lim.unsqueeze(1)).any(1)
                rows = torch.nonzero(keep)[:, 0]
                if members is not None:
                    rows = members.index_select(0, rows)
        m = rows.numel() if rows is not None else n
        if m > n // 2:  # most rows: read the chunks in order rather than gathering
            rows, m = None, n
        bounds = [(s, min(m, s + chunk)) for s in range(0, m, chunk)]
        total_gain = torch.zeros(trials, dtype=torch.float64, device=device)
        for part in map_blocks(functools.partial(gains, rows=rows, cand_rows=cand_rows), bounds,
                               trials * min(m, chunk) * d, device):
            total_gain += part  # folded in chunk order: independent of the number of threads
        # the best candidate minimises φ = Σ D² − gain: the largest gain (the first on ties); kept as 1-element
        # tensors, so that a GPU never waits for the host in the unpruned loop
        best = torch.argmax(total_gain, dim=0, keepdim=True)
        chosen = cand.index_select(0, best)
        centroids[c:c + 1] = cand_rows.index_select(0, best)
        centers64[c:c + 1] = cand64.index_select(0, best)
        with threads_for(n):
            new = buf[:, :m].index_select(0, best)[0]
            if rows is None:
                moved = torch.nonzero(new < closest)[:, 0] if prune else None
                torch.minimum(closest, new, out=closest)
            else:
                better = torch.nonzero(new < closest.index_select(0, rows))[:, 0]
                moved = rows.index_select(0, better)
                closest.index_copy_(0, moved, new.index_select(0, better))
            closest.index_fill_(0, chosen, 0.0)
            if not prune:
                continue
            near.index_fill_(0, moved, c)
            near.index_fill_(0, chosen, c)
            # exact radii of the hit clusters (all their rows are ``members``) and of the new one; a full
            # pass may move rows of any cluster, so then every radius is recomputed
            if rows is None or members is None:
                radius[:c + 1] = 0.0
                rad_rows = None
            else:
                radius[:c][hit] = 0.0
                radius[c] = 0.0
                rad_rows = torch.cat([members, chosen])
            rad_near = near if rad_rows is None else near.index_select(0, rad_rows)
            rad_sq = closest if rad_rows is None else closest.index_select(0, rad_rows)
            radius.scatter_reduce_(0, rad_near, (rad_sq.double() + err).sqrt_(), "amax")
    return centroids

