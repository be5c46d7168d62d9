"""Stateful LayerNorm, GroupNorm and InstanceNorm layers in the style of bnext.BatchNorm, on NumPy arrays."""
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from . import _validation as check
from .group_norm import _backward as group_backward
from .group_norm import _check_backward as group_check_backward
from .group_norm import _forward as group_forward
from .layer_norm import _backward as layer_backward
from .layer_norm import _forward as layer_forward
from .instance_norm import instance_norm, instance_norm_backward
from ._typing import Array, ArrayLike, DTypeLike, FloatArray


def _dtype(dtype: DTypeLike) -> np.dtype[Any]:
    dtype = np.dtype(dtype)
    if dtype not in check.KERNEL_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


_LayerT = TypeVar("_LayerT", bound="_Layer")


class _Layer:
    """train/eval switches and the saved forward state shared by the layers."""

    training = True
    weight: Array | None
    bias: Array | None
    dtype: np.dtype[Any]
    grad_weight: Array | None = None
    grad_bias: Array | None = None
    _saved: Any = None

    def train(self: _LayerT, mode: bool = True) -> _LayerT:
        """Switch to training mode; returns self."""
        self.training = bool(mode)
        return self

    def eval(self: _LayerT) -> _LayerT:
        """Switch to inference mode; returns self."""
        return self.train(False)

    def _saved_state(self) -> Any:
        if self._saved is None:
            raise RuntimeError("backward() called before a forward call")
        return self._saved

    def _set_grads(self, dweight: Array, dbias: Array) -> None:
        if self.weight is not None:
            self.grad_weight = dweight.astype(self.dtype)
        if self.bias is not None:
            self.grad_bias = dbias.astype(self.dtype)


class LayerNorm(_Layer):
    """Layer normalization over the trailing `normalized_shape` dims (torch.nn.LayerNorm).

    Parameters
    ----------
    normalized_shape : int or tuple of ints
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Whether the layer has ``weight`` (ones of normalized_shape).
    bias : bool, default True
        Whether the layer has ``bias`` (zeros) when elementwise_affine.
    dtype : numpy dtype, default float32

    Training and eval modes behave the same (layer norm has no running statistics).

    Examples
    --------
    >>> import numpy as np, bnext
    >>> layer = bnext.LayerNorm(4)
    >>> y = layer(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32))
    >>> dx = layer.backward(np.ones_like(y))
    >>> layer.grad_bias
    array([1., 1., 1., 1.], dtype=float32)
    """

    def __init__(self, normalized_shape: int | Sequence[int], *, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype: DTypeLike = np.float32) -> None:
        self.normalized_shape = check.shape_tuple("normalized_shape", normalized_shape)
        self.eps = check.positive_finite("eps", eps)
        self.dtype = _dtype(dtype)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = np.ones(self.normalized_shape, self.dtype) if elementwise_affine else None
        self.bias = np.zeros(self.normalized_shape, self.dtype) if elementwise_affine and bias else None

    def __call__(self, x: ArrayLike) -> FloatArray:
        y, mean, invstd = layer_forward(x, self.normalized_shape, self.weight, self.bias, self.eps, None)
        self._saved = (x, mean, invstd)
        return y

    def backward(self, dy: ArrayLike) -> FloatArray:
        """Gradient with respect to the last input; sets `grad_weight` and `grad_bias`."""
        x, mean, invstd = self._saved_state()
        dx, dweight, dbias = layer_backward(dy, x, mean, invstd, self.weight, self.normalized_shape, None)
        self._set_grads(dweight, dbias)
        return dx

    def __repr__(self) -> str:
        return (f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine})")


class GroupNorm(_Layer):
    """Group normalization of (N, C, *) inputs (torch.nn.GroupNorm).

    Parameters
    ----------
    num_groups : int
    num_channels : int
        C, divisible by num_groups.
    eps : float, default 1e-5
    affine : bool, default True
        Whether the layer has per-channel ``weight`` (ones) and ``bias`` (zeros).
    dtype : numpy dtype, default float32

    Examples
    --------
    >>> import numpy as np, bnext
    >>> layer = bnext.GroupNorm(2, 4)
    >>> y = layer(np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32))
    >>> y.shape, layer.backward(np.ones_like(y)).shape
    ((3, 4, 5), (3, 4, 5))
    """

    def __init__(self, num_groups: int, num_channels: int, *, eps: float = 1e-5, affine: bool = True,
                 dtype: DTypeLike = np.float32) -> None:
        self.num_groups = check.integer("num_groups", num_groups)
        self.num_channels = check.integer("num_channels", num_channels)
        if self.num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {self.num_groups}")
        if self.num_channels < 0 or self.num_channels % self.num_groups:
            raise ValueError(f"num_channels {self.num_channels} must be divisible by num_groups {self.num_groups}")
        self.eps = check.positive_finite("eps", eps)
        self.dtype = _dtype(dtype)
        self.affine = bool(affine)
        self.weight = np.ones(self.num_channels, self.dtype) if affine else None
        self.bias = np.zeros(self.num_channels, self.dtype) if affine else None

    def _check_input(self, x: ArrayLike) -> Array:
        x = check.batch_input("x", x)
        if x.shape[1] != self.num_channels:
            raise ValueError(f"x must have {self.num_channels} channels at axis 1, got shape {x.shape}")
        return x

    def __call__(self, x: ArrayLike) -> FloatArray:
        x = self._check_input(x)
        weight = None if self.weight is None else self.weight.astype(np.float64)
        bias = None if self.bias is None else self.bias.astype(np.float64)
        y, mean, _, invstd = group_forward(x, self.num_groups, weight, bias, self.eps, None)
        self._saved = (x, mean, invstd)
        return y

    def backward(self, dy: ArrayLike) -> FloatArray:
        """Gradient with respect to the last input; sets `grad_weight` and `grad_bias` when affine."""
        x, mean, invstd = self._saved_state()
        x, dy, mean, invstd, weight, groups, _ = group_check_backward(dy, x, mean, invstd, self.weight,
                                                                      self.num_groups, None)
        dx, dweight, dbias = group_backward(dy, x, mean, invstd, weight, groups, None)
        self._set_grads(dweight, dbias)
        return dx

    def __repr__(self) -> str:
        return f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine})"


class InstanceNorm(_Layer):
    """Instance normalization of (N, C, *) inputs (torch.nn.InstanceNorm1d/2d/3d).

    Parameters
    ----------
    num_features : int
        C.
    eps : float, default 1e-5
    momentum : float, default 0.1
    affine : bool, default False
        Whether the layer has per-channel ``weight`` (ones) and ``bias`` (zeros) (PyTorch's default: no).
    track_running_stats : bool, default False
        Whether to keep ``running_mean`` and ``running_var``; with them, eval mode normalizes with the running
        statistics.
    dtype : numpy dtype, default float32

    Examples
    --------
    >>> import numpy as np, bnext
    >>> layer = bnext.InstanceNorm(3, affine=True, track_running_stats=True)
    >>> y = layer(np.random.default_rng(0).normal(2.0, 1.0, (4, 3, 8)).astype(np.float32))
    >>> layer.running_mean.shape, layer.backward(np.ones_like(y)).shape
    ((3,), (4, 3, 8))
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1, affine: bool = False,
                 track_running_stats: bool = False, dtype: DTypeLike = np.float32) -> None:
        self.num_features = check.integer("num_features", num_features)
        if self.num_features < 0:
            raise ValueError(f"num_features must be >= 0, got {self.num_features}")
        self.eps = check.positive_finite("eps", eps)
        self.momentum = check.finite("momentum", momentum)
        self.dtype = _dtype(dtype)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.weight = np.ones(self.num_features, self.dtype) if affine else None
        self.bias = np.zeros(self.num_features, self.dtype) if affine else None
        self.running_mean = np.zeros(self.num_features, self.dtype) if track_running_stats else None
        self.running_var = np.ones(self.num_features, self.dtype) if track_running_stats else None

    def __call__(self, x: ArrayLike) -> FloatArray:
        x = check.batch_input("x", x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"x must have {self.num_features} channels at axis 1, got shape {x.shape}")
        use_input_stats = self.training or not self.track_running_stats
        y, mean, invstd = instance_norm(x, self.weight, self.bias, eps=self.eps, running_mean=self.running_mean,
                                        running_var=self.running_var, momentum=self.momentum,
                                        use_input_stats=use_input_stats)
        self._saved = (x, mean, invstd, use_input_stats)
        return y

    def backward(self, dy: ArrayLike) -> FloatArray:
        """Gradient with respect to the last input; sets `grad_weight` and `grad_bias` when affine."""
        x, mean, invstd, use_input_stats = self._saved_state()
        dx, dweight, dbias = instance_norm_backward(dy, x, mean, invstd, self.weight,
                                                    use_input_stats=use_input_stats)
        self._set_grads(dweight, dbias)
        return dx

    def __repr__(self) -> str:
        return (f"InstanceNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats})")
