"""Input checks shared by the evaluation protocols: class labels.

Embeddings are checked by :func:`workflow.measures.check_embeddings` (shared with the label-free
measures); labels matter to evaluation only, so their check lives here.
"""

from __future__ import annotations

import numpy as np

from workflow.errors import StrataError

__all__ = ["check_labels"]


def check_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    """Validate a label vector and return it as int64.

    Args:
        labels: Array-like of shape ``(n,)`` with non-negative integer class ids. Float arrays are
            accepted only if every value is a whole number (e.g. ints stored as float).
        n: Required length (the number of rows of the matching embeddings).
        name: Name of the argument, used in error messages (e.g. ``"labels"``).

    Returns:
        The labels as a 1-D ``int64`` array of length ``n``.

    Raises:
        StrataError: If the labels are not 1-D, are empty, have the wrong length, are not numeric,
            contain missing values (NaN/inf), non-integer values or negative values.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise StrataError(
            f"{name} must be a 1-D array of class ids, got {arr.ndim}-D with shape {arr.shape}.",
            where=name,
            fix="Pass one integer class id per sample (flatten column vectors with .ravel()).",
        )
    if arr.shape[0] == 0:
        raise StrataError(f"{name} is empty.", where=name, fix="Provide one class id per sample.")
    if arr.shape[0] != n:
        raise StrataError(
            f"{name} has length {arr.shape[0]} but {n} samples were given.",
            where=name,
            fix="Make sure labels and embeddings refer to the same samples, in the same order.",
        )
    if arr.dtype.kind == "f":
        missing = int(np.count_nonzero(~np.isfinite(arr)))
        if missing:
            raise StrataError(
                f"{name} has {missing} missing (NaN/inf) values.",
                where=name,
                fix="Drop unlabelled samples before evaluation.",
            )
        if not np.all(arr == np.round(arr)):
            raise StrataError(
                f"{name} contains non-integer values.",
                where=name,
                fix="Class ids must be integers; encode classes with np.unique(y, return_inverse=True).",
            )
    elif arr.dtype.kind not in "biu":
        raise StrataError(
            f"{name} must hold integer class ids, got dtype {arr.dtype} (object arrays often hide "
            f"missing values).",
            where=name,
            fix="Drop unlabelled samples and encode classes with np.unique(y, return_inverse=True).",
        )
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8 and arr.max() > np.iinfo(np.int64).max:
        raise StrataError(f"{name} has class ids too large for int64.", where=name,
                          fix="Re-encode classes with np.unique(y, return_inverse=True).")
    out = arr.astype(np.int64)
    negative = int(np.count_nonzero(out < 0))
    if negative:
        raise StrataError(
            f"{name} has {negative} negative values (missing-label markers such as -1 are not allowed).",
            where=name,
            fix="Drop unlabelled samples before evaluation; class ids must be >= 0.",
        )
    return out
