"""Choose the kernel build this CPU runs best.

The kernels are compiled up to three times from one source (src/_batch_norm_kernels.pxi): baseline
x86-64, AVX2 + FMA and AVX-512. All builds use the same accumulation order and no FMA contraction, so they
give bitwise identical results; only the speed differs. BNEXT_SIMD=baseline|avx2|avx512 forces a build
(for testing and benchmarking); asking for one this CPU or build lacks raises ImportError.
"""

import importlib
import os
from typing import TYPE_CHECKING

from . import _runtime

__all__ = ["available_builds", "family_kernels", "kernels", "large_calls", "simd_path", "small_calls"]

_BUILDS = ("baseline", "avx2", "avx512")
_MODULES = {"baseline": "bnext._batch_norm", "avx2": "bnext._batch_norm_avx2",
            "avx512": "bnext._batch_norm_avx512"}


def available_builds() -> list[str]:
    """The kernel builds this CPU can run and this installation has, slowest first."""
    found: list[str] = []
    for level, name in enumerate(_BUILDS):
        if level > _runtime.cpu_simd_level():
            break
        try:
            importlib.import_module(_MODULES[name])
        except ImportError:
            continue
        found.append(name)
    return found


def _select() -> str:
    forced = os.environ.get("BNEXT_SIMD", "").strip().lower()
    builds = available_builds()
    if forced:
        if forced not in _BUILDS:
            raise ImportError(f"BNEXT_SIMD must be one of {', '.join(_BUILDS)}, got {forced!r}")
        if forced not in builds:
            raise ImportError(f"BNEXT_SIMD={forced} but this CPU or build offers only {', '.join(builds)}")
        return forced
    return builds[-1]


simd_path = _select()
if TYPE_CHECKING:
    # Every build has the interface of the baseline one (see _batch_norm.pyi and _family.pyi).
    from . import _batch_norm as kernels  # noqa: F401
    from . import _family as family_kernels  # noqa: F401
    from . import _large_calls as large_calls  # noqa: F401
    from . import _small_calls as small_calls  # noqa: F401
else:
    kernels = importlib.import_module(_MODULES[simd_path])
    # Layer, group and instance norm's own kernels (src/_family_kernels.pxi), built the same three ways.
    family_kernels = importlib.import_module(_MODULES[simd_path].replace("_batch_norm", "_family"))
    # The common-case calls with plain arguments (src/_plain_calls.pxi), built the same three ways: without
    # OpenMP for small inputs (the entry point the public functions call), with it for larger ones, which
    # the small-call build forwards.
    small_calls = importlib.import_module(_MODULES[simd_path].replace("_batch_norm", "_small_calls"))
    large_calls = importlib.import_module(_MODULES[simd_path].replace("_batch_norm", "_large_calls"))
    small_calls.use_threaded(large_calls)
