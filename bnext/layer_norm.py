"""Layer normalization: statistics over the trailing ``normalized_shape`` values of each sample.

The forward is one fused row kernel (src/_family_kernels.pxi: layer_norm_forward): each sample's D values
are a contiguous row whose statistics (batch norm's block moments and Chan merge, in double) and elementwise
affine over normalized_shape happen while the row is in L1. Rows of at most 16 values take batch norm's
statistics kernel on the (1, N, D) view and a separate affine pass instead. The backward is a fused row kernel.
"""

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from . import _validation as check
from ._dispatch import family_kernels, kernels, small_calls
from ._layout import RowsOutput
from ._threads import get_num_threads
from ._typing import Array, ArrayLike, FloatArray

_LAYOUT_NOTE = """
    The kernels read C-ordered rows: other strides (Fortran order, transposed or strided views) are first
    copied to C order. C-contiguous data is never copied."""



def _geometry(x: Array, normalized_shape: Any) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """(normalized_shape, outer shape, N, D) after checking that x ends with normalized_shape."""
    shape = check.shape_tuple("normalized_shape", normalized_shape)
    if len(shape) == 0:
        raise ValueError("normalized_shape must have at least one dimension, got ()")
    k = len(shape)
    if x.ndim < k or x.shape[x.ndim - k:] != shape:
        raise ValueError(f"normalized_shape {shape} must be the trailing dimensions of x, got x of shape {x.shape}")
    outer = x.shape[:x.ndim - k]
    return shape, outer, math.prod(outer), math.prod(shape)


def _stat_shapes(outer: tuple[int, ...], shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[tuple[int, ...]]]:
    # Accepted shapes of saved statistics: ours (outer) and PyTorch's native_layer_norm (outer + 1s).
    return outer, (outer + (1,) * len(shape),)


def _forward(x: Any, normalized_shape: Any, weight: Any, bias: Any, eps: Any, out: Any) -> tuple[Array, Array, Array]:
    """(y, mean, invstd) with float64 statistics of shape x.shape[:-len(normalized_shape)]."""
    x = check.float_array("x", x)
    shape, outer, n_rows, length = _geometry(x, normalized_shape)
    weight = check.param_array("weight", weight, shape)
    bias = check.param_array("bias", bias, shape)
    eps = check.positive_finite("eps", eps)
    out = check.out_array(out, x)

    target = RowsOutput(out, x, [x])
    mean = np.zeros(n_rows)
    var = np.zeros(n_rows)
    if x.size == 0:
        return target.finish(), mean.reshape(outer), (1.0 / np.sqrt(var + eps)).reshape(outer)
    x_rows = np.ascontiguousarray(x).reshape(n_rows, length)
    n_threads = get_num_threads()
    weight = np.ones(length) if weight is None else weight.ravel()
    bias = np.zeros(length) if bias is None else bias.ravel()
    y_rows = target.target.reshape(n_rows, length)
    if length <= family_kernels.SHORT_LAYER_ROW:
        kernels.batch_stats(x_rows.reshape(1, n_rows, length), mean, var, n_threads)
        invstd = 1.0 / np.sqrt(var + eps)
        family_kernels.column_affine(x_rows, mean, invstd, weight, bias, y_rows, n_threads)
    else:
        invstd = np.zeros(n_rows)
        family_kernels.layer_norm_forward(x_rows, weight, bias, eps, mean, var, invstd, y_rows, n_threads)
    return target.finish(), mean.reshape(outer), invstd.reshape(outer)


def layer_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = None,
               bias: ArrayLike | None = None, *, eps: float = 1e-5, out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Normalize each sample over its trailing `normalized_shape` values (torch.nn.functional.layer_norm).

    Parameters
    ----------
    x : array of shape (*, *normalized_shape), float32 or float64
    normalized_shape : int or tuple of ints
        The trailing dimensions the statistics are taken over.
    weight, bias : arrays of shape normalized_shape, optional
        Elementwise scale and shift; None means 1 and 0.
    eps : float, default 1e-5
        Added to the (biased) variance inside the square root.
    out : array of x's shape and dtype, optional
        Where y is written; may be x itself.

    Returns
    -------
    y : array of x's shape and dtype
    mean, invstd : arrays of shape x.shape[:-len(normalized_shape)] in x's dtype
        As saved for `layer_norm_backward`.
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.array([[1.0, 2.0, 3.0, 4.0]])
    >>> y, mean, invstd = bnext.layer_norm(x, 4, np.full(4, 2.0), np.ones(4))
    >>> np.round(y, 3)
    array([[-1.683,  0.106,  1.894,  3.683]])
    """
    small = small_calls.layer_norm(x, normalized_shape, weight, bias, eps, out)
    if small is not None:
        return small
    y, mean, invstd = _forward(x, normalized_shape, weight, bias, eps, out)
    return y, mean.astype(y.dtype), invstd.astype(y.dtype)


def _backward(dy: Any, x: Any, mean: Any, invstd: Any, weight: Any, normalized_shape: Any,
              out: Any) -> tuple[Array, Array, Array]:
    x = check.float_array("x", x)
    dy = check.float_array("dy", dy)
    check.same_shape("dy", dy, x)
    shape, outer, n_rows, length = _geometry(x, normalized_shape)
    stat_shape, also = _stat_shapes(outer, shape)
    mean = check.param_array("mean", mean, stat_shape, required=True, also=also)
    invstd = check.param_array("invstd", invstd, stat_shape, required=True, also=also)
    weight = check.param_array("weight", weight, shape)
    out = check.out_array(out, x)
    dy = dy.astype(x.dtype, copy=False)

    target = RowsOutput(out, x, [x, dy])
    dweight = np.zeros(length)
    dbias = np.zeros(length)
    if x.size == 0:
        target.target[...] = 0
        return target.finish(), dweight.reshape(shape), dbias.reshape(shape)
    x_rows = np.ascontiguousarray(x).reshape(n_rows, length)
    dy_rows = np.ascontiguousarray(dy).reshape(n_rows, length)
    weight = np.ones(length) if weight is None else weight.ravel()
    family_kernels.layer_norm_gradient(dy_rows, x_rows, mean.ravel(), invstd.ravel(), weight,
                                       target.target.reshape(n_rows, length), dweight, dbias, get_num_threads())
    return target.finish(), dweight.reshape(shape), dbias.reshape(shape)


def layer_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: ArrayLike | None = None, *, normalized_shape: int | Sequence[int],
                        out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of `layer_norm` from its saved mean and invstd.

    Parameters
    ----------
    dy : array of x's shape
        Gradient of the loss with respect to y (cast to x's dtype if needed).
    x : array of shape (*, *normalized_shape), float32 or float64
        The forward input.
    mean, invstd : arrays of shape x.shape[:-len(normalized_shape)]
        As returned by `layer_norm` (PyTorch's keepdim shape with trailing 1s is accepted too).
    weight : array of shape normalized_shape, optional
    normalized_shape : int or tuple of ints
    out : array of x's shape and dtype, optional
        Where dx is written; may be dy or x itself.

    Returns
    -------
    dx : array of x's shape and dtype
        ``invstd * (g - mean(g) - x_hat * mean(g * x_hat))`` per sample, ``g = weight * dy``.
    dweight, dbias : arrays of shape normalized_shape in x's dtype
        ``sum(dy * x_hat)`` and ``sum(dy)`` over the samples, accumulated in double.
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.array([[1.0, 2.0, 3.0, 4.0]])
    >>> y, mean, invstd = bnext.layer_norm(x, 4)
    >>> dx, dweight, dbias = bnext.layer_norm_backward(np.ones_like(x), x, mean, invstd, normalized_shape=4)
    >>> dbias, bool(np.abs(dx).max() < 1e-12)
    (array([1., 1., 1., 1.]), True)
    """
    small = small_calls.layer_norm_backward(dy, x, mean, invstd, weight, normalized_shape, out)
    if small is not None:
        return small
    dx, dweight, dbias = _backward(dy, x, mean, invstd, weight, normalized_shape, out)
    return dx, dweight.astype(dx.dtype), dbias.astype(dx.dtype)


for _function in (layer_norm, layer_norm_backward):
    _function.__doc__ = cast(str, _function.__doc__).replace("{layout}", _LAYOUT_NOTE)
