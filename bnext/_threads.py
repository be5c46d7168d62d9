"""The kernels' OpenMP thread count."""

from . import _runtime
from ._validation import integer

_override: int | None = None


def set_num_threads(n: int | None) -> None:
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
    n = integer("n_threads", n)
    if n < 1:
        raise ValueError(f"n_threads must be >= 1, got {n}")
    _override = n


def get_num_threads() -> int:
    """The number of threads the next kernel call will use."""
    return _override if _override is not None else _runtime.max_threads()
