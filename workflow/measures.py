"""Label-free measures of a set of vectors: the one copy used by training, curation and evaluation.

The training monitors (``workflow/pretrain/train.py``), the curation diagnostics
(``workflow/curate/diagnostics.py``) and the evaluate stage all call these functions, so the copy
that is tested (``tests/test_measures.py``) is the copy that runs. Formulas: ``docs/metrics.md``.

Every public function validates its inputs and raises :class:`workflow.errors.StrataError` (naming
the offending argument) instead of returning a number that could be silently wrong. Embeddings are
taken as float32 (:func:`check_embeddings`; every table of the workflow stores float32) and the
measures are computed from them in float64.

Measures:

* :func:`rankme`: effective rank of the embedding matrix (Garrido et al. 2023).
* :func:`alignment`, :func:`uniformity`: hypersphere alignment / uniformity (Wang & Isola 2020).
* :func:`embedding_std`: mean per-dimension std of the L2-normalised embeddings (Chen & He 2021).
* :func:`vendi_score`: diversity as the exponentiated eigenvalue entropy of the cosine kernel
  (Friedman & Dieng 2023).
* :func:`entropy`, :func:`gini`: balance of a histogram (e.g. the cluster sizes of a curation).

Shared helpers: :func:`check_embeddings`, :func:`check_int`, :func:`check_real`, :func:`row_norms`
and :func:`l2_normalize` (also used by the evaluation protocols in ``workflow/evaluate/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np

from workflow.errors import StrataError

__all__ = [
    "alignment",
    "check_embeddings",
    "check_int",
    "check_real",
    "embedding_std",
    "entropy",
    "gini",
    "l2_normalize",
    "rankme",
    "row_norms",
    "uniformity",
    "vendi_score",
]

#: Row-block size of the blocked QR used by :func:`rankme` (bounds memory for tall matrices).
_RANKME_BLOCK = 8192
#: Row-block size of row-wise passes (norms, Gram accumulation); bounds float64 temporaries.
_ROW_BLOCK = 8192
#: Upper bound on the entries of one pairwise block in :func:`uniformity` (float64, 32 MiB).
_PAIR_BLOCK_ENTRIES = 2**22
#: Eigenvalues of the Vendi kernel at or below this are round-off and left out (see :func:`vendi_score`).
_VENDI_EIGEN_FLOOR = 1e-12


# --------------------------------------------------------------------------------------------------
# Input checks and L2 normalisation
# --------------------------------------------------------------------------------------------------


def check_embeddings(embeddings: np.ndarray, name: str) -> np.ndarray:
    """Validate an embedding matrix and return it as float32, C-contiguous.

    Args:
        embeddings: Array-like of shape ``(n, d)`` with real numbers.
        name: Name of the argument, used in error messages (e.g. ``"embeddings"``).

    Returns:
        The embeddings as a C-contiguous ``float32`` array of shape ``(n, d)`` (no copy if the
        input already is one).

    Raises:
        StrataError: If the array is not 2-D, has no rows or no columns, is not real-valued, or has
            rows containing NaN/inf (also values too large for float32); the message gives the
            number of bad rows and the first few row indices.
    """
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise StrataError(
            f"{name} must be a 2-D array (n_samples, dim), got {arr.ndim}-D with shape {arr.shape}.",
            where=name,
            fix="Pass one embedding vector per row; reshape a single vector with x.reshape(1, -1).",
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise StrataError(
            f"{name} is empty (shape {arr.shape}).",
            where=name,
            fix="Check that the embedding step produced vectors for the selected samples.",
        )
    if arr.dtype.kind not in "biuf":
        raise StrataError(
            f"{name} must hold real numbers, got dtype {arr.dtype}.",
            where=name,
            fix="Convert the embeddings to a float array (e.g. np.asarray(x, dtype=np.float32)).",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad_rows.size:
        first = ", ".join(str(i) for i in bad_rows[:5])
        raise StrataError(
            f"{name} has {bad_rows.size} of {out.shape[0]} rows with NaN/inf values (or values too large "
            f"for float32), e.g. rows [{first}].",
            where=name,
            fix="Drop or recompute those samples (a diverged model often produces NaN embeddings).",
        )
    return out


def check_int(value: object, name: str, minimum: int) -> int:
    """Return ``value`` as int if it is an integer >= ``minimum`` (not a bool), else raise StrataError."""
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise StrataError(
            f"{name} must be an integer >= {minimum}, got {value!r}.",
            where=name,
            fix=f"Set {name} to an integer >= {minimum}.",
        )
    return int(value)


def check_real(value: object, name: str, *, positive: bool, fix: str) -> float:
    """Return ``value`` as float if it is a finite real (and > 0 when ``positive``), else raise StrataError."""
    ok = not isinstance(value, bool) and isinstance(value, Real) and np.isfinite(value)
    if ok and positive:
        ok = float(value) > 0
    if not ok:
        kind = "a positive finite number" if positive else "a finite number"
        raise StrataError(f"{name} must be {kind}, got {value!r}.", where=name, fix=fix)
    return float(value)


def row_norms(x: np.ndarray, name: str) -> np.ndarray:
    """Float64 L2 norm of every row of ``x``, in row blocks (no full float64 copy of ``x``).

    Raises:
        StrataError: If a row has zero norm (its cosine similarity is undefined).
    """
    n = x.shape[0]
    norms = np.empty(n, dtype=np.float64)
    for start in range(0, n, _ROW_BLOCK):
        block = x[start:start + _ROW_BLOCK].astype(np.float64)
        norms[start:start + _ROW_BLOCK] = np.sqrt(np.add.reduce(block * block, axis=1))
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        first = ", ".join(str(i) for i in zero[:5])
        raise StrataError(
            f"{name} has {zero.size} all-zero rows (e.g. rows [{first}]); cosine similarity is undefined "
            f"for them.",
            where=name,
            fix="Drop or recompute those samples (all-zero vectors usually mean a collapsed or broken model).",
        )
    return norms


def l2_normalize(x: np.ndarray, name: str, dtype: type = np.float32) -> np.ndarray:
    """Return the rows of ``x`` scaled to unit L2 norm, ``x_i / ‖x_i‖₂`` (C-contiguous, ``dtype``).

    Norms and the division are computed in float64 (so tiny-but-nonzero vectors do not underflow)
    one row block at a time; the only full-size allocation is the output.

    Raises:
        StrataError: If a row has zero norm (its direction, hence its cosine similarity, is undefined).
    """
    norms = row_norms(x, name)
    out = np.empty(x.shape, dtype=dtype)
    for start in range(0, x.shape[0], _ROW_BLOCK):
        stop = start + _ROW_BLOCK
        out[start:stop] = x[start:stop] / norms[start:stop, None]
    return out


def _subsample_rows(x: np.ndarray, max_points: int | None, seed: int, minimum: int) -> np.ndarray:
    """Rows of ``x``, or ``max_points`` of them drawn without replacement (seeded, original order kept)."""
    if max_points is None:
        return x
    max_points = check_int(max_points, "max_points", minimum)
    if x.shape[0] <= max_points:
        return x
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(x.shape[0], size=max_points, replace=False))]


# --------------------------------------------------------------------------------------------------
# Spectrum: RankMe, Vendi score
# --------------------------------------------------------------------------------------------------


def _singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values of ``x`` (float64), via a blocked QR for tall matrices to bound memory.

    For ``n`` rows > block size, ``R`` is updated as ``qr([R; X_block]).R`` so that ``RᵀR = XᵀX``
    and ``R`` (at most ``d × d``) has the same singular values as ``X``.
    """
    n = x.shape[0]
    if n <= _RANKME_BLOCK:
        return np.linalg.svd(x.astype(np.float64), compute_uv=False)
    r = np.zeros((0, x.shape[1]), dtype=np.float64)
    for start in range(0, n, _RANKME_BLOCK):
        block = x[start:start + _RANKME_BLOCK].astype(np.float64)
        r = np.linalg.qr(np.vstack([r, block]), mode="r")
    return np.linalg.svd(r, compute_uv=False)


def rankme(embeddings: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe: the smooth effective rank of the embedding matrix (Garrido et al. 2023).

    With singular values ``σ_1..σ_m`` of the (uncentred) ``N × d`` matrix, ``m = min(N, d)``:

        p_k = σ_k / Σ_j σ_j + ε,      RankMe = exp(-Σ_k p_k log p_k)

    It lies in ``[1, m]`` (up to ``ε`` effects) and equals ``r`` for a rank-``r`` matrix with equal
    non-zero singular values. Singular values are computed in float64. Used by evaluation (on the
    ``probe_test`` embeddings) and as a pretraining collapse monitor (on a fixed training batch).

    References:
        Garrido, Balestriero, Najman & LeCun 2023, "RankMe: Assessing the Downstream Performance of
        Pretrained Self-Supervised Representations by Their Rank" (ICML); Roy & Vetterli 2007,
        "The effective rank: a measure of effective dimensionality".

    Args:
        embeddings: Array of shape ``(N, d)``.
        eps: Smoothing constant ``ε >= 0``.

    Returns:
        The RankMe value.

    Raises:
        StrataError: On invalid embeddings, an all-zero matrix (rank 0, RankMe undefined), or a
            negative / non-finite ``eps``.
    """
    x = check_embeddings(embeddings, "embeddings")
    if isinstance(eps, bool) or not (isinstance(eps, Real) and np.isfinite(eps) and eps >= 0):
        raise StrataError(
            f"eps must be a finite number >= 0, got {eps!r}.",
            where="eps",
            fix="Use the default eps=1e-7.",
        )
    sigma = _singular_values(x)
    total = float(sigma.sum())
    if total == 0.0:
        raise StrataError(
            "embeddings is an all-zero matrix; RankMe is undefined (rank 0).",
            where="embeddings",
            fix="Check the model: all-zero embeddings mean complete collapse or a broken export.",
        )
    p = sigma / total + eps
    p = p[p > 0]  # only reachable with eps = 0; uses the limit 0·log 0 = 0
    return float(np.exp(-np.sum(p * np.log(p))))


def vendi_score(x: np.ndarray, max_points: int | None = None, seed: int = 0) -> float:
    """Vendi score with the cosine-similarity kernel (Friedman & Dieng 2023).

    Rows are L2-normalised to ``x̂_i`` so that ``K_ij = x̂_i·x̂_j`` has unit diagonal. With
    ``λ_1..λ_n`` the eigenvalues of ``K / n`` (they are ≥ 0 and sum to 1):

        VS = exp(−Σ_i λ_i log λ_i),   0 log 0 = 0

    the exponential of the Shannon entropy of the eigenvalues (order ``q = 1``). The non-zero
    eigenvalues of ``K/n = X̂X̂ᵀ/n`` equal those of the ``d × d`` matrix ``X̂ᵀX̂/n`` (dual form,
    ``score_dual`` of ``vertaix/Vendi-Score``), which is what is computed: accumulated in float64 over
    row blocks, then ``numpy.linalg.eigvalsh``. Eigenvalues ≤ 1e-12 are round-off (their entropy
    terms are below 3·10⁻¹¹) and are left out, and the rest is renormalised to sum to 1. VS lies in
    ``[1, min(n, d)]``: 1 when all rows point the same way, ``n`` for ``n`` orthogonal rows. With
    ``max_points``, a uniformly random subset of that many rows (``numpy.random.default_rng(seed)``)
    is used. The curation diagnostics report it for seeded samples of the pool and of the selection.

    All-zero rows raise :class:`StrataError`: the cosine kernel is undefined for them (``K_ii = 1``
    cannot hold), leaving them out would score another set than the one given (of another size), and
    no value in ``[1, n]`` describes them.

    References:
        Friedman & Dieng 2023, "The Vendi Score: A Diversity Evaluation Metric for Machine Learning"
        (TMLR, arXiv:2210.02410).

    Args:
        x: ``(n, d)`` embeddings or features.
        max_points: Optional cap ``>= 1`` on the number of rows used (random subsample).
        seed: Seed of the subsample.

    Returns:
        The Vendi score as a float.

    Raises:
        StrataError: On invalid embeddings, all-zero rows or ``max_points`` < 1.
    """
    arr = check_embeddings(x, "x")
    arr = _subsample_rows(arr, max_points, seed, 1)
    n, d = arr.shape
    norms = row_norms(arr, "x")
    cov = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, _ROW_BLOCK):
        block = arr[start:start + _ROW_BLOCK] / norms[start:start + _ROW_BLOCK, None]
        cov += block.T @ block
    lam = np.linalg.eigvalsh(cov / n)
    lam = lam[lam > _VENDI_EIGEN_FLOOR]
    lam = lam / lam.sum()
    return float(np.exp(-np.sum(lam * np.log(lam))))


# --------------------------------------------------------------------------------------------------
# The hypersphere: alignment, uniformity, spread
# --------------------------------------------------------------------------------------------------


def alignment(z1: np.ndarray, z2: np.ndarray, alpha: float = 2.0) -> float:
    """Alignment of positive pairs on the hypersphere (Wang & Isola 2020).

    With ``f(x) = x / ‖x‖₂`` applied to every row and ``(z1_i, z2_i)`` the ``i``-th positive pair
    (e.g. two augmented views of the same sample):

        L_align = (1/N) Σ_i ‖f(z1_i) − f(z2_i)‖₂^α

    which is the empirical ``E_{(x,y)~p_pos} ‖f(x) − f(y)‖₂^α`` of the paper (``align_loss`` of
    ``SsnL/align_uniform``). Lower is better; it lies in ``[0, 2^α]`` and is 0 for identical views.
    Computed in float64.

    References:
        Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
        Uniformity on the Hypersphere" (ICML).

    Args:
        z1: ``(N, d)`` embeddings of the first views.
        z2: ``(N, d)`` embeddings of the second views (row ``i`` pairs with row ``i`` of ``z1``).
        alpha: Exponent ``α > 0`` (paper default 2).

    Returns:
        ``L_align`` as a float.

    Raises:
        StrataError: On invalid embeddings (NaN/inf, empty, not 2-D), different shapes, all-zero
            rows, or a non-positive ``alpha``.
    """
    a = check_embeddings(z1, "z1")
    b = check_embeddings(z2, "z2")
    if a.shape != b.shape:
        raise StrataError(
            f"z2 has shape {b.shape} but z1 has shape {a.shape}; alignment needs one positive pair per row.",
            where="z2",
            fix="Pass the two views of the same samples, in the same order and from the same model.",
        )
    alpha = check_real(alpha, "alpha", positive=True, fix="Use alpha=2 (the paper's default).")
    diff = l2_normalize(a, "z1", np.float64) - l2_normalize(b, "z2", np.float64)
    dist = np.sqrt(np.add.reduce(diff * diff, axis=1))
    return float(np.mean(dist**alpha))


def uniformity(z: np.ndarray, t: float = 2.0, max_points: int | None = None, seed: int = 0) -> float:
    """Uniformity of embeddings on the hypersphere (Wang & Isola 2020).

    With ``f(x) = x / ‖x‖₂`` applied to every row, this is the log of the average Gaussian-potential
    over all **distinct unordered pairs** ``i < j`` (the ``torch.pdist`` variant of the reference code
    ``SsnL/align_uniform``, i.e. without the ``i = j`` terms):

        L_unif = log( (2 / (N(N−1))) Σ_{i<j} exp(−t ‖f(z_i) − f(z_j)‖₂²) )

    Lower (more negative) is more uniform; it lies in ``[−4t, 0]``. Squared distances are computed
    as ``2 − 2 f(z_i)·f(z_j)`` (clipped at 0) in float64, in row blocks of at most
    ``_PAIR_BLOCK_ENTRIES`` pairs, so no ``N × N`` matrix is formed for large ``N``; the sum is a
    running log-sum-exp, so it cannot underflow for large ``t``. With ``max_points``, a uniformly
    random subset of that many rows (``numpy.random.default_rng(seed)``, without replacement) is
    used; the cost is ``O(M² d)`` for ``M`` rows used.

    References:
        Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
        Uniformity on the Hypersphere" (ICML), Eq. (uniformity loss) with t = 2.

    Args:
        z: ``(N, d)`` embeddings, ``N >= 2``.
        t: Temperature ``t > 0`` of the Gaussian potential (paper default 2; lightly uses 1).
        max_points: Optional cap ``M >= 2`` on the number of rows used (random subsample).
        seed: Seed of the subsample.

    Returns:
        ``L_unif`` as a float.

    Raises:
        StrataError: On invalid embeddings, fewer than 2 rows, all-zero rows, a non-positive ``t``
            or ``max_points`` < 2.
    """
    x = check_embeddings(z, "z")
    t = check_real(t, "t", positive=True, fix="Use t=2 (the paper's default).")
    x = _subsample_rows(x, max_points, seed, 2)
    n = x.shape[0]
    if n < 2:
        raise StrataError(f"uniformity needs at least 2 points, got {n}.", where="z",
                          fix="Evaluate on more samples.")
    xn = l2_normalize(x, "z", np.float64)
    block = max(1, min(n, _PAIR_BLOCK_ENTRIES // n))
    log_total = -np.inf
    for start in range(0, n - 1, block):
        stop = min(start + block, n - 1)
        # Pairs (i, j) with start <= i < stop and j > i: columns start+1.. of rows start..stop-1.
        gram = xn[start:stop] @ xn[start + 1:].T  # (b, n - start - 1)
        logits = -t * np.maximum(2.0 - 2.0 * gram, 0.0)
        # Row r (i = start + r) keeps columns c with j = start + 1 + c > i, i.e. c >= r.
        mask = np.arange(gram.shape[1])[None, :] >= np.arange(stop - start)[:, None]
        vals = logits[mask]
        peak = float(vals.max())
        log_block = peak + float(np.log(np.sum(np.exp(vals - peak))))
        log_total = np.logaddexp(log_total, log_block)
    n_pairs = n * (n - 1) / 2.0
    return float(log_total - np.log(n_pairs))


def embedding_std(z: np.ndarray) -> float:
    """Mean over dimensions of the standard deviation of the L2-normalised embeddings (Chen & He 2021).

    With ``f(x) = x / ‖x‖₂`` applied to every row of the ``N × d`` matrix:

        std = (1/d) Σ_k sd_i( f(z_i)_k ),   sd with ddof = 1

    About ``1/√d`` for embeddings spread over the sphere, 0 when every row points the same way
    (complete collapse). A pretraining collapse monitor; computed in float64.

    References:
        Chen & He 2021, "Exploring Simple Siamese Representation Learning" (CVPR), §4.1.

    Args:
        z: ``(N, d)`` embeddings, ``N >= 2``.

    Returns:
        The mean standard deviation as a float.

    Raises:
        StrataError: On invalid embeddings, fewer than 2 rows or all-zero rows.
    """
    x = check_embeddings(z, "z")
    if x.shape[0] < 2:
        raise StrataError(f"embedding_std needs at least 2 points, got {x.shape[0]}.", where="z",
                          fix="Measure on more samples.")
    return float(np.mean(np.std(l2_normalize(x, "z", np.float64), axis=0, ddof=1)))


# --------------------------------------------------------------------------------------------------
# Balance of a histogram: entropy, Gini
# --------------------------------------------------------------------------------------------------


def entropy(sizes: Sequence[int] | np.ndarray) -> float:
    """Shannon entropy (nats) of ``p_i = s_i / Σ s`` (0 log 0 = 0): log(n) for n equal sizes.

    0 for an empty or all-zero input. The curation diagnostics report it for the cluster sizes of
    every level.

    References:
        Shannon 1948, "A Mathematical Theory of Communication".
    """
    s = np.asarray(sizes, dtype=np.float64).ravel()
    total = s.sum() if s.size else 0.0
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(-(p * np.log(p)).sum())


def gini(sizes: Sequence[int] | np.ndarray) -> float:
    """Gini coefficient of non-negative sizes: G = Σ_i Σ_j |s_i − s_j| / (2 n Σ_i s_i).

    0 for equal sizes, (n − 1)/n when one entry holds everything (e.g. [0, 0, 0, 4] → 0.75); 0 for
    an empty or all-zero input. Computed as Σ_i (2i − n − 1) s_(i) / (n Σ s) on sorted sizes.

    References:
        Gini 1912, "Variabilità e mutabilità".
    """
    s = np.sort(np.asarray(sizes, dtype=np.float64).ravel())
    n, total = s.size, float(s.sum()) if s.size else 0.0
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * ranks - n - 1) * s).sum() / (n * total))
