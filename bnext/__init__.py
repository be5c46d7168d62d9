"""bnext: fast, exact batch normalization kernels for NumPy arrays."""

from . import reference
from ._config import build_info, show_config
from ._threads import get_num_threads, set_num_threads
from ._version import __version__
from .batch_norm import batch_norm_backward, batch_norm_eval, batch_norm_train
from .group_norm import group_norm, group_norm_backward
from .instance_norm import instance_norm, instance_norm_backward
from .layer_norm import layer_norm, layer_norm_backward
from .module import BatchNorm
from .moments import Moments
from .norm_layers import GroupNorm, InstanceNorm, LayerNorm
from .scaling import minmax_scale, standardize

__all__ = [
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "Moments",
    "__version__",
    "batch_norm_backward",
    "batch_norm_eval",
    "batch_norm_train",
    "build_info",
    "get_num_threads",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "minmax_scale",
    "reference",
    "set_num_threads",
    "show_config",
    "standardize",
]
