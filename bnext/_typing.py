"""Type aliases of the public API (for annotations only; nothing here runs in a kernel)."""

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

#: What the functions accept as data: an ndarray, or anything ``np.asarray`` makes a float array of.
ArrayLike: TypeAlias = npt.ArrayLike
#: What they return: a float32 or float64 ndarray (the dtype of the input data).
FloatArray: TypeAlias = npt.NDArray[np.floating[Any]]
#: Float64 working arrays (statistics, per-channel vectors).
Float64Array: TypeAlias = npt.NDArray[np.float64]
#: A dtype argument: np.float32, "float64", np.dtype(...).
DTypeLike: TypeAlias = npt.DTypeLike
#: Internal: an ndarray whose dtype the code has checked at run time.
Array: TypeAlias = npt.NDArray[Any]
