"""The compiled scan of a CPU distance chunk (workflow/kmeans/compiled_scan.py) against independent computations.

Given ê, the scan must give what the NumPy path of :class:`workflow.kmeans.exact.DenseBlock` gives, bit for bit: the
first column of the least ê, that ê, the group minima over the other columns and the near-tie candidates. Checked
against NumPy sorts on exact ties, duplicated centroids, ±0, far-from-origin data and integer grids, then through
whole k-means runs with and without it, on the engine's thread pool and with several GEMMs per sum block. For long
rows the BLAS may round ê differently from ``addmm``; the assignment must not change (checked at d = 512). The
compiled settling of the near ties is checked the same way: its f against ``exact_sq`` on every branch of NumPy's
summation order, its choices against ``resolve_ties`` (exact ties whose lower index comes later in column order).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from workflow.kmeans import exact, kmeans, tuning
from workflow.kmeans.compiled_scan import scan_centroids, settle_ties, squared_distance
from workflow.kmeans.groups import make_groups


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rows and centroids (float32) where ties and near ties are common."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(8), np.arange(8)), -1).reshape(-1, 2).astype(np.float32)
    dup_c = rng.normal(size=(30, 6)).astype(np.float32)
    far = (rng.normal(size=(400, 12)) + 1000.0).astype(np.float32)
    return {
        "normal": (rng.normal(size=(500, 16)).astype(np.float32), rng.normal(size=(70, 16)).astype(np.float32)),
        "grid": (np.repeat(grid, 2, axis=0), grid[::3].copy()),  # exact, symmetric ties
        "duplicate_centroids": (rng.normal(size=(300, 6)).astype(np.float32), np.concatenate([dup_c, dup_c])),
        "far_from_origin": (far, far[::10].copy()),  # float32 GEMM values ~1e7: wide near-tie margins
    }


def expected_scan(g: np.ndarray, c_sq: np.ndarray, width: int, n_groups: int, two_e: np.ndarray) -> dict:
    """What the scan must return, by NumPy sorts over ê = c_sq + g (float32; g = −2 C·Xᵀ)."""
    e = (c_sq[:, None] + g).T  # (m, columns)
    col = np.argmin(e, axis=1)
    val = e[np.arange(len(e)), col].astype(np.float64)
    others = e.copy()
    others[np.arange(len(e)), col] = np.inf
    second = others.min(1)
    gmin = others.reshape(len(e), n_groups, width).min(2) if n_groups else None
    tie = second <= val + two_e
    rows, cols = np.nonzero(e[tie] <= (val + two_e)[tie, None])
    return {"col": col, "val": val, "gmin": gmin, "rows": np.flatnonzero(tie)[rows], "cols": cols,
            "vals": e[np.flatnonzero(tie)[rows], cols].astype(np.float64)}


@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("groups", [0, 3])
def test_scan_equals_numpy_sorts(name: str, groups: int) -> None:
    x, c = cases()[name]
    if groups:
        layout = make_groups(torch.from_numpy(c), groups)
        cen = exact.Centroids.build(torch.from_numpy(c), layout)
        width, n_groups = layout.width, layout.n_groups
    else:
        cen = exact.Centroids.build(torch.from_numpy(c), None)
        width, n_groups = 0, 0
    g = (-2.0 * torch.from_numpy(x) @ cen.ct).numpy().T.copy()  # (columns, m): the GEMM output the scan reads
    two_e = 2.0 * cen.margin(torch.from_numpy(x).double().norm(dim=1)).numpy()
    col, val = np.empty(len(x), dtype=np.int64), np.empty(len(x))
    gmin = np.empty((len(x), n_groups), dtype=np.float32) if n_groups else np.empty((0, 0), dtype=np.float32)
    rows, cols, vals = scan_centroids(g, cen.c_sq_row, width, two_e, col, val, gmin)
    want = expected_scan(g, cen.c_sq_row, width, n_groups, two_e)
    np.testing.assert_array_equal(col, want["col"])
    np.testing.assert_array_equal(val, want["val"])
    if n_groups:
        np.testing.assert_array_equal(gmin, want["gmin"])
    np.testing.assert_array_equal(rows, want["rows"])
    np.testing.assert_array_equal(cols, want["cols"])
    np.testing.assert_array_equal(vals, want["vals"])
    if name in ("grid", "duplicate_centroids"):
        assert len(np.unique(rows)) > 10  # the case has the exact ties it is meant to have


def test_scan_keeps_the_first_of_equal_minima_and_their_sign() -> None:
    # ê = −0 + (±0) is ±0: +0 and −0 compare equal, so the first column wins, as in np.argmin, with its bits
    g = np.array([[0.0, -0.0], [-0.0, 0.0], [-2.0, -2.0]], dtype=np.float32)  # ê of row 0: [+0, −0], row 1: [−0, +0]
    c_sq = np.full(3, -0.0, dtype=np.float32)
    col, val = np.empty(2, dtype=np.int64), np.empty(2)
    rows, cols, _ = scan_centroids(g[:2], c_sq[:2], 0, np.zeros(2), col, val, np.empty((0, 0), dtype=np.float32))
    np.testing.assert_array_equal(col, [0, 0])
    np.testing.assert_array_equal(np.signbit(val), [False, True])
    np.testing.assert_array_equal(rows, [0, 0, 1, 1])  # each row: both columns tie
    np.testing.assert_array_equal(cols, [0, 1, 0, 1])
    scan_centroids(g, c_sq, 0, np.zeros(2), col, val, np.empty((0, 0), dtype=np.float32))
    np.testing.assert_array_equal(col, [2, 2])
    np.testing.assert_array_equal(val, [-2.0, -2.0])


@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("groups", [None, 3])
def test_dense_block_with_the_scan_is_the_numpy_path_bit_for_bit(name: str, groups: int | None) -> None:
    x, c = cases()[name]
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    cen = exact.Centroids.build(ct, None if groups is None else make_groups(ct, groups))
    two_e = 2.0 * cen.margin(xt.double().norm(dim=1))
    out = {}
    for scan in (None, scan_centroids):
        block = exact.DenseBlock(len(x), cen, two_e, scan)
        for r in range(0, len(x), 97):
            block.add(r, xt[r:r + 97])
        out[scan] = block.finish(lambda index: xt.index_select(0, index))
    plain, scanned = out[None], out[scan_centroids]
    assert torch.equal(plain.idx, scanned.idx)
    assert torch.equal(plain.val, scanned.val)
    assert plain.min_sum == scanned.min_sum
    if groups is not None:
        assert torch.equal(plain.gmin, scanned.gmin)


@pytest.mark.parametrize("name", ["grid", "duplicate_centroids", "far_from_origin"])
def test_kmeans_with_the_scan_gives_the_same_bits(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import workflow.kmeans.compiled_scan as compiled_scan

    x, c = cases()[name]
    calls = []
    monkeypatch.setattr(compiled_scan, "scan_centroids", lambda *a: calls.append(1) or scan_centroids(*a))
    runs = {}
    for threshold in (2**62, 0):  # never, always compiled
        monkeypatch.setattr(tuning, "COMPILED_SCAN_MIN", threshold)
        runs[threshold] = [kmeans(x, len(c), n_iters=6, seed=2, chunk_size=61, prune=prune)
                           for prune in ("never", "always")]
        assert bool(calls) == (threshold == 0)  # the compiled scan ran exactly when asked to
    for never, always in zip(runs[2**62], runs[0], strict=True):
        np.testing.assert_array_equal(never.centroids, always.centroids)
        np.testing.assert_array_equal(never.assignment, always.assignment)
        np.testing.assert_array_equal(never.distances, always.distances)
        assert never.inertia == always.inertia


def test_long_rows_keep_the_assignment_within_the_bound() -> None:
    # with d > 384, MKL adds addmm's bias to the first block of the inner dimension, so ê may differ in its last
    # bits from the scan's c_sq + g (g = −2 C·Xᵀ); both lie within E of the exact value, and the settled assignment
    # is the same
    rng = np.random.default_rng(3)
    c = rng.normal(size=(64, 512)).astype(np.float32)
    c[40:] = c[:24]  # duplicated centroids: exact ties to settle
    x = np.concatenate([rng.normal(size=(400, 512)), c[:30] + 1e-4]).astype(np.float32)
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    for layout in (None, make_groups(ct, 4)):
        cen = exact.Centroids.build(ct, layout)
        e = cen.margin(xt.double().norm(dim=1))
        out = {}
        for scan in (None, scan_centroids):
            block = exact.DenseBlock(len(x), cen, 2.0 * e, scan)
            for r in range(0, len(x), 128):
                block.add(r, xt[r:r + 128])
            out[scan] = block.finish(lambda index: xt.index_select(0, index))
        plain, scanned = out[None], out[scan_centroids]
        assert torch.equal(plain.idx, scanned.idx)
        np.testing.assert_array_equal(plain.idx.numpy(), np.argmin(
            ((x.astype(np.float64)[:, None] - c.astype(np.float64)[None]) ** 2).sum(-1), axis=1))
        assert bool(((plain.val - scanned.val).abs() <= 2 * e).all())
        if layout is not None:
            gap = (plain.gmin.double() - scanned.gmin.double()).abs()
            assert bool((gap <= 2 * e.unsqueeze(1) * (1 + 2**-20)).all())


def test_pieces_of_a_block_and_the_thread_pool_give_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    # sum blocks of 366 rows (6 chunks of 61), scanned in GEMMs of 244 rows: 244 + 122, and 244 + 96 for the last
    # block of 340 rows; blocks large enough for the engine's pool of 2 threads
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, size=(4000, 32)).astype(np.float32)  # integer rows: exact ties everywhere
    k = 96
    monkeypatch.setattr(tuning, "BLOCK_MIN_WORK", 366 * k * 32)
    monkeypatch.setattr(tuning, "SCAN_GEMM_FLOATS", 4 * 61 * k)
    import workflow.kmeans.compiled_scan as compiled_scan

    shapes, threads = set(), set()

    def recorded(*a: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shapes.add(a[0].shape[1])
        threads.add(threading.get_ident())
        return scan_centroids(*a)

    monkeypatch.setattr(compiled_scan, "scan_centroids", recorded)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = {}
        for threshold in (2**62, 0):
            monkeypatch.setattr(tuning, "COMPILED_SCAN_MIN", threshold)
            runs[threshold] = [kmeans(x, k, n_iters=5, seed=1, chunk_size=61, prune=prune)
                               for prune in ("never", "always")]
    finally:
        torch.set_num_threads(before)
    assert {244, 122, 96} <= shapes  # whole pieces, a half piece and a short last piece
    assert len(threads) == 2 and threading.get_ident() not in threads  # the scans ran on the pool's two threads
    for never, always in zip(runs[2**62], runs[0], strict=True):
        np.testing.assert_array_equal(never.centroids, always.centroids)
        np.testing.assert_array_equal(never.assignment, always.assignment)
        np.testing.assert_array_equal(never.distances, always.distances)
        assert never.inertia == always.inertia


@pytest.mark.parametrize("dim", [1, 5, 8, 13, 64, 127, 128, 129, 300, 517, 1031])
def test_squared_distance_is_exact_sq_bit_for_bit(dim: int) -> None:
    # NumPy sums a row in blocks of up to 128 (eight running sums) and halves longer rows: every branch, and
    # values over nine decades so that the order of the additions shows in the last bits
    rng = np.random.default_rng(dim)
    x = (rng.normal(size=(60, dim)) * 10.0 ** rng.integers(-4, 5, (60, dim))).astype(np.float32)
    c = (rng.normal(size=(60, dim)) * 10.0 ** rng.integers(-4, 5, (60, dim))).astype(np.float32)
    want = exact.exact_sq(torch.from_numpy(x), torch.from_numpy(c)).numpy()
    buf = np.empty(dim)
    got = np.array([squared_distance(x[i], c[i], buf) for i in range(len(x))])
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, (x.astype(np.float64) - c) ** 2 @ np.ones(dim)) or dim < 8  # the order matters


@pytest.mark.parametrize("grouped", [False, True])
def test_settle_ties_is_resolve_ties(grouped: bool) -> None:
    # duplicated centroids (j and j + 12) tie exactly in f: the lower index must win. Grouped, the columns hold the
    # centroids in reverse order (with padding), so the lower index comes *after* its twin in column order
    rng = np.random.default_rng(5)
    c = rng.normal(size=(24, 7)).astype(np.float32)
    c[12:] = c[:12]
    x = np.concatenate([c[:12] + rng.normal(scale=1e-3, size=(12, 7)), rng.normal(size=(20, 7))]).astype(np.float32)
    width = 9
    slots = np.concatenate([np.arange(23, -1, -1), [-1, -1, -1]]) if grouped else np.empty(0, dtype=np.int64)
    column = {int(cent): j for j, cent in enumerate(slots) if cent >= 0} if grouped else {j: j for j in range(24)}
    rows, cols = [], []
    for i in range(len(x)):
        twins = [column[i % 12], column[i % 12 + 12]]
        others = rng.choice([j for j in column.values() if j not in twins], 2, replace=False)
        for j in sorted([*twins, *others]):  # by row, then column, as scan_centroids lists them
            rows.append(i)
            cols.append(j)
    rows, cols = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    vals = rng.normal(size=len(rows))
    col0 = cols[::4].copy()  # each row's float32 winner: its first candidate
    val0 = rng.normal(size=len(x)).astype(np.float32).astype(np.float64)
    gmin0 = rng.normal(size=(len(x), 3)).astype(np.float32) if grouped else np.empty((0, 0), dtype=np.float32)
    col, val, gmin = col0.copy(), val0.copy(), gmin0.copy()
    settle_ties(x, c, slots, width if grouped else 0, rows, cols, vals, col, val, gmin)
    cand = slots[cols] if grouped else cols
    win = exact.resolve_ties(torch.from_numpy(x), torch.from_numpy(c), torch.from_numpy(rows),
                             torch.from_numpy(cand)).numpy()
    np.testing.assert_array_equal(col, cols[win])
    np.testing.assert_array_equal(val, vals[win])
    winners = slots[col[:12]] if grouped else col[:12]
    np.testing.assert_array_equal(winners, np.arange(12))  # the lower index of each exact tie
    if grouped:
        assert all(col[i] > column[i + 12] for i in range(12))  # ...which came after its twin in column order
        moved = col != col0  # a row whose winner moved gets its old ê back into the old winner's group minimum
        want = gmin0.copy()
        h = col0[moved] // width
        want[moved, h] = np.minimum(want[moved, h], val0[moved].astype(np.float32))
        assert moved.any()
        np.testing.assert_array_equal(gmin, want)
