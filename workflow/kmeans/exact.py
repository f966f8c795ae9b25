"""The certified exact nearest-centroid assignment of every Lloyd pass (dense: every distance computed).

**The assignment rule.** A row x goes to argmin_j f_j, where f_j = Σ_d (x_d − c_jd)² is evaluated in float64 from
the float32 inputs (difference form, one fixed summation order, :func:`exact_sq`), the first index winning exact
ties. Computing f for every (row, centroid) pair would cost as much as the float32 GEMM in double precision, so it
is only used to settle near ties:

1. *Certified float32 GEMM.* ê_j = ‖c_j‖² − 2 x·c_j comes from one ``addmm`` (‖x‖² is the same for every j and left
   out; large CPU passes run the GEMM without the bias and add it in their compiled scan,
   :mod:`workflow.kmeans.compiled_scan`, which the same bound covers). Whatever the summation order of the BLAS, a
   float32 dot product of length d satisfies |fl(x·c) − x·c| ≤ γ_d ‖x‖‖c‖ with γ_d = d·u/(1 − d·u) (Higham 2002,
   *Accuracy and Stability of Numerical Algorithms*, §3.1); with the rounding of ‖c‖² (γ_d ‖c‖²) and of the final
   addition (u |ê|), |ê_j − e_j| ≤ γ_{d+1} (‖c_j‖² + 2 ‖x‖‖c_j‖) ≤ E(x) = κ (‖x‖ + max_j ‖c_j‖)² with κ = (d + 4) u
   (1 + 1/16) (the slack also covers the float64 evaluation of f, ~d·2⁻⁵³). u = 2⁻²⁴, or 2⁻⁸ when reduced-precision
   float32 matmuls (TF32/bf16) are allowed.
2. *Tie resolution.* If the runner-up of a row is within 2E of its best ê, every centroid within 2E of the best
   is a candidate for the exact argmin (all others are provably farther); f is computed for those pairs and
   the smallest f wins, then the smallest index. Otherwise the best ê *is* the exact argmin.

So the result does not depend on how the GEMM was blocked, on the chunk size or the thread count, and, the
point of this rule, not on which distances the pruning (:mod:`workflow.kmeans.bounds`) skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from workflow.kmeans.groups import GroupLayout
from workflow.kmeans.threads import workspace


def matmul_roundoff(device: torch.device) -> float:
    """Unit roundoff of a float32 matmul on ``device``: 2⁻²⁴ (IEEE), or 2⁻⁸ when torch may use TF32/bf16."""
    reduced = torch.get_float32_matmul_precision() != "highest"
    settings = [getattr(torch.backends, "fp32_precision", None)]
    if device.type == "cuda":
        reduced = reduced or bool(getattr(torch.backends.cuda.matmul, "allow_tf32", False))
        settings.append(getattr(torch.backends.cuda.matmul, "fp32_precision", None))
    else:
        settings.append(getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", None))
    reduced = reduced or any(s in ("tf32", "bf16") for s in settings)
    return 2.0**-8 if reduced else 2.0**-24


def error_coefficient(dim: int, device: torch.device) -> float:
    """κ of the bound |ê − e| ≤ κ (‖x‖ + max‖c‖)² on the float32 GEMM value ê = ‖c‖² − 2 x·c (see module doc)."""
    return (dim + 4) * matmul_roundoff(device) * (1 + 1 / 16)


def seeding_margins(max_sq_norm: float, dim: int, device: torch.device) -> tuple[float, float]:
    """``(E, slack)`` of the k-means++ skip tests: the centroids are rows of the data, so ‖c‖ ≤ max‖x‖ and the
    float32 expansion's error is |D̂² − D²| ≤ E = κ (2 max‖x‖)² (:func:`error_coefficient`); ``slack`` =
    1e-9 (2 max‖x‖)² absorbs the rounding of the tests themselves. ``max_sq_norm`` is max‖x‖² (float32)."""
    x_max = math.sqrt(max_sq_norm) * (1 + 2.0**-20)
    return error_coefficient(dim, device) * (2 * x_max) ** 2, 1e-9 * (2 * x_max) ** 2


def f32_up(t: torch.Tensor) -> torch.Tensor:
    """The smallest float32 ≥ each float64 value (round towards +inf); inf stays inf."""
    r = t.float()
    return torch.where(r.double() < t, torch.nextafter(r, torch.full_like(r, math.inf)), r)


def f32_down(t: torch.Tensor) -> torch.Tensor:
    """The largest float32 ≤ each float64 value (round towards −inf); inf stays inf."""
    r = t.float()
    return torch.where(r.double() > t, torch.nextafter(r, torch.full_like(r, -math.inf)), r)


def exact_sq(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """f = Σ_d (x_d − c_d)² per row, in float64 from float32 rows: the reference value of the assignment rule.

    One fixed summation order (NumPy's per-row pairwise sum on CPU), so a pair gets the same value whichever batch
    it is computed in (tested), and ties resolve the same way in every code path. The compiled tie settlement of
    large passes repeats that order (:func:`workflow.kmeans.compiled_scan.squared_distance`); NumPy does not promise
    it, so a test compares the two on every branch of it, and would catch a NumPy that changed it.
    """
    if x.device.type == "cpu":
        diff = x.numpy().astype(np.float64) - c.numpy().astype(np.float64)
        np.square(diff, out=diff)
        return torch.from_numpy(diff.sum(1))
    diff = x.double() - c.double()
    return diff.mul_(diff).sum(1)


def resolve_ties(x_rows: torch.Tensor, centroids: torch.Tensor, pair_row: torch.Tensor,
                 pair_cand: torch.Tensor) -> torch.Tensor:
    """For each row, the position (into the pair lists) of its winning candidate: smallest f, then smallest index.

    Args:
        x_rows: ``(m, d)`` float32 rows.
        centroids: ``(k, d)`` float32 centroids (original order).
        pair_row: ``(p,)`` int64 row of each candidate pair, every row in ``[0, m)`` at least once.
        pair_cand: ``(p,)`` int64 centroid index of each pair.

    Returns:
        ``(m,)`` int64 positions into the pair lists.
    """
    f = exact_sq(x_rows.index_select(0, pair_row), centroids.index_select(0, pair_cand))
    if f.device.type == "cpu":
        order = torch.from_numpy(np.lexsort((pair_cand.numpy(), f.numpy(), pair_row.numpy())))
    else:  # lexicographic (row, f, index) by successive stable sorts, least significant key first
        order = torch.sort(pair_cand, stable=True).indices
        order = order.index_select(0, torch.sort(f.index_select(0, order), stable=True).indices)
        order = order.index_select(0, torch.sort(pair_row.index_select(0, order), stable=True).indices)
    rows = pair_row.index_select(0, order)
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    return order[first]



@dataclass
class Centroids:
    """Per-pass view of the centroids: original order plus the derived quantities the kernels need."""

    c: torch.Tensor  # (k, d) float32, original order
    cmax: float  # max_j ‖c_j‖ (float64, rounded up)
    kappa: float  # error coefficient κ
    layout: GroupLayout | None = None
    ct: torch.Tensor | None = None  # (d, columns): the centroids, or the grouped padded layout
    c_sq: torch.Tensor | None = None  # (1, columns) float32 ‖c‖² per column (+inf on padding)
    group_c: list[torch.Tensor] | None = None  # per group (s_g, d) centroids
    group_sq: list[torch.Tensor] | None = None  # per group (s_g, 1) ‖c‖²
    group_ids: list[torch.Tensor] | None = None  # per group (s_g,) centroid indices

    @staticmethod
    def build(c: torch.Tensor, layout: GroupLayout | None, with_groups: bool = False) -> Centroids:
        c = c.float().contiguous()
        norms = c.double().pow(2).sum(1).sqrt()
        cmax = float(norms.max().item()) * (1 + 2.0**-40) if c.shape[0] else 0.0
        c_sq = (c * c).sum(1)
        if layout is None:
            cols, cols_sq = c, c_sq
        else:
            real = layout.slots >= 0
            cols = torch.zeros((layout.slots.numel(), c.shape[1]), dtype=c.dtype, device=c.device)
            cols[real] = c.index_select(0, layout.slots[real])
            cols_sq = torch.full((layout.slots.numel(),), math.inf, dtype=c.dtype, device=c.device)
            cols_sq[real] = c_sq.index_select(0, layout.slots[real])
        out = Centroids(c=c, cmax=cmax, kappa=error_coefficient(c.shape[1], c.device), layout=layout,
                      ct=cols.T.contiguous(), c_sq=cols_sq.unsqueeze(0))
        if with_groups and layout is not None:
            ids = [sl[sl >= 0] for sl in layout.slots.view(-1, layout.width)]
            out.group_ids = ids
            out.group_c = [c.index_select(0, i) for i in ids]
            out.group_sq = [(cg * cg).sum(1, keepdim=True) for cg in out.group_c]
        return out

    @property
    def c_sq_row(self) -> np.ndarray:
        """‖c‖² per column as a 1-D NumPy view (CPU centroids)."""
        return self.c_sq[0].numpy()

    def margin(self, x_norm: torch.Tensor) -> torch.Tensor:
        """E(x) = κ (‖x‖ + max‖c‖)² (float64) for rows of norm ``x_norm``."""
        return self.kappa * (x_norm.double() + self.cmax) ** 2

    def margin32(self, x_norm: torch.Tensor) -> torch.Tensor:
        """E(x) + 16 u (‖x‖ + max‖c‖)² as float32: the margin of bounds evaluated in float32 (the extra term
        covers the float32 roundings of ê + ‖x‖² ± E, each at most u (‖x‖ + max‖c‖)²)."""
        return ((self.kappa + 16 * 2.0**-24) * (x_norm.double() + self.cmax) ** 2).float()



#: The compiled scan of a chunk (:func:`workflow.kmeans.compiled_scan.scan_centroids`): ``(g, c_sq, width, two_e,
#: col, val, gmin) -> (rows, columns, values)`` of the near-tie candidates.
ChunkScan = Callable[[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                    tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class DenseOut:
    """Result of :func:`dense_assign`: exact argmin ``idx`` (int64, original centroid indices), the GEMM value
    ê of that centroid ``val`` (float64), group minima of ê over the other centroids ``gmin`` ((m, G) float32, when
    grouped) and Σ ê of the chosen centroids ``min_sum``."""

    idx: torch.Tensor
    val: torch.Tensor
    gmin: torch.Tensor | None
    min_sum: float


class DenseBlock:
    """Exact nearest centroids of a block of rows against all centroids, assigned chunk by chunk.

    Every chunk gets its GEMM (into a cache-sized buffer), its float32 argmin and its near-tie detection (the
    runner-up within 2E of the best, module doc); the near ties of the whole block are then settled in float64 in
    one call (:meth:`finish`), which costs less than one call per chunk. With ``scan`` (large CPU passes) a chunk
    may span several distance chunks, and two compiled calls scan it and settle its near ties
    (:mod:`workflow.kmeans.compiled_scan`). With a grouped layout the block also keeps, per row and group, the
    minimum ê over the group's centroids other than the chosen one (the Yinyang lower bounds).

    Args:
        m: Rows of the block.
        cen: Centroids of the pass (columns grouped when ``cen.layout`` is set).
        two_e: ``(m,)`` float64 tie margins 2E of the rows (:meth:`Centroids.margin`, doubled).
        scan: On CPU, :func:`workflow.kmeans.compiled_scan.scan_centroids` to scan each chunk in one compiled call,
            whose near ties :func:`~workflow.kmeans.compiled_scan.settle_ties` then settles in another (the same
            assignment; the engine passes it on large passes, where loading numba pays).
    """

    def __init__(self, m: int, cen: Centroids, two_e: torch.Tensor, scan: ChunkScan | None = None) -> None:
        self.cen = cen
        self.cpu = two_e.device.type == "cpu"
        self.scan = scan if self.cpu else None
        layout = cen.layout
        dev = two_e.device
        self.col = torch.empty(m, dtype=torch.int64, device=dev)  # column of the float32 winner
        self.val = torch.empty(m, dtype=torch.float64, device=dev)  # its ê
        self.gmin = (torch.empty((m, layout.n_groups), dtype=torch.float32, device=dev) if layout is not None
                     else None)
        self.two_e = two_e
        if self.cpu:  # NumPy views of the same memory
            self.col_np, self.val_np, self.two_e_np = self.col.numpy(), self.val.numpy(), two_e.numpy()
        self.pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # near-tie candidates

    def add(self, r0: int, xb: torch.Tensor) -> None:
        """Assign the rows ``[r0, r0 + len(xb))`` of the block; the GEMM goes into the thread's scratch (consumed
        before this returns)."""
        cen, layout = self.cen, self.cen.layout
        m = xb.shape[0]
        r1 = r0 + m
        if self.scan is not None:
            self._add_scanned(r0, xb)
            return
        buf = workspace().get("gemm", (m, cen.ct.shape[1]), torch.float32, xb.device)
        d = torch.addmm(cen.c_sq, xb, cen.ct, alpha=-2.0, out=buf)
        if self.cpu:
            # NumPy's SIMD argmin/min are ~8x faster than torch.min(dim=1) on CPU (k >= 256), on zero-copy
            # views; the per-row work around them stays in NumPy (a torch call costs ~5-10 µs per chunk).
            dn, col, val = d.numpy(), self.col_np[r0:r1], self.val_np[r0:r1]
            np.argmin(dn, axis=1, out=col)
            flat = _arange(m) * dn.shape[1] + col
            best = dn.ravel()[flat]
            dn.ravel()[flat] = np.inf
            # torch's amin over rows is 2-5x faster than NumPy's min (measured), unlike its argmin
            if layout is not None:
                gmin = self.gmin[r0:r1]
                torch.amin(d.view(m, layout.n_groups, layout.width), 2, out=gmin)
                second = torch.amin(gmin, 1).numpy()
            else:
                second = torch.amin(d, 1).numpy()
            val[:] = best
            two_e = self.two_e_np[r0:r1]
            amb = np.flatnonzero(second <= val + two_e)
            if amb.size:
                dn.ravel()[flat[amb]] = best[amb]
                pr, pc = np.nonzero(dn[amb] <= (val[amb] + two_e[amb])[:, None])
                self.pairs.append((torch.from_numpy(amb[pr] + r0), torch.from_numpy(pc),
                                   torch.from_numpy(dn[amb[pr], pc].astype(np.float64))))
            return
        best, col = torch.min(d, 1)
        d.scatter_(1, col.unsqueeze(1), math.inf)
        if layout is not None:
            gmin = d.view(m, layout.n_groups, layout.width).amin(2)
            self.gmin[r0:r1] = gmin
            second = gmin.min(1).values
        else:
            second = d.min(1).values
        val = best.double()
        two_e = self.two_e[r0:r1]
        amb = torch.nonzero(second.double() <= val + two_e)[:, 0]
        if amb.numel():
            d[amb, col[amb]] = best[amb]
            pr, pc = torch.nonzero(d[amb].double() <= (val[amb] + two_e[amb]).unsqueeze(1), as_tuple=True)
            self.pairs.append((amb[pr] + r0, pc, d[amb[pr], pc].double()))
        self.col[r0:r1] = col
        self.val[r0:r1] = val

    def _add_scanned(self, r0: int, xb: torch.Tensor) -> None:
        """:meth:`add` with the compiled scan: the GEMM is ``g`` = −2 C·Xᵀ without the bias, one row per column of
        the layout; :func:`~workflow.kmeans.compiled_scan.scan_centroids` finds each row's winner, group minima
        and near-tie candidates in one call, and :func:`~workflow.kmeans.compiled_scan.settle_ties` settles the
        near ties in another (what :meth:`finish` does for the NumPy path, bit for bit)."""
        from workflow.kmeans.compiled_scan import settle_ties  # loaded already: the engine passed the scan

        cen, layout = self.cen, self.cen.layout
        m = xb.shape[0]
        r1 = r0 + m
        g = workspace().get("gemm", (cen.ct.shape[1], m), torch.float32, xb.device)
        torch.addmm(g, cen.ct.T, xb.T, beta=0, alpha=-2.0, out=g)  # −2 C·Xᵀ: β = 0 ignores g's old values
        gmin = self.gmin[r0:r1].numpy() if layout is not None else _NO_GROUPS
        width = 0 if layout is None else layout.width
        col, val = self.col_np[r0:r1], self.val_np[r0:r1]
        rows, cols, vals = self.scan(g.numpy(), cen.c_sq_row, width, self.two_e_np[r0:r1], col, val, gmin)
        if rows.size:  # settled here, in one compiled call, not with the NumPy path's pairs in finish()
            slots = _NO_SLOTS if layout is None else layout.slots.numpy()
            settle_ties(xb.numpy(), cen.c.numpy(), slots, width, rows, cols, vals, col, val, gmin)

    def finish(self, rows: Callable[[torch.Tensor], torch.Tensor]) -> DenseOut:
        """Settle the near ties (``rows(index)`` returns the block's float32 rows ``index``) and return the
        result of the block."""
        cen, layout = self.cen, self.cen.layout
        if self.pairs:
            pr, pc, pv = (torch.cat(t) for t in zip(*self.pairs, strict=True))
            amb, local = torch.unique(pr, return_inverse=True)
            cand = pc if layout is None else layout.slots.index_select(0, pc)
            win = resolve_ties(rows(amb), cen.c, local, cand)
            new_col = pc.index_select(0, win)
            old_col = self.col.index_select(0, amb)
            if self.gmin is not None:
                # the float32 winner is now an "other" centroid: its group's minimum must include it
                moved = torch.nonzero(new_col != old_col)[:, 0]
                if moved.numel():
                    r, g = amb.index_select(0, moved), old_col.index_select(0, moved) // layout.width
                    old_val = self.val.index_select(0, r).float()
                    self.gmin[r, g] = torch.minimum(self.gmin[r, g], old_val)
            self.val.index_copy_(0, amb, pv.index_select(0, win))
            self.col.index_copy_(0, amb, new_col)
        idx = self.col if layout is None else layout.slots.index_select(0, self.col)
        return DenseOut(idx=idx, val=self.val, gmin=self.gmin, min_sum=float(self.val.sum().item()))


def dense_assign(xb: torch.Tensor, x_norm: torch.Tensor, cen: Centroids) -> DenseOut:
    """Exact nearest centroid of the rows of ``xb`` against all centroids: a one-chunk :class:`DenseBlock`.

    Args:
        xb: ``(m, d)`` float32 rows.
        x_norm: ``(m,)`` float64 row norms.
        cen: Centroids of the pass (columns grouped when ``cen.layout`` is set).

    Returns:
        :class:`DenseOut`.
    """
    block = DenseBlock(xb.shape[0], cen, 2.0 * cen.margin(x_norm))
    block.add(0, xb)
    return block.finish(lambda index: xb.index_select(0, index))


_ARANGE = np.arange(0)
_NO_GROUPS = np.empty((0, 0), dtype=np.float32)
_NO_SLOTS = np.empty(0, dtype=np.int64)


def _arange(m: int) -> np.ndarray:
    """``np.arange(m)`` from a cached array (read-only use)."""
    global _ARANGE
    if _ARANGE.shape[0] < m:
        _ARANGE = np.arange(max(m, 2 * _ARANGE.shape[0]))
    return _ARANGE[:m]

