"""Batch normalization: training forward, inference forward and training backward.

Every function validates all of its arguments first, then hands (outer, C, inner) views to the Cython
kernels (the SIMD build that ``bnext._dispatch`` picked for this CPU). Statistics are accumulated in double;
the returned mean/invstd are in x's dtype.
"""

import math
from typing import Any, cast

import numpy as np

from . import _validation as check
from ._dispatch import kernels, small_calls
from ._layout import Output, readable_view, stores_channels_last
from ._threads import get_num_threads
from ._typing import Array, ArrayLike, FloatArray

_LAYOUT_NOTE = """
    Any strides are accepted (views, negative or zero strides, Fortran order, read-only arrays). Arrays
    whose axes before and after the channel axis cannot each be merged into one strided axis (for example
    some transposed views of 4-D data) are first copied to C order; contiguous NCHW and channels-last
    data are never copied."""


def _values_per_channel(shape: tuple[int, ...], axis: int) -> int:
    return math.prod(shape[:axis] + shape[axis + 1:])


def _check_training_batch(x: Array, axis: int) -> int:
    m = _values_per_channel(x.shape, axis)
    if m == 1 and x.shape[axis] > 0:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.shape}"
        )
    return m


def update_running(buffer: Array | None, batch_value: Array, factor: float, momentum: float) -> None:
    """PyTorch's running update of a statistic, in double: (1 - momentum) * old + momentum * value * factor."""
    if buffer is not None:
        kernels.update_running(buffer, batch_value, factor, momentum)


def _train(x: Any, weight: Any, bias: Any, axis: Any, eps: Any, running_mean: Any, running_var: Any,
           momentum: Any, out: Any) -> tuple[Array, Array, Array]:
    """The training forward with float64 statistics: (y, mean, invstd)."""
    x = check.batch_input("x", x)
    axis = check.channel_axis(axis, x.ndim)
    n_channels = x.shape[axis]
    weight = check.channel_vector("weight", weight, n_channels)
    bias = check.channel_vector("bias", bias, n_channels)
    eps = check.positive_finite("eps", eps)
    momentum = check.finite("momentum", momentum)
    running_mean = check.running_buffer("running_mean", running_mean, n_channels)
    running_var = check.running_buffer("running_var", running_var, n_channels)
    out = check.out_array(out, x)
    m = _check_training_batch(x, axis)
    if stores_channels_last(x, axis):
        y, mean, invstd = _train_checked(np.moveaxis(x, axis, -1), weight, bias, x.ndim - 1, eps, running_mean,
                                         running_var, momentum, _moved(out, axis), m)
        return (np.moveaxis(y, -1, axis) if out is None else out), mean, invstd
    return _train_checked(x, weight, bias, axis, eps, running_mean, running_var, momentum, out, m)


def _moved(out: Array | None, axis: int) -> Array | None:
    return None if out is None else np.moveaxis(out, axis, -1)


def _train_checked(x: Array, weight: Array | None, bias: Array | None, axis: int, eps: float,
                   running_mean: Array | None, running_var: Array | None, momentum: float, out: Array | None,
                   m: int) -> tuple[Array, Array, Array]:
    n_channels = x.shape[axis]
    target = Output(out, x, axis, [x])
    mean = np.zeros(n_channels)
    var = np.zeros(n_channels)
    if m == 0 or n_channels == 0:
        # Nothing to normalize: y is empty and the running statistics have seen no batch.
        return target.finish(), mean, 1.0 / np.sqrt(var + eps)
    invstd = np.empty(n_channels)
    kernels.train_forward(readable_view(x, axis), weight, bias, eps, mean, var, invstd, target.view,
                          get_num_threads())
    update_running(running_mean, mean, 1.0, momentum)
    update_running(running_var, var, m / (m - 1), momentum)
    return target.finish(), mean, invstd


def batch_norm_train(x: ArrayLike, weight: ArrayLike | None = None, bias: ArrayLike | None = None, *,
                     axis: int = 1, eps: float = 1e-5, running_mean: FloatArray | None = None,
                     running_var: FloatArray | None = None, momentum: float = 0.1,
                     out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Normalize x with its own batch statistics (training mode).

    Parameters
    ----------
    x : array of shape (N, C, ...) (or channels at `axis`), float32 or float64
    weight, bias : arrays of shape (C,), optional
        Scale (gamma) and shift (beta); None means 1 and 0.
    axis : int, default 1
        The channel axis: 1 for NCHW, -1 for channels-last.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    running_mean, running_var : float arrays of shape (C,), optional
        Updated in place: ``new = (1 - momentum) * old + momentum * batch``, with the unbiased batch
        variance for running_var (PyTorch's convention).
    momentum : float, default 0.1
    out : array of x's shape and dtype, optional
        Where y is written; may be x itself (the statistics are complete before anything is written).

    Returns
    -------
    y : array of x's shape and dtype
    mean, invstd : arrays of shape (C,) in x's dtype
        The batch mean and 1 / sqrt(biased variance + eps), as saved for `batch_norm_backward`.
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.array([[1.0], [2.0], [3.0], [4.0]])
    >>> y, mean, invstd = bnext.batch_norm_train(x, np.array([2.0]), np.array([1.0]))
    >>> np.round(y.ravel(), 3)
    array([-1.683,  0.106,  1.894,  3.683])
    """
    small = small_calls.train(x, weight, bias, axis, eps, running_mean, running_var, momentum, out)
    if small is not None:
        return small
    y, mean, invstd = _train(x, weight, bias, axis, eps, running_mean, running_var, momentum, out)
    return y, mean.astype(y.dtype), invstd.astype(y.dtype)


def batch_norm_eval(x: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike, weight: ArrayLike | None = None,
                    bias: ArrayLike | None = None, *, axis: int = 1, eps: float = 1e-5,
                    out: FloatArray | None = None) -> FloatArray:
    """Normalize x with given (running) statistics (inference mode).

    Parameters
    ----------
    x : array of shape (N, C, ...) (or channels at `axis`), float32 or float64
    running_mean, running_var : arrays of shape (C,)
    weight, bias : arrays of shape (C,), optional
    axis : int, default 1
    eps : float, default 1e-5
    out : array of x's shape and dtype, optional; may be x itself.

    Returns
    -------
    y : array of x's shape and dtype
        ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``, with the mean subtracted first.
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> bnext.batch_norm_eval(x, np.array([2.0, 20.0]), np.array([1.0, 100.0]), eps=1e-12)
    array([[-1., -1.],
           [ 1.,  1.]])
    """
    small = small_calls.eval(x, running_mean, running_var, weight, bias, axis, eps, out)
    if small is not None:
        return small
    x = check.batch_input("x", x)
    axis = check.channel_axis(axis, x.ndim)
    n_channels = x.shape[axis]
    running_mean = check.channel_vector("running_mean", running_mean, n_channels, required=True)
    running_var = check.channel_vector("running_var", running_var, n_channels, required=True)
    weight = check.channel_vector("weight", weight, n_channels)
    bias = check.channel_vector("bias", bias, n_channels)
    eps = check.positive_finite("eps", eps)
    out = check.out_array(out, x)
    if stores_channels_last(x, axis):
        y = _eval_checked(np.moveaxis(x, axis, -1), running_mean, running_var, weight, bias, x.ndim - 1, eps,
                          _moved(out, axis))
        return np.moveaxis(y, -1, axis) if out is None else out
    return _eval_checked(x, running_mean, running_var, weight, bias, axis, eps, out)


def _eval_checked(x: Array, running_mean: Array, running_var: Array, weight: Array | None, bias: Array | None,
                  axis: int, eps: float, out: Array | None) -> Array:
    target = Output(out, x, axis, [x])
    if x.size == 0:
        return target.finish()
    kernels.eval_forward(readable_view(x, axis), running_mean, running_var, weight, bias, eps, target.view,
                         get_num_threads())
    return target.finish()


def _backward(dy: Any, x: Any, mean: Any, invstd: Any, weight: Any, axis: Any, out: Any,
              batch_stats: bool = True) -> tuple[Array, Array, Array]:
    """Gradients with float64 dweight/dbias: (dx, dweight, dbias).

    With batch_stats (training mode) mean and invstd depend on x; otherwise (eval mode) they are
    constants and dx = dy * weight * invstd.
    """
    x = check.batch_input("x", x)
    dy = check.float_array("dy", dy)
    check.same_shape("dy", dy, x)
    axis = check.channel_axis(axis, x.ndim)
    n_channels = x.shape[axis]
    mean = check.channel_vector("mean", mean, n_channels, required=True)
    invstd = check.channel_vector("invstd", invstd, n_channels, required=True)
    weight = check.channel_vector("weight", weight, n_channels)
    out = check.out_array(out, x)
    dy = dy.astype(x.dtype, copy=False)
    if stores_channels_last(x, axis):
        dx, dweight, dbias = _backward_checked(np.moveaxis(dy, axis, -1), np.moveaxis(x, axis, -1), mean, invstd,
                                               weight, x.ndim - 1, _moved(out, axis), batch_stats)
        return (np.moveaxis(dx, -1, axis) if out is None else out), dweight, dbias
    return _backward_checked(dy, x, mean, invstd, weight, axis, out, batch_stats)


def _backward_checked(dy: Array, x: Array, mean: Array, invstd: Array, weight: Array | None, axis: int,
                      out: Array | None, batch_stats: bool) -> tuple[Array, Array, Array]:
    n_channels = x.shape[axis]
    target = Output(out, x, axis, [x, dy])
    dweight = np.zeros(n_channels)
    dbias = np.zeros(n_channels)
    if x.size == 0:
        return target.finish(), dweight, dbias
    kernels.backward(readable_view(dy, axis), readable_view(x, axis), mean, invstd, weight, batch_stats, dweight,
                     dbias, target.view, get_num_threads())
    return target.finish(), dweight, dbias


def batch_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: ArrayLike | None = None, *, axis: int = 1,
                        out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of `batch_norm_train` from its saved mean and invstd.

    Parameters
    ----------
    dy : array of x's shape
        Gradient of the loss with respect to y (cast to x's dtype if needed).
    x : array of shape (N, C, ...) (or channels at `axis`), float32 or float64
        The forward input.
    mean, invstd : arrays of shape (C,)
        As returned by `batch_norm_train`. float64 values give the most exact gradients for float32 data
        whose mean is large compared to its spread.
    weight : array of shape (C,), optional
    axis : int, default 1
    out : array of x's shape and dtype, optional
        Where dx is written; may be dy or x itself.

    Returns
    -------
    dx : array of x's shape and dtype
        ``weight * invstd / m * (m * dy - dbias - x_hat * dweight)`` with m values per channel.
    dweight, dbias : arrays of shape (C,) in x's dtype
        ``sum(dy * x_hat)`` and ``sum(dy)`` per channel, accumulated in double in one fused pass.
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.array([[1.0], [2.0], [3.0], [4.0]])
    >>> y, mean, invstd = bnext.batch_norm_train(x)
    >>> dx, dweight, dbias = bnext.batch_norm_backward(np.ones_like(x), x, mean, invstd)
    >>> dbias, np.abs(dx).max() < 1e-12
    (array([4.]), np.True_)
    """
    small = small_calls.backward(dy, x, mean, invstd, weight, axis, out)
    if small is not None:
        return small
    dx, dweight, dbias = _backward(dy, x, mean, invstd, weight, axis, out)
    return dx, dweight.astype(dx.dtype), dbias.astype(dx.dtype)


for _function in (batch_norm_train, batch_norm_eval, batch_norm_backward):
    _function.__doc__ = cast(str, _function.__doc__).replace("{layout}", _LAYOUT_NOTE)
