"""The kernels' OpenMP thread count."""

import operator

from . import _runtime

_override = None


def set_num_threads(n):
    """Set the number of threads bnext's kernels use.

    Parameters
    ----------
    n : int or None
        A positive thread count, or None to go back to the default: the OpenMP runtime's team size, which
        honours ``OMP_NUM_THREADS`` (and threadpoolctl) and is otherwise the number of usable cores.

    Results are bitwise identical for any thread count.
    """
    global _override
    if n is None:
        _override = None
        return
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n_threads must be an integer, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"n_threads must be >= 1, got {n}")
    _override = n


def get_num_threads():
    """The number of threads the next kernel call will use."""
    return _override if _override is not None else _runtime.max_threads()
