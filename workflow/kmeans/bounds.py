"""Exact pruning of the Lloyd assignment (Yinyang k-means): per-row distance bounds that skip provably useless
distances.

Between two Lloyd passes most rows cannot change centroid. Following Hamerly (2010), "Making k-means even
faster", SDM, and Ding et al. (2015), "Yinyang K-means: A Drop-In Replacement of the Classic K-means with
Consistent Speedup", ICML, every row keeps an upper bound u ≥ ‖x − c_a‖ on the distance to its own centroid a
and, for each of G groups of centroids, a lower bound l_g ≤ min_{j∈g, j≠a}
‖x − c_j‖ (true distances, not squared, so that the triangle inequality applies). When the centroids move by
δ_j, u += δ_a and l_g −= max_{j∈g} δ_j keep them valid. Then, all vectorised over rows:

* rows with u < min_g l_g keep their centroid, with no distance computed (the *global filter*);
* the others get u tightened to ‖x − c_a‖ (one difference per row) and are tested again;
* for the rows still failing, only the groups with l_g ≤ u can hold a closer centroid (the *group filter*):
  their distances come from one small GEMM per group over the rows that need it (the own group is always
  included). A row whose best value has no other value of its computed groups within 2E has its exact
  argmin; near ties are settled in float64 over the candidates of the computed groups. When the group filter
  keeps too much work (more than :data:`.tuning.DENSE_SHARE` of a dense block), the block's rows are computed densely.

The test u < l carries a relative margin (u (1 + 2⁻²⁰) < l, far above the float64 error of f, which is
relative to d²), every bound is rounded outwards (u up, l down, with a slack σ for the float32 additions),
and bounds derived from ê include ±E. A skipped row or group therefore provably does not hold the exact
argmin, so the pruned and unpruned passes return identical assignments, hence identical float64 centroid sums
(summed over the same row blocks in the same order) and identical centroids: bitwise, as tested.

Groups (:mod:`workflow.kmeans.groups`) are formed at every full (dense) pass by a small k-means over the
centroids, as Ding et al. (who use G = k/10), then balanced into slots of equal width (a multiple of 32, so
that the group minima of a dense block are one vectorised ``amin``); G = 1 is Hamerly's single lower bound.

How much is skipped depends on the data: well-separated clusters (after the first few iterations, when the
centroids move little) skip most distances; data without cluster structure (uniform noise) skip few. The Lloyd
engine's :class:`workflow.kmeans.pruner.Pruner` then backs off to plain passes for a while (2, 8, 32, ...
passes) before it rebuilds the bounds and tries again, so the cost there stays close to plain Lloyd.

Memory: u (n float32), l (n × G float32), ‖x‖² (n float64) and per-block scratch; never n × k."""

from __future__ import annotations

import math

import torch

from workflow.kmeans import tuning
from workflow.kmeans.exact import Centroids, DenseOut, dense_assign, f32_up, resolve_ties
from workflow.kmeans.groups import GroupLayout
from workflow.kmeans.source import DataSource
from workflow.kmeans.threads import workspace

#: Relative margin of the pruning test u · (1 + PRUNE_MARGIN) < l (far above the float64 error of f, ~d·2⁻⁵³):
#: part of the proof, not a tuning knob.
PRUNE_MARGIN = 2.0**-20
#: Outward rounding factors of a float32 square root: (1 ± 2⁻²¹) covers the sqrt and the product (2⁻²⁴ each).
ROUND_UP, ROUND_DOWN = 1 + 2.0**-21, 1 - 2.0**-21


def upper_from(val: torch.Tensor, xs: torch.Tensor, e32: torch.Tensor) -> torch.Tensor:
    """u ≥ ‖x − c‖ from the GEMM value ê = ``val`` (float32 arithmetic; ``xs`` = ‖x‖², ``e32`` from
    :meth:`Centroids.margin32`)."""
    return (val + (xs + e32)).clamp_(min=0).sqrt_().mul_(ROUND_UP)


def lower_from(val: torch.Tensor, xs: torch.Tensor, e32: torch.Tensor) -> torch.Tensor:
    """l ≤ ‖x − c‖ from the GEMM value ê = ``val`` (float32 arithmetic, broadcasting ``xs``/``e32`` over a
    trailing group axis when ``val`` is 2-D); inf stays inf."""
    if val.ndim == 2:
        xs, e32 = xs.unsqueeze(1), e32.unsqueeze(1)
    return (val + (xs - e32)).clamp_(min=0).sqrt_().mul_(ROUND_DOWN)



class YinyangBounds:
    """Per-row bounds of one Lloyd engine's rows, u ``(n,)`` and l ``(n, G)`` float32, and what they refer to.

    The object owns every change of its state: :meth:`store_dense` writes bounds from a dense pass and
    :meth:`settle` makes them valid for that pass's centroids; :meth:`begin_pass`, :meth:`prune_block` and
    :meth:`end_pass` carry them through a pruned pass; :meth:`invalidate` drops them (the engine then runs dense).
    While ``centroids`` is None the bounds are unusable, never wrong: an exception in the middle of an update
    leaves them invalid.

    Attributes:
        upper, lower: u and l (see module doc).
        n_groups: G.
        centroids: The centroids the bounds refer to (None: invalid).
        layout: The grouping of the centroids the bounds refer to.
        scale: An upper bound of every finite bound value (for the rounding slack σ of the float32 updates).
    """

    def __init__(self, n: int, n_groups: int, device: torch.device) -> None:
        self.upper = torch.empty(n, dtype=torch.float32, device=device)
        self.lower = torch.empty((n, n_groups), dtype=torch.float32, device=device)
        self.n_groups = n_groups
        self.centroids: torch.Tensor | None = None
        self.layout: GroupLayout | None = None
        self.scale = 0.0

    def valid_for(self, centroids: torch.Tensor) -> bool:
        """Whether the bounds hold for the rows' assignment and may be moved to ``centroids`` (same shape)."""
        return (self.centroids is not None and self.layout is not None
                and tuple(self.centroids.shape) == tuple(centroids.shape))

    def invalidate(self) -> None:
        """Drop the bounds (a dense pass moves the assignment without them, or the engine backs off)."""
        self.centroids = None

    def store_dense(self, rows: torch.Tensor | slice, out: DenseOut, x_sq: torch.Tensor, cen: Centroids) -> None:
        """Write u and l of ``rows`` from a grouped :class:`DenseBlock` result (bounds from ê ± E, float32)."""
        xs = x_sq.float()
        e32 = cen.margin32(x_sq.sqrt())
        up = upper_from(out.val.float(), xs, e32)
        low = lower_from(out.gmin, xs, e32)
        if isinstance(rows, slice):
            self.upper[rows] = up
            self.lower[rows] = low
        else:
            self.upper.index_copy_(0, rows, up)
            self.lower.index_copy_(0, rows, low)

    def settle(self, centroids: torch.Tensor, cen: Centroids, x_max: float) -> None:
        """Make the bounds stored by a grouped dense pass valid for its ``centroids`` (``x_max`` ≥ max‖x‖)."""
        self.layout = cen.layout
        self.centroids = centroids.clone()
        self.scale = (x_max + cen.cmax) * (1 + 2.0**-20)

    def begin_pass(self, centroids: torch.Tensor, cen: Centroids, x_max: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Start a pruned pass to ``centroids`` (``cen``: their grouped view): returns the per-centroid and per-group
        drifts ``(delta, gdelta)`` that :meth:`prune_block` applies, and leaves the bounds invalid until
        :meth:`end_pass`."""
        delta, gdelta, max_move = drifts(centroids, self.centroids, self.layout, self.scale)
        self.scale = max(self.scale + max_move, x_max + cen.cmax) * (1 + 2.0**-20)
        self.invalidate()
        return delta, gdelta

    def prune_block(self, src: DataSource, offset: int, r0: int, r1: int, assignment: torch.Tensor,
                    x_sq: torch.Tensor, cen: Centroids, delta: torch.Tensor, gdelta: torch.Tensor, chunk: int
                    ) -> tuple[int, dict[str, int]]:
        """One pruned assignment of the engine rows ``[r0, r1)`` (global rows ``offset + r``), between
        :meth:`begin_pass` and :meth:`end_pass`; updates the assignment and these bounds in place (blocks are
        disjoint, so they may run on several threads).

        Gathers use ``index_select``/``index_copy_`` (10-20x faster than advanced indexing on CPU, measured) into
        the thread's :class:`Workspace`.

        Args:
            src: The engine's data (``rows(index, out)`` is used).
            offset: Global row of engine row 0.
            r0, r1: Engine rows of this block.
            assignment: ``(n,)`` int64 engine assignment (current centroids on entry).
            x_sq: ``(n,)`` float64 ‖x‖² of the engine rows.
            cen: The new centroids (grouped layout, per-group slices).
            delta: ``(k,)`` float32 drift of every centroid, rounded up (+σ).
            gdelta: ``(G,)`` float32 max drift per group, rounded up (+σ).
            chunk: Rows per dense block.

        Returns:
            ``(changed, stats)``: rows whose centroid changed; row counts: ``rows``, pruned by the global filter
            (``global``), pruned after tightening u (``tight``), group-filtered (``group``), computed densely
            (``dense``), the (row, group) pairs computed (``pairs``) and their centroid count (``cols``).
        """
        ws = workspace()
        a = assignment[r0:r1]
        up = self.upper[r0:r1]
        low = self.lower[r0:r1]
        up.add_(delta.index_select(0, a))
        low.sub_(gdelta)
        lmin = low.amin(1)
        fail = torch.nonzero(lmin <= up * (1 + PRUNE_MARGIN))[:, 0]
        stats = {"rows": r1 - r0, "global": r1 - r0 - fail.numel(), "tight": 0, "group": 0, "dense": 0, "pairs": 0,
                 "cols": 0}
        if fail.numel() == 0:
            return 0, stats
        m1, d = fail.numel(), cen.c.shape[1]
        x = src.rows(fail + (offset + r0), out=ws.get("x", (m1, d), torch.float32, lmin.device))
        # tighten u: float32 difference form, a sum of positive terms, relative error ≤ γ_{d+2}
        diff = torch.index_select(cen.c, 0, a.index_select(0, fail), out=ws.get("diff", (m1, d), torch.float32,
                                                                                       x.device))
        diff.sub_(x)
        # u ≥ sqrt(s / (1 − γ)): (1 + (d + 4) u) covers γ_{d+2}/2 to first order with room; ROUND_UP the rest
        u_fail = diff.mul_(diff).sum(1).sqrt_().mul_(ROUND_UP + (d + 4) * 2.0**-24)
        up.index_copy_(0, fail, u_fail)
        still = torch.nonzero(lmin.index_select(0, fail) <= u_fail * (1 + PRUNE_MARGIN))[:, 0]
        stats["tight"] = int(m1 - still.numel())
        if still.numel() == 0:
            return 0, stats
        rows = fail.index_select(0, still)  # block rows; their data are x[still]
        old = a.index_select(0, rows)
        layout = cen.layout
        k = cen.c.shape[0]
        m = rows.numel()
        thr = u_fail.index_select(0, still) * (1 + PRUNE_MARGIN)
        need = low.index_select(0, rows) <= thr.unsqueeze(1)
        need.scatter_(1, layout.group.index_select(0, old).unsqueeze(1), True)  # the own group always
        gi, ri = torch.nonzero(need.T, as_tuple=True)  # (group, row) pairs, group-major: one GEMM per group
        xs = x_sq[r0:r1].index_select(0, rows)
        work = float(layout.sizes.index_select(0, gi).sum().item())
        # dense when the groups save little, or when the rows are so few that one small GEMM beats the Python work
        # of a GEMM per group
        if work >= tuning.DENSE_SHARE * m * k or m * k <= tuning.SMALL_DENSE:
            stats["dense"] = m
            self._dense_rows(x, still, xs, rows, r0, a, cen, chunk)
            return int((a.index_select(0, rows) != old).sum().item()), stats
        stats["group"], stats["pairs"], stats["cols"] = m, int(gi.numel()), int(work)
        v1, v2, j1 = _group_minima(x, still.index_select(0, ri), gi, cen)
        dev = x.device
        best = torch.full((m,), math.inf, dtype=torch.float32, device=dev).scatter_reduce_(0, ri, v1, "amin")
        xn = xs.sqrt()
        thr = (best.double() + 2.0 * cen.margin(xn)).index_select(0, ri)
        # The exact argmin is within 2E of the best ê (module doc). One candidate (a group minimum, every other
        # value of every computed group beyond 2E) is the answer; near ties are settled in float64 below.
        n_cand = torch.bincount(ri, weights=(v1.double() <= thr).double() + (v2.double() <= thr).double(),
                                minlength=m)
        single = n_cand == 1
        is_win = (v1 == best.index_select(0, ri)) & single.index_select(0, ri)
        wp = torch.nonzero(is_win)[:, 0]  # the winning pair of every row with a single candidate
        r_win = ri.index_select(0, wp)
        a.index_copy_(0, rows.index_select(0, r_win), j1.index_select(0, wp))
        xs32, e32 = xs.float(), cen.margin32(xn)
        up.index_copy_(0, rows.index_select(0, r_win), upper_from(v1.index_select(0, wp), xs32.index_select(0, r_win),
                                                                  e32.index_select(0, r_win)))
        keep = torch.nonzero(single.index_select(0, ri))[:, 0]
        pr, pg = ri.index_select(0, keep), gi.index_select(0, keep)
        # l of a computed group: its minimum over the centroids other than the winner
        val = torch.where(is_win.index_select(0, keep), v2.index_select(0, keep), v1.index_select(0, keep))
        flat = rows.index_select(0, pr) * layout.n_groups + pg
        low.view(-1).index_copy_(0, flat, lower_from(val, xs32.index_select(0, pr), e32.index_select(0, pr)))
        tie_rows = torch.nonzero(~single)[:, 0]
        if tie_rows.numel():
            stats["near_ties"] = int(tie_rows.numel())
            local = torch.full((m,), -1, dtype=torch.int64, device=dev)
            local.index_copy_(0, tie_rows, torch.arange(tie_rows.numel(), device=dev))
            tp = torch.nonzero(~single.index_select(0, ri))[:, 0]  # their pairs, still group-major
            pr, pg = ri.index_select(0, tp), gi.index_select(0, tp)
            win, win_val, pair_low = _settle(x, still.index_select(0, tie_rows), local.index_select(0, pr), pg, cen,
                                             xn.index_select(0, tie_rows))
            r_tie = rows.index_select(0, tie_rows)
            a.index_copy_(0, r_tie, win)
            up.index_copy_(0, r_tie, upper_from(win_val, xs32.index_select(0, tie_rows), e32.index_select(0, tie_rows)))
            flat = rows.index_select(0, pr) * layout.n_groups + pg
            low.view(-1).index_copy_(0, flat, lower_from(pair_low, xs32.index_select(0, pr), e32.index_select(0, pr)))
        return int((a.index_select(0, rows) != old).sum().item()), stats

    def end_pass(self, centroids: torch.Tensor) -> None:
        """Every block of the pass is done: the bounds now refer to ``centroids``."""
        self.centroids = centroids.clone()

    def estimated_work(self, src: DataSource, offset: int, assignment: torch.Tensor, centroids: torch.Tensor
                       ) -> float:
        """Share of a dense pass's distances that a pruned pass to ``centroids`` would compute, estimated on a
        strided sample of at most 4096 rows: the global filter and the tightened u, then the groups that remain
        (in float64, without the rounding margins: an estimate only)."""
        k = centroids.shape[0]
        n_rows = self.upper.shape[0]
        idx = torch.arange(0, n_rows, max(1, n_rows // 4096), device=src.device)
        a = assignment.index_select(0, idx)
        move = (centroids.double() - self.centroids.double()).pow_(2).sum(1).sqrt_()
        gmove = torch.zeros(self.n_groups, dtype=torch.float64, device=src.device).scatter_reduce_(
            0, self.layout.group, move, "amax")
        up = self.upper.index_select(0, idx).double() + move.index_select(0, a)
        low = self.lower.index_select(0, idx).double() - gmove
        lmin = low.amin(1)
        fail = torch.nonzero(lmin <= up)[:, 0]
        if fail.numel() == 0:
            return 0.0
        diff = src.rows(idx.index_select(0, fail) + offset) - centroids.index_select(0, a.index_select(0, fail))
        tight = diff.double().pow_(2).sum(1).sqrt_()
        still = torch.nonzero(lmin.index_select(0, fail) <= tight)[:, 0]
        need = low.index_select(0, fail.index_select(0, still)) <= tight.index_select(0, still).unsqueeze(1)
        need.scatter_(1, self.layout.group.index_select(0, a.index_select(0, fail.index_select(0, still)))
                      .unsqueeze(1), True)
        return float((need.double() @ self.layout.sizes.double()).sum().item()) / (idx.numel() * k)

    def _dense_rows(self, x: torch.Tensor, xi: torch.Tensor, xs: torch.Tensor, rows: torch.Tensor, r0: int,
                    a: torch.Tensor, cen: Centroids, chunk: int) -> None:
        """Dense exact assignment of the rows ``x[xi]`` (block rows ``rows``, ‖x‖² ``xs``), bounds rebuilt."""
        ws = workspace()
        for s in range(0, rows.numel(), chunk):
            e = min(rows.numel(), s + chunk)
            xb = torch.index_select(x, 0, xi[s:e], out=ws.get("dense_x", (e - s, x.shape[1]), x.dtype, x.device))
            out = dense_assign(xb, xs[s:e].sqrt(), cen)
            r = rows[s:e]
            a.index_copy_(0, r, out.idx)
            self.store_dense(r + r0, out, xs[s:e], cen)

def drifts(new: torch.Tensor, old: torch.Tensor, layout: GroupLayout, scale: float
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-centroid drift ‖new_j − old_j‖ and per-group max drift as float32 rounded up, each + σ.

    σ = 2⁻²² · (``scale`` + max drift) covers the rounding of one float32 addition to a bound of magnitude at
    most that (``scale`` bounds every finite bound before the update), so that ``u += δ`` stays an upper and
    ``l −= Δ`` a lower bound without directed rounding of n × G values.

    Returns:
        ``(delta (k,), gdelta (G,), max drift)``.
    """
    move = (new.double() - old.double()).pow_(2).sum(1).sqrt_() * (1 + 2.0**-40)
    max_move = float(move.max().item())
    sigma = 2.0**-22 * (scale + max_move) + 1e-37
    gmax = torch.zeros(layout.n_groups, dtype=torch.float64, device=move.device)
    gmax.scatter_reduce_(0, layout.group, move, reduce="amax")
    return f32_up(move + sigma), f32_up(gmax + sigma), max_move


def _settle(x: torch.Tensor, xi: torch.Tensor, pr: torch.Tensor, pg: torch.Tensor, cen: Centroids,
            x_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact argmin of rows with near ties, over the centroids of their computed groups.

    Args:
        x: Gathered rows; ``xi``: ``(r,)`` the rows to settle (indices into ``x``).
        pr, pg: ``(p,)`` (row in ``[0, r)``, group) pairs, sorted by group: the groups that may hold the argmin.
        cen: Centroids of the pass; ``x_norm``: ``(r,)`` row norms.

    Returns:
        ``(winner (r,) int64, its ê (r,) float32, per pair the minimum ê over the group without the winner)``.
    """
    dev = x.device
    r = xi.numel()
    counts = torch.bincount(pg, minlength=cen.layout.n_groups).tolist()
    blocks = []
    best = torch.full((r,), math.inf, dtype=torch.float32, device=dev)
    for g, rg in enumerate(pr.split(counts)):
        if rg.numel() == 0:
            continue
        vals = torch.addmm(cen.group_sq[g], cen.group_c[g], x.index_select(0, xi.index_select(0, rg)).T, alpha=-2.0)
        best.scatter_reduce_(0, rg, vals.amin(0), "amin")
        blocks.append((g, rg, vals))
    thr = best.double() + 2.0 * cen.margin(x_norm)
    cand_row, cand_j, cand_val = [], [], []
    for g, rg, vals in blocks:
        pos, col = torch.nonzero(vals.double() <= thr.index_select(0, rg).unsqueeze(0), as_tuple=True)
        cand_row.append(rg.index_select(0, col))
        cand_j.append(cen.group_ids[g].index_select(0, pos))
        cand_val.append(vals[pos, col])
    cand_row, cand_j, cand_val = torch.cat(cand_row), torch.cat(cand_j), torch.cat(cand_val)
    win_pos = resolve_ties(x.index_select(0, xi), cen.c, cand_row, cand_j)
    win, win_val = cand_j.index_select(0, win_pos), cand_val.index_select(0, win_pos)
    pair_low = []
    for g, rg, vals in blocks:
        vals.masked_fill_(cen.group_ids[g].unsqueeze(1) == win.index_select(0, rg).unsqueeze(0), math.inf)
        pair_low.append(vals.amin(0))
    return win, win_val, torch.cat(pair_low)


def _group_minima(x: torch.Tensor, xi: torch.Tensor, gi: torch.Tensor, cen: Centroids
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every (group g, row ``x[xi]``) pair: the smallest and second smallest ê over the centroids of g and
    the centroid index of the smallest. Pairs are sorted by group: one small GEMM per group, computed as
    (s_g × rows) so that the minima reduce over the outer dimension (vectorised across rows; measured ~10x
    faster than a row-wise min over s_g ≈ 30 columns)."""
    counts = torch.bincount(gi, minlength=cen.layout.n_groups).tolist()
    v1s, v2s, j1s = [], [], []
    for g, rg in enumerate(xi.split(counts)):
        if rg.numel() == 0:
            continue
        vals = torch.addmm(cen.group_sq[g], cen.group_c[g], x.index_select(0, rg).T, alpha=-2.0)
        v1, pos = vals.min(0)
        if vals.shape[0] >= 2:
            vals.scatter_(0, pos.unsqueeze(0), math.inf)
            v2s.append(vals.amin(0))
        else:
            v2s.append(torch.full_like(v1, math.inf))
        v1s.append(v1)
        j1s.append(cen.group_ids[g].index_select(0, pos))
    return torch.cat(v1s), torch.cat(v2s), torch.cat(j1s)


def work_fraction(stats: dict[str, int], k: int) -> float:
    """Distances a pruned pass computed, as a share of a dense pass: (dense rows · k + group columns) / (rows · k)."""
    return (stats.get("dense", 0) * k + stats.get("cols", 0)) / max(1, stats.get("rows", 0) * k)
