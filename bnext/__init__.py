"""bnext: fast, exact batch normalization kernels for NumPy arrays."""

from . import reference
from ._config import build_info, show_config
from ._threads import get_num_threads, set_num_threads
from ._version import __version__
from .batch_norm import batch_norm_backward, batch_norm_eval, batch_norm_train
from .module import BatchNorm

__all__ = [
    "BatchNorm",
    "__version__",
    "batch_norm_backward",
    "batch_norm_eval",
    "batch_norm_train",
    "build_info",
    "get_num_threads",
    "reference",
    "set_num_threads",
    "show_config",
]
