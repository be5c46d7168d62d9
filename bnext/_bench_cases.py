"""Benchmark cases shared by ``python -m bnext bench`` and the pytest-benchmark suite in ``benches/``.

One place says which shapes are measured, how the inputs are built, how many bytes each op moves and
how each implementation is called, so the command and the suite always measure the same thing.

Implementations (see `make_call`):

- ``bnext``: the public functions, called as a user calls them (outputs allocated by the call).
- ``bnext-out``: the same calls given a preallocated ``out=``: the kernels' time without the page
  faults of a fresh y/dx, which is what compares with the copy into a preallocated array below.
- ``reference``: `bnext.reference`, the plain-NumPy twin; paired with ``bnext`` by name, never copied.
- ``torch``: ``torch.nn.functional.batch_norm`` (train/eval) and
  ``torch.ops.aten.native_batch_norm_backward`` over the same memory (``torch.from_numpy``, no copy);
  channels-last is an NCHW view with NHWC strides, i.e. ``torch.channels_last`` for 4-D.
- ``copy``: ``np.copyto`` of an array of x's size into a preallocated one, the memory roofline.
  NumPy copies on one thread only, so for ``threads > 1`` there is also ``copy-threaded``: the same copy
  cut into ``threads`` slabs on a thread pool (``np.copyto`` releases the GIL).
"""

import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._typing import Array

#: A timed call: no arguments, its result is ignored.
BenchCall = Callable[[], object]

OPS = ("train", "eval", "backward", "layer_norm", "group_norm")
# The siblings' forwards: layer norm over the last axis, group norm with gcd(C, 32) groups; C-ordered only.
FAMILY_OPS = ("layer_norm", "group_norm")
DTYPES = ("float32", "float64")
LAYOUTS = ("nchw", "nhwc")
IMPLEMENTATIONS = ("bnext", "bnext-out", "reference", "torch", "copy", "copy-threaded")

# Logical (N, C, spatial...) shapes. FULL_SHAPES are the ones the performance targets are stated for.
FULL_SHAPES = (
    (32, 64, 56, 56),
    (64, 256, 14, 14),
    (128, 512, 7, 7),
    (8, 32, 128, 128),
    (16, 3, 224, 224),
    (256, 1024),
    (64, 64, 112, 112),
    (64, 196, 768),  # the transformer shape of the siblings' targets: layer norm over 768
    (2, 4, 1, 1),  # a call on a few values: what the checks and dispatch around the kernels cost
)
# `python -m bnext bench --quick`: one large activation, one many-channel, one 2-D, one tiny; seconds in all.
QUICK_SHAPES = ((32, 64, 56, 56), (128, 512, 7, 7), (256, 1024), (2, 4, 1, 1))
# The pytest suite's default profile, run once per test by every `python -m pytest`: tiny on purpose.
SMALL_SHAPES = ((8, 16, 16, 16), (64, 128), (2, 4, 1, 1))

EPS = 1e-5
MOMENTUM = 0.1


def parse_shape(text: str) -> tuple[int, ...]:
    """``"32x64x56x56"`` -> ``(32, 64, 56, 56)``; ValueError unless 2 or more positive integers."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"bad shape {text!r}: expected sizes joined by 'x', e.g. 32x64x56x56") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"bad shape {text!r}: need at least 2 positive sizes (N and C)")
    return shape


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(size) for size in shape)


@dataclass(frozen=True)
class Case:
    """One measurement: an op on one input configuration at one thread count.

    ``shape`` is logical, (N, C, spatial...). ``layout`` is ``"nchw"`` (channels at axis 1),
    ``"nhwc"`` (channels last in memory, bnext called with axis=-1) or ``"nc"`` for 2-D inputs,
    which have only one layout.
    """

    op: str
    shape: tuple[int, ...]
    dtype: str
    layout: str
    threads: int

    @property
    def axis(self) -> int:
        return -1 if self.layout == "nhwc" else 1

    @property
    def memory_shape(self) -> tuple[int, ...]:
        if self.layout == "nhwc":
            return (self.shape[0],) + self.shape[2:] + (self.shape[1],)
        return self.shape

    @property
    def data_key(self) -> tuple[tuple[int, ...], str, str]:
        """Cases with the same key share their input arrays."""
        return (self.shape, self.dtype, self.layout)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def bytes_moved(self) -> int:
        """Bytes of the unavoidable traffic: each full-size array read or written once.

        train/eval read x and write y; backward reads dy and x and writes dx. The (C,) vectors are
        left out. A copy moves 2 arrays, so ``GB/s`` of an op and of the copy are comparable.
        """
        n_arrays = 3 if self.op == "backward" else 2
        return n_arrays * self.n_elements * np.dtype(self.dtype).itemsize

    @property
    def copy_bytes(self) -> int:
        """Bytes a copy of an array of x's size moves: one read and one write."""
        return 2 * self.n_elements * np.dtype(self.dtype).itemsize

    @property
    def label(self) -> str:
        return f"{format_shape(self.shape)}-{self.dtype}-{self.layout}-t{self.threads}"

    @property
    def group(self) -> str:
        """pytest-benchmark group: all implementations of one case print side by side."""
        return f"{self.op}-{self.label}"


def effective_layout(shape: Sequence[int], layout: str) -> str:
    return "nc" if len(shape) == 2 else layout


def make_cases(ops: Iterable[str], shapes: Iterable[Sequence[int]], dtypes: Iterable[str],
               layouts: Iterable[str], threads: Iterable[int]) -> list[Case]:
    """All cases, ordered so that cases sharing input arrays are adjacent (build the data once).

    A 2-D shape appears once, with layout ``"nc"``, whatever the layouts asked for.
    """
    cases: list[Case] = []
    for shape in shapes:
        for dtype in dtypes:
            seen_layouts: list[str] = []
            for layout in layouts:
                layout = effective_layout(shape, layout)
                if layout in seen_layouts:
                    continue
                seen_layouts.append(layout)
                for op in ops:
                    if op in FAMILY_OPS and layout == "nhwc":
                        continue
                    for n_threads in threads:
                        cases.append(Case(op, tuple(shape), dtype, layout, n_threads))
    return cases


def make_inputs(case: Case, *, with_backward: bool = True, seed: int = 0) -> dict[str, Array]:
    """The arrays every implementation of ``case`` reads: a dict of NumPy arrays, writable.

    x is standard normal, laid out as ``case.memory_shape`` (C-contiguous). With ``with_backward``
    also dy and the batch statistics mean and invstd (float64 inside, cast to the dtype).
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(case.dtype)
    n_channels = case.shape[1]
    x = rng.standard_normal(case.memory_shape, dtype=dtype)
    inputs = {
        "x": x,
        "weight": (1.0 + 0.1 * rng.standard_normal(n_channels)).astype(dtype),
        "bias": (0.1 * rng.standard_normal(n_channels)).astype(dtype),
        "running_mean": np.zeros(n_channels, dtype),
        "running_var": np.ones(n_channels, dtype),
        # layer norm's elementwise affine over the last axis
        "row_weight": (1.0 + 0.1 * rng.standard_normal(case.shape[-1])).astype(dtype),
        "row_bias": (0.1 * rng.standard_normal(case.shape[-1])).astype(dtype),
    }
    if with_backward:
        channel_axis = x.ndim - 1 if case.layout == "nhwc" else 1
        reduce_axes = tuple(i for i in range(x.ndim) if i != channel_axis)
        mean = x.mean(axis=reduce_axes, dtype=np.float64)
        var = x.var(axis=reduce_axes, dtype=np.float64)
        inputs["dy"] = rng.standard_normal(case.memory_shape, dtype=dtype)
        inputs["mean"] = mean.astype(dtype)
        inputs["invstd"] = (1.0 / np.sqrt(var + EPS)).astype(dtype)
    return inputs


def make_call(impl: str, case: Case, inputs: dict[str, Array]) -> BenchCall:
    """A zero-argument callable running ``impl`` on ``case``; everything it needs is made here.

    Running statistics are copied, so implementations never update each other's buffers.
    ``bnext-out`` is bnext given a preallocated ``out=``: the kernel time without allocating y/dx.
    """
    if impl in ("bnext", "bnext-out", "reference"):
        return _numpy_api_call(impl, case, inputs)
    if impl == "torch":
        return _torch_call(case, inputs)
    if impl == "copy":
        return _copy_call(inputs["x"], 1)
    if impl == "copy-threaded":
        return _copy_call(inputs["x"], case.threads)
    raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLEMENTATIONS}")


def _numpy_api_call(impl: str, case: Case, inputs: dict[str, Array]) -> BenchCall:
    import bnext
    import bnext.reference

    module = bnext.reference if impl == "reference" else bnext
    x, weight, bias, axis = inputs["x"], inputs["weight"], inputs["bias"], case.axis
    out = np.empty_like(x) if impl == "bnext-out" else None
    if case.op in FAMILY_OPS:
        return _family_call(module, case, inputs, out)
    function = getattr(module, f"batch_norm_{case.op}")
    if case.op == "train":
        running_mean = inputs["running_mean"].copy()
        running_var = inputs["running_var"].copy()
        return lambda: function(
            x, weight, bias, axis=axis, eps=EPS, running_mean=running_mean,
            running_var=running_var, momentum=MOMENTUM, out=out,
        )
    if case.op == "eval":
        running_mean, running_var = inputs["running_mean"], inputs["running_var"]
        return lambda: function(x, running_mean, running_var, weight, bias, axis=axis, eps=EPS, out=out)
    if case.op == "backward":
        dy, mean, invstd = inputs["dy"], inputs["mean"], inputs["invstd"]
        return lambda: function(dy, x, mean, invstd, weight, axis=axis, out=out)
    raise ValueError(f"unknown op {case.op!r}; expected one of {OPS}")


def group_count(case: Case) -> int:
    return math.gcd(case.shape[1], 32)


def _family_call(module: Any, case: Case, inputs: dict[str, Array], out: Array | None) -> BenchCall:
    x = inputs["x"]
    if case.op == "layer_norm":
        row_weight, row_bias = inputs["row_weight"], inputs["row_bias"]
        return lambda: module.layer_norm(x, case.shape[-1], row_weight, row_bias, eps=EPS, out=out)
    weight, bias, groups = inputs["weight"], inputs["bias"], group_count(case)
    return lambda: module.group_norm(x, groups, weight, bias, eps=EPS, out=out)


_torch: Any = None  # None: not looked for yet; False: not installed; else the module


def load_torch() -> Any:
    """The torch module, or None when it is not installed (imported once, on first use)."""
    global _torch
    if _torch is None:
        try:
            import torch
        except ImportError:
            _torch = False
        else:
            _torch = torch
    return _torch or None


def _torch_call(case: Case, inputs: dict[str, Array]) -> BenchCall:
    torch = load_torch()
    if torch is None:
        raise RuntimeError("torch is not installed")

    def as_nchw_tensor(array: Array) -> Any:
        tensor = torch.from_numpy(array)
        # NHWC memory seen as an NCHW tensor: exactly torch.channels_last for 4-D inputs.
        return tensor.movedim(-1, 1) if case.layout == "nhwc" else tensor

    x = as_nchw_tensor(inputs["x"])
    weight = torch.from_numpy(inputs["weight"])
    bias = torch.from_numpy(inputs["bias"])
    functional = torch.nn.functional
    if case.op == "layer_norm":
        row_weight = torch.from_numpy(inputs["row_weight"])
        row_bias = torch.from_numpy(inputs["row_bias"])
        return lambda: functional.layer_norm(x, (case.shape[-1],), row_weight, row_bias, EPS)
    if case.op == "group_norm":
        groups = group_count(case)
        return lambda: functional.group_norm(x, groups, weight, bias, EPS)
    if case.op == "train":
        running_mean = torch.from_numpy(inputs["running_mean"].copy())
        running_var = torch.from_numpy(inputs["running_var"].copy())
        return lambda: functional.batch_norm(
            x, running_mean, running_var, weight, bias, training=True, momentum=MOMENTUM, eps=EPS
        )
    if case.op == "eval":
        running_mean = torch.from_numpy(inputs["running_mean"])
        running_var = torch.from_numpy(inputs["running_var"])
        return lambda: functional.batch_norm(
            x, running_mean, running_var, weight, bias, training=False, eps=EPS
        )
    if case.op == "backward":
        dy = as_nchw_tensor(inputs["dy"])
        mean = torch.from_numpy(inputs["mean"])
        invstd = torch.from_numpy(inputs["invstd"])
        backward = torch.ops.aten.native_batch_norm_backward
        return lambda: backward(dy, x, weight, None, None, mean, invstd, True, EPS, [True, True, True])
    raise ValueError(f"unknown op {case.op!r}; expected one of {OPS}")


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _thread_pool(n_threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if n_threads not in _pools:
            _pools[n_threads] = ThreadPoolExecutor(n_threads, thread_name_prefix="bnext-bench-copy")
        return _pools[n_threads]


def _copy_call(source: Array, n_threads: int) -> BenchCall:
    destination = np.empty_like(source)
    if n_threads == 1:
        return lambda: np.copyto(destination, source)
    pool = _thread_pool(n_threads)
    flat_source, flat_destination = source.reshape(-1), destination.reshape(-1)
    bounds = np.linspace(0, flat_source.size, n_threads + 1).astype(np.intp)
    slabs = [
        (flat_destination[start:stop], flat_source[start:stop])
        for start, stop in zip(bounds[:-1], bounds[1:])
    ]

    def threaded_copy() -> None:
        for future in [pool.submit(np.copyto, dst, src) for dst, src in slabs]:
            future.result()

    return threaded_copy


@contextlib.contextmanager
def thread_count(n_threads: int) -> Iterator[None]:
    """Run the block with bnext and torch (if already imported) at ``n_threads``; restore after."""
    import bnext

    torch = load_torch()
    saved_bnext = bnext.get_num_threads()
    saved_torch = torch.get_num_threads() if torch is not None else None
    bnext.set_num_threads(n_threads)
    if torch is not None:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        bnext.set_num_threads(saved_bnext)
        if torch is not None:
            torch.set_num_threads(saved_torch)
