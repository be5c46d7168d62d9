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

import numpy as np
from numpy.lib.array_utils import normalize_axis_index

__all__ = ["batch_norm_train", "batch_norm_eval", "batch_norm_backward"]


def _channel_view(x, axis):
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


def _as_float64_param(value, n_channels, default):
    """(C,) float64 copy of a per-channel parameter, or the default filled in."""
    if value is None:
        return np.full(n_channels, default, dtype=np.float64)
    return np.asarray(value, dtype=np.float64).reshape(n_channels)


def _quiet_nonfinite(function):
    """NaN and Inf are data, not errors: let them propagate without warnings."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with np.errstate(invalid="ignore", over="ignore"):
            return function(*args, **kwargs)
    return wrapper


def _store(result, dtype, out):
    """Cast a float64 result to `dtype`, writing it into `out` when given."""
    if out is None:
        return result.astype(dtype)
    out[...] = result
    return out


@_quiet_nonfinite
def batch_norm_train(x, weight=None, bias=None, *, axis=1, eps=1e-5,
                     running_mean=None, running_var=None, momentum=0.1,
                     out=None):
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
def batch_norm_eval(x, running_mean, running_var, weight=None, bias=None, *,
                    axis=1, eps=1e-5, out=None):
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
def batch_norm_backward(dy, x, mean, invstd, weight=None, *, axis=1, out=None):
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
