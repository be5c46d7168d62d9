"""Feature scaling along a sample axis: z-score standardization and min-max scaling.

Both are "statistics per feature, then one affine per feature", so both end in batch norm's normalize
kernel on a samples x features view. standardize takes its statistics from batch_stats (double
accumulation, exact for constant features, bitwise thread-count invariant); minmax_scale takes its
minimum and maximum from NumPy's reductions, which already run at memory speed.
"""

import math
from typing import Any, cast

import numpy as np

from . import _validation as check
from ._dispatch import kernels
from ._layout import Output, readable_view
from ._threads import get_num_threads
from ._typing import Array, ArrayLike, FloatArray

_LAYOUT_NOTE = """
    x is seen as (samples, features) with the sample axis first; when the other axes cannot be merged
    into one strided axis without a copy, x is first copied. 2-D data in C or Fortran order never is."""


def _as_samples(arr: Array, axis: int) -> Array | None:
    """A (samples, features) view of arr with `axis` as the samples, or None when that needs a copy."""
    moved = np.moveaxis(arr, axis, 0)
    try:
        return moved.reshape((arr.shape[axis], math.prod(moved.shape[1:])), copy=False)
    except ValueError:
        return None


class SampleProblem:
    """x as (samples, features), oriented so that the kernels walk memory in order.

    ``view`` is the kernel view (outer, features, inner) of x and ``target`` an `Output` with the same
    geometry; ``finish()`` returns y in x's shape.
    """

    def __init__(self, x: Array, axis: int, out: Array | None) -> None:
        self.x, self.axis, self.out = x, axis, out
        samples = _as_samples(x, axis)
        if samples is None:
            samples = _as_samples(np.ascontiguousarray(np.moveaxis(x, axis, 0)), 0)
        assert samples is not None  # a C-ordered array always merges
        self.samples = samples
        self.n_samples, self.n_features = samples.shape
        # Feature-major memory (Fortran order, or samples on the last axis): features are the rows.
        transpose = abs(samples.strides[0]) < abs(samples.strides[1]) and self.n_features > 1
        self.feature_axis = 0 if transpose else 1
        oriented = samples.T if transpose else samples
        out_samples = None if out is None else _as_samples(out, axis)
        self.scratch = None
        if out is not None and out_samples is None:
            self.scratch = np.empty(samples.shape, samples.dtype)
            out_samples = self.scratch
        out_oriented = None if out_samples is None else (out_samples.T if transpose else out_samples)
        self.target = Output(out_oriented, oriented, self.feature_axis, [oriented])
        self.oriented = oriented

    def stats(self) -> tuple[Array, Array]:
        """Per-feature mean and biased variance (float64), from batch_stats."""
        mean = np.zeros(self.n_features)
        var = np.zeros(self.n_features)
        kernels.batch_stats(readable_view(self.oriented, self.feature_axis), mean, var, get_num_threads())
        return mean, var

    def affine(self, center: Array, scale: Array, shift: Array) -> None:
        """Write (x - center) * scale + shift per feature."""
        kernels.normalize(readable_view(self.oriented, self.feature_axis), center, scale, shift,
                          self.target.view, get_num_threads())

    def finish(self) -> Array:
        result = self.target.finish()
        if self.out is not None:
            if self.scratch is not None:
                np.moveaxis(self.out, self.axis, 0)[...] = self.scratch.reshape(np.moveaxis(self.out, self.axis, 0).shape)
            return self.out
        if self.feature_axis == 0:
            result = result.T
        return np.moveaxis(result.reshape(np.moveaxis(self.x, self.axis, 0).shape), 0, self.axis)


def _check_input(x: Any, axis: Any, out: Any) -> tuple[Array, int, Array | None]:
    x = check.float_array("x", x)
    if x.ndim < 1:
        raise ValueError(f"x must have at least 1 dimension, got shape {x.shape}")
    axis = check.channel_axis(axis, x.ndim)
    out = check.out_array(out, x)
    return x, axis, out


def standardize(x: ArrayLike, axis: int = 0, *, ddof: int = 0, eps: float = 0.0,
                out: FloatArray | None = None) -> FloatArray:
    """Z-score standardization along the sample axis: ``(x - mean) / sqrt(var + eps)`` per feature.

    Parameters
    ----------
    x : array of shape (n_samples, ...) (or samples at `axis`), float32 or float64
    axis : int, default 0
        The sample axis; statistics are taken over it, one per position of the other axes.
    ddof : int, default 0
        Delta degrees of freedom of the variance (0: biased, as scikit-learn's StandardScaler; 1: unbiased).
    eps : float, default 0.0
        Added to the variance inside the square root.
    out : array of x's shape and dtype, optional
        Where the result is written; may be x itself.

    Returns
    -------
    y : array of x's shape and dtype
        A feature whose standard deviation is 0 becomes 0 (scikit-learn's StandardScaler convention), not
        NaN or inf; the statistics are exact for constant features, so this is a test for exact zero.
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]])
    >>> np.round(bnext.standardize(x), 3)
    array([[-1.342,  0.   ],
           [-0.447,  0.   ],
           [ 0.447,  0.   ],
           [ 1.342,  0.   ]])
    """
    x, axis, out = _check_input(x, axis, out)
    ddof = check.integer("ddof", ddof)
    n_samples = x.shape[axis]
    if ddof < 0 or (n_samples > 0 and ddof >= n_samples):
        raise ValueError(f"ddof must be >= 0 and smaller than the number of samples {n_samples}, got {ddof}")
    eps = check.nonnegative_finite("eps", eps)
    problem = SampleProblem(x, axis, out)
    if x.size == 0:
        return problem.finish()
    mean, var = problem.stats()
    std = np.sqrt(var * (n_samples / (n_samples - ddof)) + eps)
    with np.errstate(divide="ignore"):
        scale = np.where(std == 0, 1.0, 1.0 / std)
    problem.affine(mean, scale, np.zeros(problem.n_features))
    return problem.finish()


def minmax_scale(x: ArrayLike, axis: int = 0, *, feature_range: tuple[float, float] = (0, 1),
                 out: FloatArray | None = None) -> FloatArray:
    """Scale each feature to `feature_range` by its minimum and maximum along the sample axis.

    Parameters
    ----------
    x : array of shape (n_samples, ...) (or samples at `axis`), float32 or float64
    axis : int, default 0
        The sample axis.
    feature_range : (low, high), default (0, 1)
        Finite, low < high.
    out : array of x's shape and dtype, optional
        Where the result is written; may be x itself.

    Returns
    -------
    y : array of x's shape and dtype
        ``(x - min) * (high - low) / (max - min) + low`` per feature, as scikit-learn's MinMaxScaler
        (``fit_transform``): NaN values are ignored by min and max and stay NaN, and a constant feature
        maps to `low`.
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> bnext.minmax_scale(np.array([[1.0, 7.0], [3.0, 7.0], [2.0, 7.0]]), feature_range=(-1, 1))
    array([[-1., -1.],
           [ 1., -1.],
           [ 0., -1.]])
    """
    x, axis, out = _check_input(x, axis, out)
    low, high = _feature_range(feature_range)
    problem = SampleProblem(x, axis, out)
    if x.size == 0:
        return problem.finish()
    samples = problem.samples
    with np.errstate(invalid="ignore"):
        minimum = np.fmin.reduce(samples, axis=0).astype(np.float64)
        maximum = np.fmax.reduce(samples, axis=0).astype(np.float64)
        data_range = maximum - minimum
        scale = (high - low) / np.where(data_range == 0, 1.0, data_range)
    problem.affine(minimum, scale, np.full(problem.n_features, low))
    return problem.finish()


def _feature_range(feature_range: Any) -> tuple[float, float]:
    try:
        low, high = feature_range
    except (TypeError, ValueError):
        raise TypeError(f"feature_range must be a pair (low, high), got {feature_range!r}") from None
    low = check.finite("feature_range[0]", low)
    high = check.finite("feature_range[1]", high)
    if not low < high:
        raise ValueError(f"feature_range must have low < high, got {(low, high)}")
    return low, high


for _function in (standardize, minmax_scale):
    _function.__doc__ = cast(str, _function.__doc__).replace("{layout}", _LAYOUT_NOTE)
