"""Group normalization: statistics per (sample, group of channels), per-channel affine.

C-ordered x of shape (N, C, *) is seen as rows of (n, g) pairs, C / G * prod(*) contiguous values each. The
training forward is one fused pass per row (src/_family_kernels.pxi: group_norm_forward). With given
statistics (instance norm's running ones), y is batch norm's normalize on (1, N * C, prod(*)) with per-(n, c)
mean, scale = invstd * weight and shift = bias; the backward sums are gradient_sums on that view, and dx
needs dy scaled by the channel's weight inside the bracket (row_input_gradient). Instance norm is the case
G = C.
"""

import math
from typing import Any, cast

import numpy as np

from . import _validation as check
from ._dispatch import family_kernels, kernels, small_calls
from ._layout import RowsOutput
from ._threads import get_num_threads
from ._typing import Array, ArrayLike, FloatArray

_LAYOUT_NOTE = """
    The kernels read C-ordered (N, C, *) data: other strides (channels-last, Fortran order, transposed
    or strided views) are first copied to C order. C-contiguous data is never copied."""


def _groups(x: Array, num_groups: Any) -> int:
    n_channels = x.shape[1]
    num_groups = check.integer("num_groups", num_groups)
    groups: int = num_groups
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    if n_channels % num_groups:
        raise ValueError(f"num_channels {n_channels} of x must be divisible by num_groups {num_groups}")
    return groups


def _forward(x: Any, num_groups: Any, weight: Any, bias: Any, eps: Any, out: Any, *, mean: Any = None,
             invstd: Any = None) -> tuple[Array, Array, Array | None, Array]:
    """(y, mean, var, invstd) with float64 statistics of shape (N, G) for checked x (N, C, *).

    Given mean and invstd of shape (N, G), they are used instead of batch statistics (var is then None).
    """
    n, n_channels = x.shape[:2]
    spatial = math.prod(x.shape[2:])
    per_group = n_channels // num_groups
    target = RowsOutput(out, x, [x])
    var = None
    if mean is None:
        mean = np.zeros((n, num_groups))
        var = np.zeros((n, num_groups))
        invstd = 1.0 / np.sqrt(var + eps)
    if x.size == 0:
        return target.finish(), mean, var, invstd
    x_c = np.ascontiguousarray(x)
    n_threads = get_num_threads()
    weight = np.ones(n_channels) if weight is None else weight
    bias = np.zeros(n_channels) if bias is None else bias
    if var is not None:
        # Batch statistics: one fused pass per (sample, group) row.
        rows = (n * num_groups, per_group * spatial)
        family_kernels.group_norm_forward(x_c.reshape(rows), spatial, weight, bias, float(eps),
                                          mean.reshape(-1), var.reshape(-1), invstd.reshape(-1),
                                          target.target.reshape(rows), n_threads)
        return target.finish(), mean, var, invstd
    row_mean = np.repeat(mean, per_group, axis=1).reshape(-1)
    scale = (np.repeat(invstd, per_group, axis=1) * weight).reshape(-1)
    shift = np.broadcast_to(bias, (n, n_channels)).reshape(-1)
    kernels.normalize(x_c.reshape(1, n * n_channels, spatial), row_mean, scale, shift,
                      target.target.reshape(1, n * n_channels, spatial), n_threads)
    return target.finish(), mean, var, invstd


def _backward(dy: Any, x: Any, mean: Any, invstd: Any, weight: Any, num_groups: Any, out: Any,
              batch_stats: bool = True) -> tuple[Array, Array, Array]:
    """(dx, dweight, dbias) for checked x (N, C, *), dy and float64 (N, G) mean and invstd.

    With batch_stats the statistics depend on x (training); otherwise they are constants and
    dx = dy * weight * invstd.
    """
    n, n_channels = x.shape[:2]
    spatial = math.prod(x.shape[2:])
    per_group = n_channels // num_groups
    count = per_group * spatial
    target = RowsOutput(out, x, [x, dy])
    if x.size == 0:
        return target.finish(), np.zeros(n_channels), np.zeros(n_channels)
    x_rows = np.ascontiguousarray(x).reshape(n * n_channels, spatial)
    dy_rows = np.ascontiguousarray(dy).reshape(n * n_channels, spatial)
    n_threads = get_num_threads()
    row_mean = np.repeat(mean, per_group, axis=1).reshape(-1)
    row_invstd = np.repeat(invstd, per_group, axis=1).reshape(-1)
    sum_dy = np.zeros(n * n_channels)
    sum_dy_xmu = np.zeros(n * n_channels)
    kernels.gradient_sums(dy_rows.reshape(1, n * n_channels, spatial), x_rows.reshape(1, n * n_channels, spatial),
                          row_mean, sum_dy, sum_dy_xmu, n_threads)
    dweight = np.zeros(n_channels)
    dbias = np.zeros(n_channels)
    dy_scale, coef_1, coef_x_hat = (np.zeros(n * n_channels) for _ in range(3))
    family_kernels.group_norm_coefficients(sum_dy, sum_dy_xmu, invstd.reshape(-1), weight, num_groups, float(count),
                                           batch_stats, dweight, dbias, dy_scale, coef_1, coef_x_hat)
    family_kernels.row_input_gradient(dy_rows, x_rows, row_mean, row_invstd, row_invstd, dy_scale, coef_1, coef_x_hat,
                                      target.target.reshape(n * n_channels, spatial), n_threads)
    return target.finish(), dweight, dbias


def group_norm(x: ArrayLike, num_groups: int, weight: ArrayLike | None = None, bias: ArrayLike | None = None, *,
               eps: float = 1e-5, out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Normalize each group of channels of each sample (torch.nn.functional.group_norm).

    Parameters
    ----------
    x : array of shape (N, C, *), float32 or float64
    num_groups : int
        G; C must be divisible by it. G = 1 is layer norm over (C, *) with a per-channel affine; G = C is
        instance norm.
    weight, bias : arrays of shape (C,), optional
        Per-channel scale and shift; None means 1 and 0.
    eps : float, default 1e-5
    out : array of x's shape and dtype, optional
        Where y is written; may be x itself.

    Returns
    -------
    y : array of x's shape and dtype
    mean, invstd : arrays of shape (N, G) in x's dtype
        As saved for `group_norm_backward`.
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.array([[[1.0], [2.0], [3.0], [4.0]]])  # N = 1, C = 4
    >>> y, mean, invstd = bnext.group_norm(x, 2)
    >>> np.round(y.ravel(), 3), mean
    (array([-1.   ,  1.   , -1.   ,  1.   ]), array([[1.5, 3.5]]))
    """
    small = small_calls.group_norm(x, num_groups, weight, bias, eps, out)
    if small is not None:
        return small
    x = check.batch_input("x", x)
    num_groups = _groups(x, num_groups)
    weight = check.channel_vector("weight", weight, x.shape[1])
    bias = check.channel_vector("bias", bias, x.shape[1])
    eps = check.positive_finite("eps", eps)
    out = check.out_array(out, x)
    y, mean, _, invstd = _forward(x, num_groups, weight, bias, eps, out)
    return y, mean.astype(y.dtype), invstd.astype(y.dtype)


def group_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: ArrayLike | None = None, *, num_groups: int,
                        out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of `group_norm` from its saved mean and invstd.

    Parameters
    ----------
    dy : array of x's shape
        Gradient of the loss with respect to y (cast to x's dtype if needed).
    x : array of shape (N, C, *), float32 or float64
    mean, invstd : arrays of shape (N, G)
        As returned by `group_norm`.
    weight : array of shape (C,), optional
    num_groups : int
    out : array of x's shape and dtype, optional
        Where dx is written; may be dy or x itself.

    Returns
    -------
    dx : array of x's shape and dtype
    dweight, dbias : arrays of shape (C,) in x's dtype
        ``sum(dy * x_hat)`` and ``sum(dy)`` per channel, accumulated in double.
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.array([[[1.0], [2.0], [3.0], [4.0]]])
    >>> y, mean, invstd = bnext.group_norm(x, 2)
    >>> dx, dweight, dbias = bnext.group_norm_backward(np.ones_like(x), x, mean, invstd, num_groups=2)
    >>> dbias, bool(np.abs(dx).max() < 1e-12)
    (array([1., 1., 1., 1.]), True)
    """
    small = small_calls.group_norm_backward(dy, x, mean, invstd, weight, num_groups, True, out)
    if small is not None:
        return small
    x, dy, mean, invstd, weight, num_groups, out = _check_backward(dy, x, mean, invstd, weight, num_groups, out)
    dx, dweight, dbias = _backward(dy, x, mean, invstd, weight, num_groups, out)
    return dx, dweight.astype(dx.dtype), dbias.astype(dx.dtype)


def _check_backward(dy: Any, x: Any, mean: Any, invstd: Any, weight: Any, num_groups: Any,
                    out: Any) -> tuple[Array, Array, Array, Array, Array | None, int, Array | None]:
    x = check.batch_input("x", x)
    dy = check.float_array("dy", dy)
    check.same_shape("dy", dy, x)
    num_groups = _groups(x, num_groups)
    stat_shape = (x.shape[0], num_groups)
    mean = check.param_array("mean", mean, stat_shape, required=True)
    invstd = check.param_array("invstd", invstd, stat_shape, required=True)
    weight = check.channel_vector("weight", weight, x.shape[1])
    out = check.out_array(out, x)
    return x, dy.astype(x.dtype, copy=False), mean, invstd, weight, num_groups, out


for _function in (group_norm, group_norm_backward):
    _function.__doc__ = cast(str, _function.__doc__).replace("{layout}", _LAYOUT_NOTE)
