"""Plain-NumPy reference twin of the bnext kernels.

Every public kernel of bnext has a function here with the same signature and
the same return tuple. These functions are the readable specification: they
work in float64, use the textbook two-pass formulas (mean first, then the mean
of squared deviations) and favour clarity over speed. Tests and benchmarks pair
each fast function with its twin by name (``getattr(bnext.reference, name)``).

This module imports NumPy only, never the compiled extension, so it works even
when the kernels are not built.

The math, per channel ``c`` over every other axis with ``m`` elements::

    mean   = sum(x) / m
    var    = sum((x - mean)**2) / m                (biased)
    invstd = 1 / sqrt(var + eps)
    x_hat  = (x - mean) * invstd
    y      = weight * x_hat + bias

Validation here is deliberately light (the fast API checks everything); the
reference checks only what it needs to compute a meaningful answer.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import numpy as np
from numpy.lib.array_utils import normalize_axis_index

from ._typing import Array, ArrayLike, DTypeLike, FloatArray

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = ["batch_norm_train", "batch_norm_eval", "batch_norm_backward", "layer_norm", "layer_norm_backward",
           "group_norm", "group_norm_backward", "instance_norm", "instance_norm_backward", "standardize",
           "minmax_scale"]


def _channel_view(x: Array, axis: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Return (axis, reduce_axes, param_shape) for x with channel axis `axis`.

    ``param_shape`` reshapes a (C,) vector so that it broadcasts against x.
    """
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions, got ndim {x.ndim}")
    axis = normalize_axis_index(axis, x.ndim, "axis")
    reduce_axes = tuple(i for i in range(x.ndim) if i != axis)
    param_shape = [1] * x.ndim
    param_shape[axis] = x.shape[axis]
    return axis, reduce_axes, tuple(param_shape)


def _as_float64_param(value: ArrayLike | None, n_channels: int, default: float) -> Array:
    """(C,) float64 copy of a per-channel parameter, or the default filled in."""
    if value is None:
        return np.full(n_channels, default, dtype=np.float64)
    return np.asarray(value, dtype=np.float64).reshape(n_channels)


def _quiet_nonfinite(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """NaN and Inf are data, not errors: let them propagate without warnings."""
    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with np.errstate(invalid="ignore", over="ignore"):
            return function(*args, **kwargs)
    return wrapper


def _store(result: Array, dtype: DTypeLike, out: Array | None) -> Array:
    """Cast a float64 result to `dtype`, writing it into `out` when given."""
    if out is None:
        return result.astype(dtype)
    out[...] = result
    return out


@_quiet_nonfinite
def batch_norm_train(x: ArrayLike, weight: ArrayLike | None = None, bias: ArrayLike | None = None, *,
                     axis: int = 1, eps: float = 1e-5, running_mean: FloatArray | None = None,
                     running_var: FloatArray | None = None, momentum: float = 0.1,
                     out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Training-mode batch normalization with batch statistics.

    Parameters
    ----------
    x : array of shape (N, C, ...), float32 or float64
        Input; the channel axis is `axis`, every other axis is reduced.
    weight, bias : array of shape (C,) or None
        Per-channel scale and shift; None means 1 and 0.
    axis : int, default 1
        The channel axis (1 for NCHW, -1 for channels-last).
    eps : float, default 1e-5
        Added to the variance inside the square root.
    running_mean, running_var : array of shape (C,) or None
        When given, updated in place:
        ``new = (1 - momentum) * old + momentum * batch``, with the
        unbiased batch variance ``var * m / (m - 1)`` for `running_var`.
        An empty batch leaves them untouched.
    momentum : float, default 0.1
        Weight of the batch statistics in the running update.
    out : array of the shape of x or None
        Where to write y; may be x itself.

    Returns
    -------
    y : array of the shape and dtype of x
        Normalized output (`out` when given).
    mean : array of shape (C,), dtype of x
        Batch mean per channel.
    invstd : array of shape (C,), dtype of x
        ``1 / sqrt(var + eps)`` per channel, with the biased batch variance.

    Raises
    ------
    ValueError
        If some channel has exactly one value (m == 1): its variance is
        undefined. The running statistics are left unchanged.

    Notes
    -----
    For an empty batch (m == 0) the mean is 0 and the variance is taken as 0,
    so invstd is ``1 / sqrt(eps)``; y is empty.

    Examples
    --------
    >>> import numpy as np
    >>> from bnext import reference
    >>> x = np.array([[1.0], [2.0], [3.0], [4.0]])
    >>> y, mean, invstd = reference.batch_norm_train(x, np.array([2.0]), np.array([1.0]))
    >>> np.round(y.ravel(), 3)
    array([-1.683,  0.106,  1.894,  3.683])
    """
    x = np.asarray(x)
    dtype = x.dtype
    axis, reduce_axes, param_shape = _channel_view(x, axis)
    n_channels = x.shape[axis]
    m = int(np.prod([x.shape[i] for i in reduce_axes]))
    if m == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, "
            f"got input size {x.shape}")

    x64 = x.astype(np.float64)
    if m == 0:
        mean = np.zeros(n_channels)
        var = np.zeros(n_channels)
    else:
        # Two passes: the mean, then the mean squared deviation from it. The
        # mean is taken of the data shifted by each channel's first value, so
        # a constant channel has exactly its value as mean and 0 as variance.
        first = x64[tuple(slice(None) if i == axis else 0 for i in range(x.ndim))]
        mean = first + (x64 - first.reshape(param_shape)).sum(axis=reduce_axes) / m
        centered = x64 - mean.reshape(param_shape)
        var = (centered * centered).sum(axis=reduce_axes) / m
    invstd = 1.0 / np.sqrt(var + eps)

    weight64 = _as_float64_param(weight, n_channels, 1.0)
    bias64 = _as_float64_param(bias, n_channels, 0.0)
    x_hat = (x64 - mean.reshape(param_shape)) * invstd.reshape(param_shape)
    y = x_hat * weight64.reshape(param_shape) + bias64.reshape(param_shape)

    if m > 0:
        if running_mean is not None:
            old = running_mean.astype(np.float64)
            running_mean[...] = (1.0 - momentum) * old + momentum * mean
        if running_var is not None:
            old = running_var.astype(np.float64)
            unbiased_var = var * (m / (m - 1))
            running_var[...] = (1.0 - momentum) * old + momentum * unbiased_var

    return _store(y, dtype, out), mean.astype(dtype), invstd.astype(dtype)


@_quiet_nonfinite
def batch_norm_eval(x: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike, weight: ArrayLike | None = None,
                    bias: ArrayLike | None = None, *, axis: int = 1, eps: float = 1e-5,
                    out: FloatArray | None = None) -> FloatArray:
    """Inference-mode batch normalization with given (running) statistics.

    Parameters
    ----------
    x : array of shape (N, C, ...), float32 or float64
        Input; the channel axis is `axis`.
    running_mean, running_var : array of shape (C,)
        The statistics to normalize with; not modified.
    weight, bias : array of shape (C,) or None
        Per-channel scale and shift; None means 1 and 0.
    axis : int, default 1
        The channel axis.
    eps : float, default 1e-5
        Added to `running_var` inside the square root.
    out : array of the shape of x or None
        Where to write y; may be x itself.

    Returns
    -------
    y : array of the shape and dtype of x
        ``weight * (x - running_mean) / sqrt(running_var + eps) + bias``
        (`out` when given).

    Examples
    --------
    >>> import numpy as np
    >>> from bnext import reference
    >>> x = np.array([[1.0, 5.0], [3.0, 7.0]])
    >>> reference.batch_norm_eval(x, np.array([2.0, 6.0]), np.array([1.0, 4.0]), eps=0.0)
    array([[-1. , -0.5],
           [ 1. ,  0.5]])
    """
    x = np.asarray(x)
    dtype = x.dtype
    axis, _, param_shape = _channel_view(x, axis)
    n_channels = x.shape[axis]

    mean = _as_float64_param(running_mean, n_channels, 0.0)
    var = _as_float64_param(running_var, n_channels, 1.0)
    invstd = 1.0 / np.sqrt(var + eps)
    weight64 = _as_float64_param(weight, n_channels, 1.0)
    bias64 = _as_float64_param(bias, n_channels, 0.0)

    x_hat = (x.astype(np.float64) - mean.reshape(param_shape)) * invstd.reshape(param_shape)
    y = x_hat * weight64.reshape(param_shape) + bias64.reshape(param_shape)
    return _store(y, dtype, out)


@_quiet_nonfinite
def batch_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: ArrayLike | None = None, *, axis: int = 1,
                        out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Training-mode gradients of batch normalization.

    Uses the mean and invstd saved by `batch_norm_train` on the same x.

    Parameters
    ----------
    dy : array of the shape of x
        Gradient of the loss with respect to y.
    x : array of shape (N, C, ...), float32 or float64
        The forward input.
    mean, invstd : array of shape (C,)
        The batch statistics returned by `batch_norm_train`.
    weight : array of shape (C,) or None
        Per-channel scale; None means 1.
    axis : int, default 1
        The channel axis.
    out : array of the shape of x or None
        Where to write dx; may be dy itself.

    Returns
    -------
    dx : array of the shape and dtype of x
        ``weight * invstd / m * (m * dy - dbias - x_hat * dweight)``
        (`out` when given).
    dweight : array of shape (C,), dtype of x
        ``sum(dy * x_hat)`` per channel (0 for an empty batch).
    dbias : array of shape (C,), dtype of x
        ``sum(dy)`` per channel (0 for an empty batch).

    Examples
    --------
    >>> import numpy as np
    >>> from bnext import reference
    >>> x = np.array([[1.0], [3.0]])
    >>> dy = np.array([[1.0], [0.0]])
    >>> dx, dweight, dbias = reference.batch_norm_backward(dy, x, np.array([2.0]), np.array([1.0]))
    >>> dx.ravel(), dweight, dbias
    (array([0., 0.]), array([-1.]), array([1.]))
    """
    x = np.asarray(x)
    dy = np.asarray(dy)
    dtype = x.dtype
    axis, reduce_axes, param_shape = _channel_view(x, axis)
    n_channels = x.shape[axis]
    m = int(np.prod([x.shape[i] for i in reduce_axes]))

    mean64 = _as_float64_param(mean, n_channels, 0.0).reshape(param_shape)
    invstd64 = _as_float64_param(invstd, n_channels, 1.0).reshape(param_shape)
    weight64 = _as_float64_param(weight, n_channels, 1.0).reshape(param_shape)

    dy64 = dy.astype(np.float64)
    x_hat = (x.astype(np.float64) - mean64) * invstd64
    dbias = dy64.sum(axis=reduce_axes)
    dweight = (dy64 * x_hat).sum(axis=reduce_axes)
    if m == 0:
        dx = np.zeros(x.shape)
    else:
        dx = (weight64 * invstd64 / m) * (
            m * dy64 - dbias.reshape(param_shape) - x_hat * dweight.reshape(param_shape))
    return _store(dx, dtype, out), dweight.astype(dtype), dbias.astype(dtype)


# ----------------------------------------------------------------- the family: layer, group, instance norm
#
# Each normalizes "rows": a (rows, m) float64 matrix whose rows are normalized by their own two-pass mean
# and biased variance. Layer norm's rows are samples, group norm's are (sample, group) pairs.

def _row_stats(rows: Array, eps: float) -> tuple[Array, Array, Array]:
    """Two-pass mean, biased variance and invstd of each row, shifted by the row's first value."""
    if rows.shape[1] == 0:
        zeros = np.zeros(rows.shape[0])
        return zeros, zeros, 1.0 / np.sqrt(zeros + eps)
    first = rows[:, :1]
    mean = first[:, 0] + (rows - first).sum(axis=1) / rows.shape[1]
    centered = rows - mean[:, None]
    var = (centered * centered).sum(axis=1) / rows.shape[1]
    return mean, var, 1.0 / np.sqrt(var + eps)


def _row_backward(dy_rows: Array, x_hat: Array, invstd: Array) -> Array:
    """dx of row normalization for g = dL/dx_hat: invstd * (g - mean(g) - x_hat * mean(g * x_hat))."""
    m = max(1, x_hat.shape[1])
    dx: Array = invstd[:, None] * (dy_rows - dy_rows.sum(axis=1, keepdims=True) / m
                                   - x_hat * (dy_rows * x_hat).sum(axis=1, keepdims=True) / m)
    return dx


def _shape_tuple(normalized_shape: Any) -> tuple[int, ...]:
    return (int(normalized_shape),) if np.ndim(normalized_shape) == 0 else tuple(int(s) for s in normalized_shape)


@_quiet_nonfinite
def layer_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = None,
               bias: ArrayLike | None = None, *, eps: float = 1e-5, out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Layer normalization over the trailing `normalized_shape` dims; returns (y, mean, invstd).

    mean and invstd have shape ``x.shape[:-len(normalized_shape)]``; weight and bias (optional) the
    normalized shape.
    """
    x = np.asarray(x)
    shape = _shape_tuple(normalized_shape)
    outer = x.shape[:x.ndim - len(shape)]
    rows = x.astype(np.float64).reshape(int(np.prod(outer)), int(np.prod(shape)))
    mean, _, invstd = _row_stats(rows, eps)
    y = (rows - mean[:, None]) * invstd[:, None]
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float64).reshape(1, -1)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64).reshape(1, -1)
    return _store(y.reshape(x.shape), x.dtype, out), mean.reshape(outer).astype(x.dtype), invstd.reshape(outer).astype(x.dtype)


@_quiet_nonfinite
def layer_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: ArrayLike | None = None, *, normalized_shape: int | Sequence[int],
                        out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of layer_norm: (dx, dweight, dbias), dweight/dbias of the normalized shape."""
    x = np.asarray(x)
    shape = _shape_tuple(normalized_shape)
    n_rows, length = int(np.prod(x.shape[:x.ndim - len(shape)])), int(np.prod(shape))
    rows = x.astype(np.float64).reshape(n_rows, length)
    dy_rows = np.asarray(dy, dtype=np.float64).reshape(n_rows, length)
    mean = np.asarray(mean, dtype=np.float64).reshape(n_rows)
    invstd = np.asarray(invstd, dtype=np.float64).reshape(n_rows)
    x_hat = (rows - mean[:, None]) * invstd[:, None]
    w = np.ones(length) if weight is None else np.asarray(weight, dtype=np.float64).reshape(length)
    dx = _row_backward(dy_rows * w, x_hat, invstd)
    dweight = (dy_rows * x_hat).sum(axis=0).reshape(shape)
    dbias = dy_rows.sum(axis=0).reshape(shape)
    return _store(dx.reshape(x.shape), x.dtype, out), dweight.astype(x.dtype), dbias.astype(x.dtype)


def _per_channel(value: ArrayLike | None, n_channels: int, default: float) -> Array:
    return np.broadcast_to(_as_float64_param(value, n_channels, default), (1, n_channels)).reshape(1, n_channels, 1)


@_quiet_nonfinite
def group_norm(x: ArrayLike, num_groups: int, weight: ArrayLike | None = None, bias: ArrayLike | None = None, *,
               eps: float = 1e-5, out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Group normalization of x (N, C, *): statistics per (sample, group); returns (y, mean, invstd) (N, G)."""
    x = np.asarray(x)
    n, n_channels = x.shape[:2]
    groups = x.astype(np.float64).reshape(n * num_groups, -1) if x.size else np.zeros((n * num_groups, 0))
    mean, _, invstd = _row_stats(groups, eps)
    x_hat = ((groups - mean[:, None]) * invstd[:, None]).reshape(n, n_channels, -1)
    y = x_hat * _per_channel(weight, n_channels, 1.0) + _per_channel(bias, n_channels, 0.0)
    return (_store(y.reshape(x.shape), x.dtype, out), mean.reshape(n, num_groups).astype(x.dtype),
            invstd.reshape(n, num_groups).astype(x.dtype))


@_quiet_nonfinite
def group_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: ArrayLike | None = None, *, num_groups: int, out: FloatArray | None = None,
                        _batch_stats: bool = True) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of group_norm: (dx, dweight, dbias), dweight/dbias of shape (C,)."""
    x = np.asarray(x)
    n, n_channels = x.shape[:2]
    x3 = x.astype(np.float64).reshape(n, n_channels, -1)
    dy3 = np.asarray(dy, dtype=np.float64).reshape(x3.shape)
    per_group = n_channels // num_groups
    mean_c = np.repeat(np.asarray(mean, dtype=np.float64).reshape(n, num_groups), per_group, axis=1)[:, :, None]
    invstd_g = np.asarray(invstd, dtype=np.float64).reshape(n * num_groups)
    invstd_c = np.repeat(invstd_g.reshape(n, num_groups), per_group, axis=1)[:, :, None]
    x_hat = (x3 - mean_c) * invstd_c
    g = dy3 * _per_channel(weight, n_channels, 1.0)
    if _batch_stats:
        dx = _row_backward(g.reshape(n * num_groups, -1), x_hat.reshape(n * num_groups, -1), invstd_g)
    else:
        dx = g * invstd_c
    dweight = (dy3 * x_hat).sum(axis=(0, 2))
    dbias = dy3.sum(axis=(0, 2))
    return _store(dx.reshape(x.shape), x.dtype, out), dweight.astype(x.dtype), dbias.astype(x.dtype)


@_quiet_nonfinite
def instance_norm(x: ArrayLike, weight: ArrayLike | None = None, bias: ArrayLike | None = None, *, eps: float = 1e-5,
                  running_mean: FloatArray | None = None, running_var: FloatArray | None = None,
                  momentum: float = 0.1, use_input_stats: bool = True,
                  out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Instance normalization of x (N, C, *): group norm with G = C; returns (y, mean, invstd) (N, C).

    With use_input_stats the running buffers (when given) move towards the batch averages of the instance
    means and unbiased instance variances; otherwise they normalize x.
    """
    x = np.asarray(x)
    n, n_channels = x.shape[:2]
    if not use_input_stats:
        mean = np.broadcast_to(np.asarray(running_mean, dtype=np.float64), (n, n_channels))
        invstd = np.broadcast_to(1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps), (n, n_channels))
        x_hat = (x.astype(np.float64).reshape(n, n_channels, -1) - mean[:, :, None]) * invstd[:, :, None]
        y = x_hat * _per_channel(weight, n_channels, 1.0) + _per_channel(bias, n_channels, 0.0)
        return _store(y.reshape(x.shape), x.dtype, out), mean.astype(x.dtype), invstd.astype(x.dtype)
    spatial = int(np.prod(x.shape[2:]))
    rows = x.astype(np.float64).reshape(n * n_channels, spatial)
    mean, var, _ = _row_stats(rows, eps)
    if x.size and spatial > 1:
        for buffer, batch_value in ((running_mean, mean.reshape(n, n_channels).mean(axis=0)),
                                    (running_var, (var * spatial / (spatial - 1)).reshape(n, n_channels).mean(axis=0))):
            if buffer is not None:
                buffer[...] = (1.0 - momentum) * buffer.astype(np.float64) + momentum * batch_value
    return group_norm(x, n_channels, weight, bias, eps=eps, out=out)


def instance_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                           weight: ArrayLike | None = None, *, use_input_stats: bool = True,
                           out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of instance_norm: (dx, dweight, dbias), dweight/dbias of shape (C,)."""
    return group_norm_backward(dy, x, mean, invstd, weight, num_groups=np.shape(x)[1], out=out,
                               _batch_stats=use_input_stats)


# ----------------------------------------------------------------- feature scaling

def _samples(x: ArrayLike, axis: int) -> tuple[Array, Callable[[Array], Array]]:
    """x as a float64 (samples, features) matrix with the sample axis first, and a function undoing that."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    def restore(result: Array) -> Array:
        return np.moveaxis(result.reshape(moved.shape), 0, axis)
    return moved.reshape(moved.shape[0], -1), restore


@_quiet_nonfinite
def standardize(x: ArrayLike, axis: int = 0, *, ddof: int = 0, eps: float = 0.0,
                out: FloatArray | None = None) -> FloatArray:
    """(x - mean) / sqrt(var + eps) per feature along the sample axis; zero-spread features become 0."""
    x = np.asarray(x)
    samples, restore = _samples(x, axis)
    n = samples.shape[0]
    mean = samples.mean(axis=0) if n else np.zeros(samples.shape[1])
    var = ((samples - mean) ** 2).sum(axis=0) / max(1, n - ddof)
    std = np.sqrt(var + eps)
    y = (samples - mean) / np.where(std == 0, 1.0, std)
    return _store(restore(y), x.dtype, out)


@_quiet_nonfinite
def minmax_scale(x: ArrayLike, axis: int = 0, *, feature_range: tuple[float, float] = (0, 1),
                 out: FloatArray | None = None) -> FloatArray:
    """(x - min) * (high - low) / (max - min) + low per feature, NaN ignored; constant features map to low."""
    x = np.asarray(x)
    low, high = feature_range
    samples, restore = _samples(x, axis)
    if samples.size == 0:
        return _store(restore(samples), x.dtype, out)
    minimum, maximum = np.nanmin(samples, axis=0), np.nanmax(samples, axis=0)
    data_range = maximum - minimum
    y = (samples - minimum) * ((high - low) / np.where(data_range == 0, 1.0, data_range)) + low
    return _store(restore(y), x.dtype, out)
