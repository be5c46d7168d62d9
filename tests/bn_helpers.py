"""Shared data generators and comparison helpers for the bnext tests (fixtures live in conftest.py).

A module with its own name, not conftest: benches/ has a conftest too, and test files import from here.

Fast functions and their reference twins are paired by name through
`implementation` / `fast_and_reference`, never by copy-paste.
"""

import copy
import inspect
import re

import numpy as np
import pytest

import bnext
from bnext import reference

KERNEL_NAMES = ("batch_norm_train", "batch_norm_eval", "batch_norm_backward")
IMPLEMENTATIONS = {"bnext": bnext, "reference": reference}
FLOAT_DTYPES = (np.float32, np.float64)
DTYPE_IDS = {np.float32: "float32", np.float64: "float64"}

# Relative to the output's scale (see `channel_scale`): float32 results are
# compared with a float64 reference computed from the same float32 data.
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}

# name -> (shape, channel axis)
LAYOUTS = {
    "NC": ((16, 3), 1),
    "NCL": ((4, 3, 5), 1),
    "NLC": ((4, 5, 3), -1),
    "NCHW": ((3, 4, 5, 6), 1),
    "NHWC": ((3, 5, 6, 4), -1),
    "NCDHW": ((2, 3, 3, 4, 5), 1),
    "rank6": ((2, 3, 2, 2, 3, 2), 1),
    "axis0": ((3, 7, 5), 0),
    "axis2": ((2, 3, 4, 5), 2),
    "axis-2": ((2, 3, 4, 5), -2),
}

CONTIGUITIES = ("C", "F", "strided", "negstride", "readonly", "broadcast", "channels_innermost")


# ----------------------------------------------------------------- registry

def implementation(module_name, name):
    """The function `name` of the implementation `module_name`."""
    return getattr(IMPLEMENTATIONS[module_name], name)


def fast_and_reference(name):
    """(bnext.name, bnext.reference.name)."""
    return getattr(bnext, name), getattr(reference, name)


def call(function, params):
    """Call `function` with a dict of parameters, positional where the signature allows.

    The split follows the reference signature, which the fast API shares.
    """
    signature = inspect.signature(getattr(reference, function.__name__, function))
    args, kwargs = [], {}
    for parameter in signature.parameters.values():
        if parameter.name not in params:
            continue
        if parameter.kind is parameter.POSITIONAL_OR_KEYWORD and len(args) == _position(signature, parameter):
            args.append(params[parameter.name])
        else:
            kwargs[parameter.name] = params[parameter.name]
    extra = set(params) - set(signature.parameters)
    kwargs.update({k: params[k] for k in extra})
    return function(*args, **kwargs)


def _position(signature, parameter):
    return list(signature.parameters).index(parameter.name)


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


# ----------------------------------------------------------------- layouts

def make_layout(data, kind, axis=1):
    """An array with the values of `data` laid out in memory as `kind`.

    kind: "C", "F", "strided" (every other element of a larger buffer),
    "negstride" (negative strides on every axis), "readonly", "broadcast"
    (zero stride on the last axis: the values are those of ``data[..., :1]``
    repeated, so compute expectations from the returned array), or
    "channels_innermost" (C order with `axis` moved last, seen in the original axis order: torch's
    channels_last memory format for NCHW).
    """
    if kind == "channels_innermost":
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(data, axis, -1)), -1, axis)
    if kind == "C":
        return np.ascontiguousarray(data)
    if kind == "F":
        return np.asfortranarray(data)
    if kind == "strided":
        big = np.zeros(tuple(2 * n + 1 for n in data.shape), dtype=data.dtype)
        view = big[tuple(slice(1, None, 2) for _ in data.shape)]
        view[...] = data
        return view
    if kind == "negstride":
        flip = tuple(slice(None, None, -1) for _ in data.shape)
        return np.ascontiguousarray(data[flip])[flip]
    if kind == "readonly":
        result = data.copy()
        result.setflags(write=False)
        return result
    if kind == "broadcast":
        return np.broadcast_to(data[..., :1], data.shape)
    raise ValueError(f"unknown layout kind {kind!r}")


# ----------------------------------------------------------------- data

def random_x(shape, axis, dtype, rng, *, offset=0.0, spread=1.0):
    """Random data with a different offset and scale in every channel."""
    n_channels = shape[axis]
    param_shape = [1] * len(shape)
    param_shape[axis] = n_channels
    channel_offset = rng.uniform(-3, 3, n_channels).reshape(param_shape)
    channel_scale = rng.uniform(0.5, 2, n_channels).reshape(param_shape)
    values = offset + spread * (channel_offset + channel_scale * rng.standard_normal(shape))
    return values.astype(dtype)


def random_params(n_channels, dtype, rng):
    """weight, bias, running_mean, running_var of shape (C,)."""
    weight = rng.uniform(0.5, 2.0, n_channels) * rng.choice([-1, 1], n_channels)
    bias = rng.standard_normal(n_channels)
    running_mean = rng.standard_normal(n_channels)
    running_var = rng.uniform(0.5, 2.0, n_channels)
    return tuple(a.astype(dtype) for a in (weight, bias, running_mean, running_var))


def make_params(name, x, axis, rng):
    """A full parameter dict for calling kernel `name` on x."""
    dtype = x.dtype
    n_channels = x.shape[axis]
    weight, bias, running_mean, running_var = random_params(n_channels, dtype, rng)
    if name == "batch_norm_train":
        return dict(x=x, weight=weight, bias=bias, axis=axis, eps=1e-5,
                    running_mean=running_mean, running_var=running_var, momentum=0.1)
    if name == "batch_norm_eval":
        return dict(x=x, running_mean=running_mean, running_var=running_var,
                    weight=weight, bias=bias, axis=axis, eps=1e-5)
    if name == "batch_norm_backward":
        _, mean, invstd = reference.batch_norm_train(x, axis=axis)
        dy = rng.standard_normal(x.shape).astype(dtype)
        return dict(dy=dy, x=x, mean=mean, invstd=invstd, weight=weight, axis=axis)
    raise ValueError(name)


def copy_params(params):
    """Deep copy (running buffers are modified in place)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else copy.copy(v)) for k, v in params.items()}


HOSTILE_KINDS = (
    "offset_1e4", "offset_-1e4", "offset_1e6", "offset_1e6_tiny_spread", "constant_1e6",
    "huge_1e30", "tiny_1e-30", "mixed_scales", "single_channel", "many_channels",
    "two_per_channel", "channels_last_offset", "transposed_offset",
)


def hostile_data(kind, dtype, rng):
    """(x, axis) for one kind of numerically hostile input."""
    if kind == "offset_1e4":
        return (1e4 + 1e-2 * rng.standard_normal((64, 3, 4, 4))).astype(dtype), 1
    if kind == "offset_-1e4":
        return (-1e4 + 1e-2 * rng.standard_normal((64, 3, 4, 4))).astype(dtype), 1
    if kind == "offset_1e6":
        return (1e6 + rng.standard_normal((64, 3, 4, 4))).astype(dtype), 1
    if kind == "offset_1e6_tiny_spread":
        # float32 spacing at 1e6 is 0.0625: a handful of distinct values.
        return (1e6 + 0.1 * rng.standard_normal((64, 3, 4, 4))).astype(dtype), 1
    if kind == "constant_1e6":
        x = np.empty((16, 4, 3, 3), dtype=dtype)
        x[...] = (1e6 + np.array([0.0, 0.0625, -3.0, 1000.5])).reshape(1, 4, 1, 1)
        return x, 1
    if kind == "huge_1e30":
        return (1e30 * rng.standard_normal((32, 3, 5))).astype(dtype), 1
    if kind == "tiny_1e-30":
        return (1e-30 * rng.standard_normal((32, 3, 5))).astype(dtype), 1
    if kind == "mixed_scales":
        scales = np.array([1e-20, 1e-3, 1.0, 1e3, 1e20]).reshape(1, 5, 1)
        offsets = np.array([0.0, 1e4, -1e4, 1e5, 1e21]).reshape(1, 5, 1)
        return (offsets + scales * rng.standard_normal((40, 5, 3))).astype(dtype), 1
    if kind == "single_channel":
        return (3e3 + rng.standard_normal((257, 1))).astype(dtype), 1
    if kind == "many_channels":
        return (1e4 + rng.standard_normal((3, 4099))).astype(dtype), 1
    if kind == "two_per_channel":
        return (1e4 + 1e-2 * rng.standard_normal((2, 37))).astype(dtype), 1
    if kind == "channels_last_offset":
        return (1e4 + 1e-2 * rng.standard_normal((8, 5, 5, 6))).astype(dtype), -1
    if kind == "transposed_offset":
        base = (1e4 + 1e-2 * rng.standard_normal((7, 9, 30))).astype(dtype)
        return base.transpose(2, 0, 1), 1
    raise ValueError(f"unknown hostile kind {kind!r}")


# ----------------------------------------------------------------- comparisons

def channel_scale(expected, axis):
    """max |expected| over every axis but `axis`, shaped to broadcast against it."""
    reduce_axes = tuple(i for i in range(expected.ndim) if i != axis % expected.ndim)
    magnitude = np.where(np.isfinite(expected), np.abs(expected), 0)
    if expected.size == 0:
        return 0.0
    return np.max(magnitude, axis=reduce_axes, keepdims=True)


def assert_close(actual, expected, *, dtype, scale, what=""):
    """|actual - expected| <= RTOL[dtype] * scale elementwise; non-finite values must match.

    `scale` is the output's scale (a number or an array broadcasting against
    expected), so near-zero entries are judged against the size of their
    neighbours rather than against themselves.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype} != {np.dtype(dtype)}"
    expected64 = expected.astype(np.float64)
    actual64 = actual.astype(np.float64)
    finite = np.isfinite(expected64)
    assert np.array_equal(np.isfinite(actual64), finite), f"{what}: non-finite entries differ"
    nonfinite_match = np.array_equal(actual64[~finite], expected64[~finite], equal_nan=True)
    assert nonfinite_match, f"{what}: non-finite entries differ"
    tolerance = RTOL[np.dtype(dtype)] * np.broadcast_to(scale, expected.shape)
    error = np.abs(actual64 - expected64)
    bad = finite & ~(error <= tolerance)
    if np.any(bad):
        index = np.unravel_index(np.argmax(np.where(bad, error / np.maximum(tolerance, 1e-300), 0)), expected.shape)
        raise AssertionError(
            f"{what}: {np.count_nonzero(bad)} of {expected.size} entries out of tolerance; worst at "
            f"{index}: actual {actual64[index]!r}, expected {expected64[index]!r}, "
            f"tolerance {tolerance[index]!r}")


def assert_train_close(actual, expected, *, x, axis, what=""):
    """Compare (y, mean, invstd) results of batch_norm_train."""
    dtype = x.dtype
    y, mean, invstd = actual
    ref_y, ref_mean, ref_invstd = expected
    assert_close(y, ref_y, dtype=dtype, scale=channel_scale(ref_y, axis), what=f"{what} y")
    ref_invstd64 = ref_invstd.astype(np.float64)
    # The mean is judged in units of the channel's spread (plus its own size).
    with np.errstate(divide="ignore"):
        spread = np.where(np.isfinite(ref_invstd64) & (ref_invstd64 > 0), 1 / ref_invstd64, 0)
    assert_close(mean, ref_mean, dtype=dtype, scale=np.abs(ref_mean.astype(np.float64)) + spread,
                 what=f"{what} mean")
    assert_close(invstd, ref_invstd, dtype=dtype, scale=np.abs(ref_invstd64), what=f"{what} invstd")


def backward_scales(dy, x, mean, invstd, weight, axis):
    """Scales for (dx, dweight, dbias): the sizes of the terms that are summed."""
    ndim = x.ndim
    axis = axis % ndim
    reduce_axes = tuple(i for i in range(ndim) if i != axis)
    shape = [1] * ndim
    shape[axis] = x.shape[axis]
    dy64 = np.abs(dy.astype(np.float64))
    x_hat = (x.astype(np.float64) - mean.astype(np.float64).reshape(shape)) * invstd.astype(np.float64).reshape(shape)
    dbias_scale = dy64.sum(axis=reduce_axes)
    dweight_scale = (dy64 * np.abs(x_hat)).sum(axis=reduce_axes)
    m = max(1, x.size // max(1, x.shape[axis]))
    w = np.ones(x.shape[axis]) if weight is None else np.abs(weight.astype(np.float64))
    term = dy64 + (dbias_scale.reshape(shape) + np.abs(x_hat) * dweight_scale.reshape(shape)) / m
    dx_scale = (w * invstd.astype(np.float64)).reshape(shape) * channel_scale(term, axis)
    return dx_scale, dweight_scale, dbias_scale


def assert_backward_close(actual, expected, params, what=""):
    """Compare (dx, dweight, dbias) results of batch_norm_backward."""
    x = params["x"]
    dtype = x.dtype
    dx_scale, dweight_scale, dbias_scale = backward_scales(
        params["dy"], x, params["mean"], params["invstd"], params.get("weight"), params.get("axis", 1))
    for name, a, e, s in zip(("dx", "dweight", "dbias"), actual, expected,
                             (dx_scale, dweight_scale, dbias_scale)):
        assert_close(a, e, dtype=dtype, scale=s, what=f"{what} {name}")


def assert_results_close(name, actual, expected, params, what=""):
    """Compare the results of kernel `name`, called with `params`, fast vs reference."""
    x = params["x"]
    axis = params.get("axis", 1)
    if name == "batch_norm_train":
        assert_train_close(actual, expected, x=x, axis=axis, what=what)
    elif name == "batch_norm_eval":
        assert_close(actual, expected, dtype=x.dtype, scale=channel_scale(np.asarray(expected), axis),
                     what=f"{what} y")
    else:
        assert_backward_close(actual, expected, params, what=what)


def assert_running_close(fast_params, ref_params, old_params, what=""):
    """Compare the running buffers after a training call, fast vs reference.

    Each new entry is a weighted average of the old one and a batch statistic,
    so it is judged against the size of both.
    """
    for key in ("running_mean", "running_var"):
        if fast_params.get(key) is None:
            continue
        expected = ref_params[key]
        scale = np.abs(expected.astype(np.float64)) + np.abs(old_params[key].astype(np.float64))
        assert_close(fast_params[key], expected, dtype=expected.dtype, scale=scale, what=f"{what} {key}")


def assert_within(actual, expected, atol, what=""):
    """|actual - expected| <= atol elementwise (expected and atol may broadcast)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.broadcast_to(np.asarray(expected, dtype=np.float64), actual.shape)
    atol = np.broadcast_to(atol, actual.shape)
    bad = ~(np.abs(actual - expected) <= atol)
    assert not np.any(bad), (
        f"{what}: {np.count_nonzero(bad)} entries out of tolerance: actual {actual[bad]}, "
        f"expected {expected[bad]}, atol {atol[bad]}")


def bitwise_equal(a, b):
    """True when two float arrays hold the same bits (NaN payloads included)."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    view = {4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return np.array_equal(a.view(view), b.view(view))


def all_of(*patterns):
    """A regex matching a message that contains every pattern, in any order."""
    return "(?s)^" + "".join(f"(?=.*{p})" for p in patterns)


def word(name):
    """A regex for `name` as a whole word (so "x" does not match "max")."""
    return rf"(?<![\w]){re.escape(name)}(?![\w])"
