"""Argument checks at the API boundary: every error a user can see is raised here, before anything is written."""

import math
import numbers
import operator

from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np

from ._typing import Array

KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(name: str, value: object) -> Array:
    """`value` as a float32 or float64 ndarray the kernels can read (no copy for a usable ndarray)."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        if value is None or isinstance(value, (str, bytes, dict, set)):
            raise TypeError(f"{name} must be a float32 or float64 array, got {type(value).__name__}")
        try:
            arr = np.asarray(value)
        except Exception as exc:  # ragged lists, objects that refuse conversion...
            raise TypeError(f"{name} must be a float32 or float64 array, got {type(value).__name__}") from exc
    dtype = arr.dtype
    if dtype.kind == "f" and dtype.itemsize in (4, 8) and not dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))  # byte-swapped data: the kernels read native floats
    elif dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got {dtype}")
    # The kernels index in whole elements. NumPy's aligned flag already means strides that are multiples
    # of the dtype's alignment, which is its size on common ABIs: only then is the loop over strides needed.
    if not arr.flags.aligned or (arr.dtype.alignment != arr.itemsize
                                 and any(s % arr.itemsize for s in arr.strides)):
        arr = arr.copy()
    return arr


def batch_input(name: str, value: object) -> Array:
    arr = float_array(name, value)
    if arr.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (N, C, ...), got shape {arr.shape}")
    return arr


def integer(name: str, value: Any) -> int:
    try:
        index: int = operator.index(value)
        return index
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def channel_axis(axis: Any, ndim: int) -> int:
    index = integer("axis", axis)
    if not -ndim <= index < ndim:
        raise ValueError(f"axis {index} is out of bounds for x with ndim {ndim}")
    return index % ndim


@overload
def channel_vector(name: str, value: object, n_channels: int, *, required: Literal[True]) -> Array: ...
@overload
def channel_vector(name: str, value: object, n_channels: int, *, required: bool = False) -> Array | None: ...


def channel_vector(name: str, value: object, n_channels: int, *, required: bool = False) -> Array | None:
    """A per-channel parameter as a float64 array of shape (C,), or None when it is optional and absent."""
    if value is None:
        if required:
            raise TypeError(f"{name} must be a float32 or float64 array of shape ({n_channels},), got None")
        return None
    arr = float_array(name, value)
    if arr.shape != (n_channels,):
        raise ValueError(f"{name} must have shape ({n_channels},), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def running_buffer(name: str, value: object, n_channels: int) -> Array | None:
    """A running statistic updated in place: a writeable float ndarray of shape (C,), or None."""
    if value is None:
        return None
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array (it is updated in place), got {type(value).__name__}")
    if value.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got {value.dtype}")
    if value.shape != (n_channels,):
        raise ValueError(f"{name} must have shape ({n_channels},), got {value.shape}")
    if not value.flags.writeable:
        raise ValueError(f"{name} is read-only: running statistics are updated in place")
    return value


def out_array(out: object, like: Array, name: str = "out") -> Array | None:
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.dtype != like.dtype:
        raise TypeError(f"{name} must have dtype {like.dtype}, got {out.dtype}")
    if out.shape != like.shape:
        raise ValueError(f"{name} must have shape {like.shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def real_number(name: str, value: object) -> float:
    if type(value) is float:  # the common case, without the slower abstract-base-class checks below
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def positive_finite(name: str, value: object) -> float:
    value = real_number(name, value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def finite(name: str, value: object) -> float:
    value = real_number(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def same_shape(name: str, arr: Array, like: Array) -> None:
    if arr.shape != like.shape:
        raise ValueError(f"{name} must have the shape of x {like.shape}, got {arr.shape}")


def nonnegative_finite(name: str, value: object) -> float:
    value = real_number(name, value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def shape_tuple(name: str, value: Any) -> tuple[int, ...]:
    """An int or a sequence of ints as a tuple of non-negative ints (e.g. normalized_shape)."""
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(value).__name__}") from None
    shape = tuple(integer(name, item) for item in items)
    if any(size < 0 for size in shape):
        raise ValueError(f"{name} must hold sizes >= 0, got {shape}")
    return shape


@overload
def param_array(name: str, value: object, shape: Sequence[int], *, required: Literal[True],
                also: Sequence[Sequence[int]] = ()) -> Array: ...
@overload
def param_array(name: str, value: object, shape: Sequence[int], *, required: bool = False,
                also: Sequence[Sequence[int]] = ()) -> Array | None: ...


def param_array(name: str, value: object, shape: Sequence[int], *, required: bool = False,
                also: Sequence[Sequence[int]] = ()) -> Array | None:
    """A parameter as a float64 C-ordered array of `shape`, or None when optional and absent.

    `also` lists other accepted shapes of the same size (e.g. PyTorch's keepdim-style saved statistics).
    """
    if value is None:
        if required:
            raise TypeError(f"{name} must be a float32 or float64 array of shape {shape}, got None")
        return None
    arr = float_array(name, value)
    if arr.shape != tuple(shape) and arr.shape not in [tuple(s) for s in also]:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64).reshape(shape)
