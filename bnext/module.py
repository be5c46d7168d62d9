"""A stateful batch-norm layer in the style of torch.nn.BatchNorm2d, on NumPy arrays."""
from typing import Any

import numpy as np

from . import _validation as check
from .batch_norm import _backward, _train, batch_norm_eval
from ._typing import ArrayLike, DTypeLike, FloatArray


class BatchNorm:
    """Batch normalization layer with learnable scale/shift and running statistics.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        Weight of the batch statistic in the running update; None means a cumulative moving average
        (``momentum = 1 / num_batches_tracked``), as in torch.nn.BatchNorm2d.
    affine : bool, default True
        Whether the layer has ``weight`` (ones) and ``bias`` (zeros); otherwise both are None.
    track_running_stats : bool, default True
        Whether to keep ``running_mean`` (zeros) and ``running_var`` (ones). Without them eval mode
        normalizes with batch statistics too.
    axis : int, default 1
        The channel axis of the inputs (-1 for channels-last).
    dtype : numpy dtype, default float32
        The dtype of the parameters and buffers.

    Attributes
    ----------
    weight, bias, running_mean, running_var : arrays of shape (C,) or None
    num_batches_tracked : int
    training : bool
    grad_weight, grad_bias : arrays of shape (C,) or None
        Set by `backward`.

    Examples
    --------
    >>> import numpy as np, bnext
    >>> layer = bnext.BatchNorm(3)
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, (8, 3, 4, 4)).astype(np.float32)
    >>> y = layer(x)
    >>> dx = layer.backward(np.ones_like(y))
    >>> layer.grad_bias
    array([128., 128., 128.], dtype=float32)
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, axis: int = 1, dtype: DTypeLike = np.float32) -> None:
        num_features = check.integer("num_features", num_features)
        if num_features < 0:
            raise ValueError(f"num_features must be >= 0, got {num_features}")
        dtype = np.dtype(dtype)
        if dtype not in check.KERNEL_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.num_features = num_features
        self.eps = check.positive_finite("eps", eps)
        self.momentum = None if momentum is None else check.finite("momentum", momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.axis = check.integer("axis", axis)  # its range is checked against each input's ndim
        self.dtype = dtype
        self.weight = np.ones(num_features, dtype) if affine else None
        self.bias = np.zeros(num_features, dtype) if affine else None
        self.running_mean = np.zeros(num_features, dtype) if track_running_stats else None
        self.running_var = np.ones(num_features, dtype) if track_running_stats else None
        self.num_batches_tracked = 0
        self.training = True
        self.grad_weight: FloatArray | None = None
        self.grad_bias: FloatArray | None = None
        self._saved: Any = None

    def train(self, mode: bool = True) -> "BatchNorm":
        """Switch to training mode (batch statistics, running statistics updated); returns self."""
        self.training = bool(mode)
        return self

    def eval(self) -> "BatchNorm":
        """Switch to inference mode (running statistics, when tracked); returns self."""
        return self.train(False)

    def __call__(self, x: ArrayLike) -> FloatArray:
        """Normalize x of shape (N, C, ...) and remember what `backward` needs."""
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats:
            assert self.running_mean is not None and self.running_var is not None
            y = batch_norm_eval(x, self.running_mean, self.running_var, self.weight, self.bias,
                                axis=self.axis, eps=self.eps)
            invstd = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
            self._saved = (x, self.running_mean.astype(np.float64), invstd, False)
            return y
        updating = self.training and self.running_mean is not None
        batches = self.num_batches_tracked + 1 if updating else self.num_batches_tracked
        momentum = 0.0
        if updating:
            momentum = 1.0 / batches if self.momentum is None else self.momentum
        y, mean, invstd = _train(x, self.weight, self.bias, self.axis, self.eps,
                                 self.running_mean if updating else None,
                                 self.running_var if updating else None, momentum, None)
        self.num_batches_tracked = batches
        self._saved = (x, mean, invstd, True)
        return y

    def backward(self, dy: ArrayLike) -> FloatArray:
        """Gradient with respect to the last input; sets `grad_weight` and `grad_bias` when affine.

        In training mode (or without running statistics) this is the batch-statistics gradient; in eval
        mode the statistics are constants and ``dx = dy * weight * invstd``.
        """
        if self._saved is None:
            raise RuntimeError("backward() called before a forward call")
        x, mean, invstd, batch_stats = self._saved
        dx, dweight, dbias = _backward(dy, x, mean, invstd, self.weight, self.axis, None,
                                       batch_stats=batch_stats)
        if self.affine:
            self.grad_weight = dweight.astype(self.dtype)
            self.grad_bias = dbias.astype(self.dtype)
        return dx

    def __repr__(self) -> str:
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, axis={self.axis})")

