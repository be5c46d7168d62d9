"""How an N-d array with a channel axis becomes the (outer, C, inner) strided view the kernels take."""

import math

from collections.abc import Sequence

import numpy as np

from ._typing import Array


def kernel_view(arr: Array, axis: int) -> Array | None:
    """A no-copy (outer, C, inner) view of `arr`, or None when its strides cannot be merged that way.

    outer is the product of the axes before the channel axis, inner of those after it. With a single
    channel and inner == 1 the view is turned to (1, 1, outer) so the kernels see one long run.
    """
    shape = arr.shape
    n_channels = shape[axis]
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1:])
    if arr.flags.c_contiguous:
        view = arr.reshape((outer, n_channels, inner))  # always a view (and the cheaper call)
    else:
        try:
            view = arr.reshape((outer, n_channels, inner), copy=False)
        except ValueError:
            return None
    if inner == 1 and n_channels == 1:
        view = view.transpose(2, 1, 0)
    return view


def stores_channels_last(arr: Array, axis: int) -> bool:
    """Whether `arr` keeps its channel axis innermost in memory though it is not the last axis.

    That is torch's channels_last memory format (an NCHW array with NHWC strides). Its kernel view would be
    (N, C, H*W) with a stride of C along the rows; with the channel axis moved last it is a plain
    (N*H*W, C, 1) view that the channels-last kernels walk in memory order.
    """
    if arr.ndim < 3 or math.prod(arr.shape[axis + 1:]) == 1 or arr.strides[axis] != arr.itemsize:
        return False  # (the plain view is channels-last already when nothing follows the channel axis)
    return bool(np.moveaxis(arr, axis, -1).flags.c_contiguous)


def readable_view(arr: Array, axis: int) -> Array:
    """The kernel view of an input; strides that cannot be merged are copied to C order first."""
    view = kernel_view(arr, axis)
    if view is None:
        view = kernel_view(np.ascontiguousarray(arr), axis)
    assert view is not None  # a C-ordered array always merges
    return view


def same_memory_layout(a: Array, b: Array) -> bool:
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides)



def overlaps_partially(out: Array, inputs: Sequence[Array]) -> bool:
    """Whether `out` may share memory with an input other than exactly (in place is fine elementwise)."""
    return any(np.may_share_memory(out, a) and not same_memory_layout(out, a) for a in inputs)

class Output:
    """The array a kernel writes, and its kernel view.

    Without `out`, a new array in x's memory order. With `out`, its own memory, unless its strides cannot be
    viewed as (outer, C, inner) or it overlaps an input other than exactly (in-place): then the kernel
    writes a scratch array that `finish` copies into `out`.
    """

    def __init__(self, out: Array | None, like: Array, axis: int, inputs: Sequence[Array]) -> None:
        self.out = out
        self.scratch: Array | None = None
        if out is None:
            self.array = np.empty_like(like)
            view = kernel_view(self.array, axis)
            if view is None:
                self.array = np.empty(like.shape, like.dtype)
                view = kernel_view(self.array, axis)
        else:
            self.array = out
            view = kernel_view(out, axis)
            if view is None or overlaps_partially(out, inputs):
                self.scratch = np.empty(like.shape, like.dtype)
                view = kernel_view(self.scratch, axis)
        assert view is not None  # a C-ordered array always merges
        self.view: Array = view

    def finish(self) -> Array:
        if self.scratch is not None:
            assert self.out is not None  # scratch is only made for a given out
            np.copyto(self.out, self.scratch)
        return self.array


class RowsOutput:
    """The C-ordered array a row kernel (2-D views, unit stride along rows) writes, for an output like `like`.

    `out` itself when it is C-contiguous and overlaps no input other than exactly (in place); otherwise a
    scratch array that `finish` copies into `out`.
    """

    def __init__(self, out: Array | None, like: Array, inputs: Sequence[Array]) -> None:
        self.out = out
        self.array = np.empty(like.shape, like.dtype) if out is None else out
        aliased = out is not None and overlaps_partially(out, inputs)
        if self.array.flags.c_contiguous and not aliased:
            self.target = self.array
        else:
            self.target = np.empty(like.shape, like.dtype)

    def finish(self) -> Array:
        if self.target is not self.array:
            np.copyto(self.array, self.target)
        return self.array
