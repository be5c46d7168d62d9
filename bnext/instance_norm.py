"""Instance normalization: statistics per (sample, channel); group norm with one channel per group."""

import math
from typing import cast

import numpy as np

from . import _validation as check
from ._dispatch import kernels, small_calls
from .group_norm import _LAYOUT_NOTE, _backward, _check_backward, _forward
from ._typing import ArrayLike, FloatArray


def instance_norm(x: ArrayLike, weight: ArrayLike | None = None, bias: ArrayLike | None = None, *, eps: float = 1e-5,
                  running_mean: FloatArray | None = None, running_var: FloatArray | None = None,
                  momentum: float = 0.1, use_input_stats: bool = True,
                  out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Normalize each channel of each sample over its spatial values (torch.nn.functional.instance_norm).

    Parameters
    ----------
    x : array of shape (N, C, *), float32 or float64
    weight, bias : arrays of shape (C,), optional
        Per-channel scale and shift; None means 1 and 0.
    eps : float, default 1e-5
    running_mean, running_var : float arrays of shape (C,), optional
        With use_input_stats, updated in place with the batch average of the instance statistics:
        ``new = (1 - momentum) * old + momentum * mean over N`` (unbiased instance variances), as PyTorch
        does. Without use_input_stats they are required and normalize x.
    momentum : float, default 0.1
    use_input_stats : bool, default True
        Normalize with each instance's own statistics (True) or with the running ones (False).
    out : array of x's shape and dtype, optional
        Where y is written; may be x itself.

    Returns
    -------
    y : array of x's shape and dtype
    mean, invstd : arrays of shape (N, C) in x's dtype
        The statistics used (the running ones repeated over N without use_input_stats), as saved for
        `instance_norm_backward`.

    Raises
    ------
    ValueError
        With use_input_stats, if x has exactly one spatial value per (sample, channel).
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    >>> y, mean, invstd = bnext.instance_norm(x, np.array([2.0]), np.array([1.0]))
    >>> np.round(y, 3)
    array([[[-1.683,  0.106,  1.894,  3.683]]])
    """
    small = small_calls.instance_norm(x, weight, bias, eps, running_mean, running_var, momentum, use_input_stats, out)
    if small is not None:
        return small
    x = check.batch_input("x", x)
    n, n_channels = x.shape[:2]
    weight = check.channel_vector("weight", weight, n_channels)
    bias = check.channel_vector("bias", bias, n_channels)
    eps = check.positive_finite("eps", eps)
    momentum = check.finite("momentum", momentum)
    running_mean = check.running_buffer("running_mean", running_mean, n_channels)
    running_var = check.running_buffer("running_var", running_var, n_channels)
    use_input_stats = bool(use_input_stats)
    out = check.out_array(out, x)
    spatial = math.prod(x.shape[2:])
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when use_input_stats is False")
        mean = np.broadcast_to(running_mean.astype(np.float64), (n, n_channels)).copy()
        invstd = np.broadcast_to(1.0 / np.sqrt(running_var.astype(np.float64) + eps), (n, n_channels)).copy()
        y, _, _, _ = _forward(x, n_channels, weight, bias, eps, out, mean=mean, invstd=invstd)
        return y, mean.astype(y.dtype), invstd.astype(y.dtype)
    if spatial == 1 and x.size > 0:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.shape}")

    y, mean, var, invstd = _forward(x, n_channels, weight, bias, eps, out)
    assert var is not None  # batch statistics were computed
    if x.size > 0:
        for buffer, rows, factor in ((running_mean, mean, 1.0), (running_var, var, spatial / (spatial - 1))):
            if buffer is not None:
                kernels.update_running_over_rows(buffer, rows, factor, momentum)
    return y, mean.astype(y.dtype), invstd.astype(y.dtype)


def instance_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                           weight: ArrayLike | None = None, *, use_input_stats: bool = True,
                           out: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of `instance_norm` from its saved mean and invstd.

    Parameters
    ----------
    dy : array of x's shape
    x : array of shape (N, C, *), float32 or float64
    mean, invstd : arrays of shape (N, C)
        As returned by `instance_norm`.
    weight : array of shape (C,), optional
    use_input_stats : bool, default True
        As in the forward call: True differentiates through the instance statistics; False treats the
        (running) statistics as constants, so ``dx = dy * weight * invstd``.
    out : array of x's shape and dtype, optional
        Where dx is written; may be dy or x itself.

    Returns
    -------
    dx : array of x's shape and dtype
    dweight, dbias : arrays of shape (C,) in x's dtype
    {layout}

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    >>> y, mean, invstd = bnext.instance_norm(x)
    >>> dx, dweight, dbias = bnext.instance_norm_backward(np.ones_like(x), x, mean, invstd)
    >>> dbias, bool(np.abs(dx).max() < 1e-12)
    (array([4.]), True)
    """
    if isinstance(x, np.ndarray) and x.ndim >= 2:
        small = small_calls.group_norm_backward(dy, x, mean, invstd, weight, x.shape[1], bool(use_input_stats), out)
        if small is not None:
            return small
    x = check.batch_input("x", x)
    x, dy, mean, invstd, weight, num_groups, out = _check_backward(dy, x, mean, invstd, weight, x.shape[1], out)
    dx, dweight, dbias = _backward(dy, x, mean, invstd, weight, num_groups, out, batch_stats=bool(use_input_stats))
    return dx, dweight.astype(dx.dtype), dbias.astype(dx.dtype)


for _function in (instance_norm, instance_norm_backward):
    _function.__doc__ = cast(str, _function.__doc__).replace("{layout}", _LAYOUT_NOTE)
