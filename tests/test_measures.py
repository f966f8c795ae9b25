"""Tests for workflow.measures, the one copy of the label-free measures (small, fast, independent checks).

The training monitors, the curation diagnostics and evaluation all call these functions; the last section
checks that no other copy exists and pins the floats of the former copies, which the study's numbers came from.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from workflow import measures
from workflow.errors import StrataError
from workflow.measures import (
    alignment,
    check_embeddings,
    embedding_std,
    entropy,
    gini,
    l2_normalize,
    rankme,
    uniformity,
    vendi_score,
)

# --------------------------------------------------------------------------------------------------
# input checks, L2 normalisation
# --------------------------------------------------------------------------------------------------


def test_check_embeddings_returns_float32_contiguous():
    x = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    out = check_embeddings(x, "embeddings")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x)


def test_l2_normalize_unit_rows_and_zero_rows_named():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 5)).astype(np.float32) * 1e-30  # tiny but non-zero: no underflow
    out = l2_normalize(x, "x", np.float64)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-12)
    x[[3, 11]] = 0.0
    with pytest.raises(StrataError, match=r"x has 2 all-zero rows \(e.g. rows \[3, 11\]\)") as err:
        l2_normalize(x, "x")
    assert err.value.where == "x" and err.value.fix


# --------------------------------------------------------------------------------------------------
# RankMe
# --------------------------------------------------------------------------------------------------


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


def test_rankme_zero_matrix_rejected():
    with pytest.raises(StrataError, match="all-zero matrix"):
        rankme(np.zeros((4, 3)))


# --------------------------------------------------------------------------------------------------
# alignment, uniformity, embedding std
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
    x = rng.standard_normal((37, 4)).astype(np.float32)  # the measures compute from float32 inputs
    for t in (0.5, 2.0):
        assert uniformity(x, t=t) == pytest.approx(_direct_uniformity(x, t), abs=1e-10)
    whole = uniformity(x)
    for entries in (1, 37, 100):  # 1 row, 1 row, 2 rows per block
        monkeypatch.setattr(measures, "_PAIR_BLOCK_ENTRIES", entries)
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


def test_embedding_std_values():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((50, 8))
    xn = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert embedding_std(z) == pytest.approx(float(np.std(xn, axis=0, ddof=1).mean()), rel=1e-6)
    assert embedding_std(np.outer(rng.uniform(0.5, 3.0, 30), z[0])) == pytest.approx(0.0, abs=1e-7)  # collapse
    wide = rng.standard_normal((20000, 16))
    assert embedding_std(wide) == pytest.approx(1 / math.sqrt(16), rel=0.02)  # spread over the sphere
    with pytest.raises(StrataError, match="at least 2 points"):
        embedding_std(np.ones((1, 3)))
    with pytest.raises(StrataError, match="all-zero rows"):
        embedding_std(np.array([[1.0, 0.0], [0.0, 0.0]]))


# --------------------------------------------------------------------------------------------------
# Vendi score
# --------------------------------------------------------------------------------------------------


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

    # Eigenvalues at round-off level (rank-2 data in 6 dimensions) are left out: still exactly rank 2.
    x = np.tile(np.eye(6)[:2], (10, 1))
    assert vendi_score(x) == pytest.approx(2.0, rel=1e-12)


def test_vendi_hand_values():
    row = np.random.default_rng(0).normal(size=(1, 6))
    assert vendi_score(np.repeat(row, 50, axis=0)) == pytest.approx(1.0)
    assert vendi_score(np.eye(5)) == pytest.approx(5.0)  # orthogonal rows: 5 distinct points
    assert vendi_score(3.0 * np.eye(5)) == pytest.approx(5.0)  # cosine kernel: scale-free


def test_vendi_all_zero_rows_raise():
    # The cosine kernel is undefined for a zero vector (K_ii = 1 cannot hold): the score is refused, naming
    # the rows, rather than computed on fewer rows than given (or reported as 0, outside [1, n]).
    x = np.eye(4)
    x[[1, 3]] = 0.0
    with pytest.raises(StrataError, match=r"x has 2 all-zero rows \(e.g. rows \[1, 3\]\)") as err:
        vendi_score(x)
    assert err.value.where == "x" and "Drop or recompute" in err.value.fix
    with pytest.raises(StrataError, match="all-zero rows"):
        vendi_score(np.zeros((3, 2)))


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
# entropy, Gini
# --------------------------------------------------------------------------------------------------


def test_gini_and_entropy_hand_values() -> None:
    assert gini([1, 1, 1, 1]) == 0.0
    assert entropy([1, 1, 1, 1]) == pytest.approx(math.log(4))
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert entropy([0, 0, 0, 4]) == 0.0
    sizes = np.array([1, 2, 3, 10])
    pairwise = np.abs(sizes[:, None] - sizes[None]).sum() / (2 * len(sizes) ** 2 * sizes.mean())
    assert gini(sizes) == pytest.approx(pairwise)
    p = sizes / sizes.sum()
    assert entropy(sizes) == pytest.approx(-(p * np.log(p)).sum())
    assert gini([]) == 0.0 and entropy([0, 0]) == 0.0


# --------------------------------------------------------------------------------------------------
# one copy: the callers use these functions, and the floats of the former copies
# --------------------------------------------------------------------------------------------------


MEASURE_NAMES = {"rankme", "effective_rank", "alignment", "uniformity", "embedding_std", "vendi_score", "entropy",
                 "size_entropy", "gini", "l2_normalize", "check_embeddings"}


def test_no_other_module_defines_a_measure():
    root = Path(measures.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == Path(measures.__file__):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f"{path.relative_to(root)}: {node.name}" for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name in MEASURE_NAMES]
    assert found == []


def test_callers_use_the_one_copy():
    from workflow.curate import diagnostics
    from workflow.evaluate import stage
    from workflow.pretrain import train

    assert diagnostics.vendi_score is vendi_score and diagnostics.entropy is entropy and diagnostics.gini is gini
    assert stage.rankme is rankme and stage.uniformity is uniformity
    assert (train.rankme, train.alignment, train.uniformity, train.embedding_std) == (
        rankme, alignment, uniformity, embedding_std)


def _former_diagnostics_vendi(x: np.ndarray) -> float:
    """The curation diagnostics' former copy, verbatim (stats.json's vendi came from it)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    x = x[norms > 0] / norms[norms > 0, None]
    lam = np.linalg.eigvalsh(x.T @ x / x.shape[0])
    lam = lam[lam > 1e-12]
    lam = lam / lam.sum()
    return float(np.exp(-(lam * np.log(lam)).sum()))


def _former_train_rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    """The training monitor's former copy, verbatim."""
    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    p = s / max(s.sum(), 1e-12) + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def test_same_floats_as_the_former_copies():
    rng = np.random.default_rng(9)
    for n, d in ((2000, 40), (300, 10), (7, 12)):
        # The workflow's tables are float32; the diagnostics read them as float64.
        x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 3.0, d)).astype(np.float32)
        assert vendi_score(x.astype(np.float64)) == _former_diagnostics_vendi(x)
        assert rankme(x) == _former_train_rankme(x)


def test_monitors_measure_what_the_former_torch_monitors_did():
    # The training monitors were computed in float32 torch; the float64 measures agree to float32 precision.
    rng = np.random.default_rng(10)
    e0 = rng.standard_normal((512, 32)).astype(np.float32)
    e1 = (e0 + 0.3 * rng.standard_normal((512, 32))).astype(np.float32)
    t0 = torch.nn.functional.normalize(torch.from_numpy(e0), dim=1)
    t1 = torch.nn.functional.normalize(torch.from_numpy(e1), dim=1)
    assert alignment(e0, e1) == pytest.approx(float((t0 - t1).norm(dim=1).pow(2).mean()), rel=1e-5)
    assert uniformity(e0) == pytest.approx(float(torch.pdist(t0).pow(2).mul(-2).exp().mean().log()), rel=1e-5)
    assert embedding_std(e0) == pytest.approx(float(t0.std(dim=0).mean()), rel=1e-5)
