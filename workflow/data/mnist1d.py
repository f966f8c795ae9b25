"""MNIST-1D signals (Greydanus & Kobak 2024, "Scaling down deep learning with MNIST-1D", ICML), generated fast.

:func:`make_dataset` returns exactly the arrays of the ``mnist1d`` package's ``mnist1d.data.make_dataset`` (tested
bit for bit against it): the same templates, the same transformation of each signal (pad, dilate, scale, translate,
correlated and i.i.d. noise, shear, subsample) and the same draws of NumPy's legacy generator seeded with
``args.seed``, in the same order. The package builds four ``scipy.interpolate.interp1d`` objects per signal (~0.3 ms
each signal, 4–5 s for a study's 15 000 signals); for one-dimensional float64 data ``interp1d(kind="linear")`` calls
``np.interp``, which this module calls directly, with the sample grids (and the shear's ramp) computed once, and the
package's one-axis ``gaussian_filter`` is called as ``gaussian_filter1d``. It uses a generator of its own instead of
seeding NumPy's global one.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d


@cache
def _linspace(start: float, stop: float, n: int) -> np.ndarray:
    """``np.linspace(start, stop, n)``, computed once per arguments (read-only: shared by every signal)."""
    grid = np.linspace(start, stop, n)
    grid.flags.writeable = False
    return grid


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    """The package's ``interpolate(x, n)``: linear interpolation of ``x`` onto ``n`` evenly spaced points."""
    return np.interp(_linspace(0, 1, n), _linspace(0, 1, len(x)), x)


def _transform(x: np.ndarray, args: Any, rng: np.random.RandomState, eps: float = 1e-8) -> np.ndarray:
    """One signal of the package's ``transform`` (same operations, same draws in the same order)."""
    low, high = args.padding
    pad = low + int(rng.rand() * (high - low + 1))
    new_x = _resample(np.concatenate([x + eps, np.zeros(pad)]), args.template_len + high)  # pad, dilate
    new_x *= 1 + args.scale_coeff * (rng.rand() - 0.5)  # scale
    shift = rng.choice(args.max_translation)  # translate
    new_x = np.concatenate([new_x[-shift:], new_x[:-shift]])
    mask = new_x != 0  # correlated noise where the signal is zero, then i.i.d. noise everywhere
    correlated = gaussian_filter1d(args.corr_noise_scale * rng.randn(*new_x.shape), 2)  # = gaussian_filter
    new_x = mask * new_x + (1 - mask) * correlated
    new_x = new_x + args.iid_noise_scale * rng.randn(*new_x.shape)
    coeff = args.shear_scale * (rng.rand() - 0.5)  # shear
    new_x = new_x - coeff * _linspace(-0.5, 0.5, len(new_x))
    return _resample(new_x, args.final_seq_length)  # subsample


def make_dataset(args: Any) -> dict[str, np.ndarray]:
    """``x``, ``y``, ``x_test``, ``y_test`` of ``mnist1d.data.make_dataset(args)`` (``args`` as from
    ``mnist1d.data.get_dataset_args()``), bit for bit."""
    from mnist1d.data import get_templates

    templates = get_templates()
    rng = np.random.RandomState(args.seed)
    per_class = args.num_samples // len(templates["y"])
    xs = [_transform(x, args, rng) for x in templates["x"] for _ in range(per_class)]
    ys = [y for y in templates["y"] for _ in range(per_class)]
    shuffle = rng.permutation(len(ys))
    x_all, y_all = np.stack(xs)[shuffle], np.stack(ys)[shuffle]
    if args.shuffle_seq:
        x_all = x_all[..., rng.permutation(args.final_seq_length)]
    x_all = (x_all - x_all.mean()) / x_all.std()
    split = int(len(y_all) * args.train_split)
    return {"x": x_all[:split], "x_test": x_all[split:], "y": y_all[:split], "y_test": y_all[split:]}
