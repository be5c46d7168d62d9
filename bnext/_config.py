"""What this installation of bnext runs with."""

from typing import Any

import numpy as np

from . import _dispatch, _runtime
from ._threads import get_num_threads
from ._version import __version__


def build_info() -> dict[str, Any]:
    """A dict: versions, compiler and flags, the SIMD build in use and those available, OpenMP and threads."""
    return {
        "bnext": __version__,
        "numpy": np.__version__,
        "compiler": _runtime.compiler(),
        "flags": _dispatch.kernels.build_flags(),
        "simd_path": _dispatch.simd_path,
        "simd_builds": _dispatch.available_builds(),
        "openmp": _runtime.openmp_enabled(),
        "num_threads": get_num_threads(),
    }


def show_config() -> None:
    """Print `build_info()` one item a line."""
    for key, value in build_info().items():
        print(f"{key:12s} {value}")
