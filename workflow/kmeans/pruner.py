"""When a local Lloyd engine prunes, and how: the policy around :class:`workflow.kmeans.bounds.YinyangBounds`.

The engine always has a dense pass; a :class:`Pruner` is its optional accelerator. It decides whether a pass may
skip distances (k, the size of the pass, the device, and whether the bounds are valid and promise to pay), keeps
the bounds of the engine's rows, and backs off to plain passes on data without cluster structure. Only the time
depends on these decisions: every path assigns exactly, so the result is the same (bitwise) with or without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from workflow.kmeans import tuning
from workflow.kmeans.bounds import YinyangBounds, work_fraction
from workflow.kmeans.exact import Centroids
from workflow.kmeans.groups import default_groups, make_groups
from workflow.kmeans.source import DataSource
from workflow.kmeans.threads import threads_for

#: ``map(task, blocks, work, device)``: how the engine runs independent row blocks (serially or on threads).
BlockMap = Callable[[Callable[[int, int], Any], list[tuple[int, int]], int, torch.device], Iterator[Any]]


class Pruner:
    """The pruning of one local engine's rows ``[start, stop)``: Yinyang bounds plus a back-off policy.

    When a pruned pass computes too much (no cluster structure), plain passes run for a while without bounds:
    2, then 8, 32, ... passes (x4 after every failed retry), then the bounds are rebuilt and tried again.

    Args:
        prune: ``True``: prune every pass with k ≥ :data:`.tuning.PRUNE_MIN_K`; ``None``: only where it pays
            (CPU, passes of at least :data:`.tuning.PRUNE_MIN_WORK` multiply-adds).
        groups: Groups of centroids G (default :func:`workflow.kmeans.groups.default_groups`).
        n_rows, dim, device: Shape and device of the engine's rows.
    """

    def __init__(self, prune: bool | None, groups: int | None, n_rows: int, dim: int, device: torch.device) -> None:
        self.prune = prune
        self.groups = groups
        self.n_rows, self.dim, self.device = n_rows, dim, device
        self.bounds: YinyangBounds | None = None
        self._plain_left = 0
        self._backoff = 2
        self._check_next = True  # estimate the next pruned pass first (see hopeless)

    def active(self, k: int) -> bool:
        """Whether passes with ``k`` centroids keep bounds: k ≥ :data:`.tuning.PRUNE_MIN_K`, and ``prune`` is True,
        or None with a pass of at least :data:`.tuning.PRUNE_MIN_WORK` multiply-adds (below, a plain pass takes a
        few milliseconds and the bounds' Python work would not pay: measured break-even near 1e9)."""
        if self.prune is False or k < tuning.PRUNE_MIN_K:
            return False
        if self.prune is None and self.device.type != "cpu":
            # measured on an H100 (1M x 128, k = 1000): pruned passes 0.37 s, plain 0.039 s. The GEMM they skip is
            # cheap there; their row selections and bound updates are many small kernels and host syncs.
            return False
        return bool(self.prune) or self.n_rows * k * self.dim >= tuning.PRUNE_MIN_WORK

    def ready(self, centroids: torch.Tensor) -> bool:
        """Whether the bounds are valid for a pass to ``centroids``."""
        return self.bounds is not None and self.bounds.valid_for(centroids)

    def worth_it(self, centroids: torch.Tensor, src: DataSource, start: int, assignment: torch.Tensor) -> bool:
        """Whether the next pass should prune: the bounds are ready, and right after a rebuild or a pass that was
        not clearly worth it, a sample does not predict a hopeless pass (:meth:`hopeless`)."""
        if not (self.active(centroids.shape[0]) and self.ready(centroids)):
            return False
        return not (self._check_next and self.hopeless(centroids, src, start, assignment))

    def hopeless(self, centroids: torch.Tensor, src: DataSource, start: int, assignment: torch.Tensor) -> bool:
        """Whether a pruned pass would compute more than :data:`.tuning.PRUNE_SKIP_WORK` of a dense pass's
        distances (:meth:`YinyangBounds.estimated_work`; typically after large centroid moves, or without cluster
        structure). Then this pass runs plain and the engine backs off: a hopeless pruned pass costs ~2x a plain
        one."""
        with threads_for(0):
            work = self.bounds.estimated_work(src, start, assignment, centroids)
        if work <= tuning.PRUNE_SKIP_WORK:
            return False
        self._back_off()
        return True

    def _back_off(self) -> None:
        self.bounds.invalidate()
        self._plain_left = self._backoff
        self._backoff *= 4

    def record(self, stats: dict[str, int], k: int) -> None:
        """After a pruned pass: back off to plain passes when it computed more than :data:`.tuning.PRUNE_MAX_WORK`
        of a dense one."""
        work = work_fraction(stats, k)
        # the next pass is only estimated first when this one was not clearly worth it
        self._check_next = work > tuning.PRUNE_MAX_WORK / 4
        if work <= tuning.PRUNE_MAX_WORK:
            self._backoff = 2
            return
        self._back_off()

    def plan_dense(self, k: int) -> bool:
        """Before a dense pass of :meth:`accumulate`: whether it (re)builds the bounds (not while backing off);
        counts the back-off down."""
        grouped = self.active(k) and self._plain_left == 0
        self._plain_left = max(0, self._plain_left - 1)
        return grouped

    def dense_centroids(self, centroids: torch.Tensor, grouped: bool) -> Centroids:
        """The centroids of a dense pass; ``grouped``: in the grouped column order, and the bounds are reset to be
        rebuilt by the pass (:meth:`YinyangBounds.store_dense`, then :meth:`settle`)."""
        k, d = centroids.shape
        if not grouped:
            self.forget()  # the assignment moves without them
            with threads_for(0):
                return Centroids.build(centroids, None)
        with threads_for(0):  # small (k, d) work: no intra-op threads (see threads_for)
            layout = make_groups(centroids, self.groups or default_groups(k, d))
        if self.bounds is None or self.bounds.n_groups != layout.n_groups:
            self.bounds = None  # free the old arrays before allocating new ones
            self.bounds = YinyangBounds(self.n_rows, layout.n_groups, self.device)
        self.bounds.invalidate()  # invalid until the pass completes
        with threads_for(0):
            return Centroids.build(centroids, layout)

    def settle(self, centroids: torch.Tensor, cen: Centroids, x_max: float) -> None:
        """After a dense pass: its bounds (when it was grouped) now hold for ``centroids``."""
        if cen.layout is None or self.bounds is None:
            return
        self._check_next = True  # the first pruned pass after a rebuild often follows large moves
        self.bounds.settle(centroids, cen, x_max)

    def forget(self) -> None:
        """Drop the bounds (a dense pass moves the assignment without updating them)."""
        if self.bounds is not None:
            self.bounds.invalidate()

    def assign(self, centroids: torch.Tensor, src: DataSource, start: int, assignment: torch.Tensor,
               row_sq: torch.Tensor, x_max: float, chunk: int, block_map: BlockMap) -> tuple[int, dict[str, int]]:
        """A pruned assignment of the engine's rows to ``centroids``, in place; ``(changed rows, filter stats)``.

        Blocks of rows bound the scratch (rows × d gathers, rows × G masks) and amortise the Python work per group
        (one GEMM per group and block); the result does not depend on them (assignments are exact).
        """
        bounds = self.bounds
        k = centroids.shape[0]
        with threads_for(0):  # small (k, d) work: no intra-op threads (see threads_for)
            cen = Centroids.build(centroids, bounds.layout, with_groups=True)
            delta, gdelta = bounds.begin_pass(centroids, cen, x_max)
        threads = torch.get_num_threads() if src.device.type == "cpu" else 1
        block = tuning.balanced(self.n_rows, min(tuning.PRUNE_BLOCK_ROWS, max(2**10, -(-self.n_rows // threads))))
        blocks = [(s, min(self.n_rows, s + block)) for s in range(0, self.n_rows, block)]

        def task(r0: int, r1: int) -> tuple[int, dict[str, int]]:
            return bounds.prune_block(src, start, r0, r1, assignment, row_sq, cen, delta, gdelta, chunk)

        changed, stats = 0, {}
        for ch, st in block_map(task, blocks, block * k * src.d, src.device):
            changed += ch
            for key, v in st.items():
                stats[key] = stats.get(key, 0) + v
        bounds.end_pass(centroids)
        return changed, stats
