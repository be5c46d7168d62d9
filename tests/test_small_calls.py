"""Common-case calls run in compiled code (src/_plain_calls.pxi): the same bits as the checked Python path,
taken only for plain arguments, and declined (None) for anything else so the Python path checks and raises.
Inputs of PARALLEL_MIN_VALUES values or more are forwarded from the small-call build to the threaded one."""

import gc
import sys

import numpy as np
import pytest

import bnext
from bnext._dispatch import large_calls, small_calls
from bn_helpers import KERNEL_NAMES, bitwise_equal, call, copy_params, make_params, random_x

PARALLEL_MIN_VALUES = 32768  # src/_parallel.pxd: the small-call entries take inputs below this many values
# name -> (shape, channel axis); x C-contiguous in each. The large ones go to the threaded build.
SMALL_SHAPES = {
    "2x4x1x1": ((2, 4, 1, 1), 1),
    "NC": ((16, 3), 1),
    "NCL": ((5, 7, 9), 1),
    "NCHW": ((4, 6, 5, 5), 1),
    "NHWC": ((4, 5, 5, 6), -1),
    "axis0": ((7, 3, 5), 0),
    "axis-2": ((2, 3, 4, 5), -2),
    "C1": ((6, 1, 4), 1),
    "C1_one_run": ((5000, 1), 1),
    "two_values": ((2, 1), 1),
    "just_below": ((PARALLEL_MIN_VALUES // 64 - 1, 64), 1),
}
LARGE_SHAPES = {
    "at_the_limit": ((PARALLEL_MIN_VALUES // 64, 64), 1),
    "large_NCHW": ((8, 16, 17, 17), 1),
    "large_NHWC": ((8, 17, 17, 16), -1),
    "large_long_rows": ((2, 3, 9000), 1),
}
ENTRY = {"batch_norm_train": small_calls.train, "batch_norm_eval": small_calls.eval,
         "batch_norm_backward": small_calls.backward}


def entry_args(name, params, out=None):
    """The small-call entry's positional arguments (its signature, not the public one)."""
    p = params
    if name == "batch_norm_train":
        return (p["x"], p["weight"], p["bias"], p["axis"], p["eps"], p["running_mean"], p["running_var"],
                p["momentum"], out)
    if name == "batch_norm_eval":
        return p["x"], p["running_mean"], p["running_var"], p["weight"], p["bias"], p["axis"], p["eps"], out
    return p["dy"], p["x"], p["mean"], p["invstd"], p["weight"], p["axis"], out


def outputs(result, params):
    """Every array a call produced or updated in place."""
    arrays = list(result) if isinstance(result, tuple) else [result]
    return arrays + [params[k] for k in ("running_mean", "running_var") if params.get(k) is not None]


def assert_same_bits(a_list, b_list):
    assert len(a_list) == len(b_list)
    for i, (a, b) in enumerate(zip(a_list, b_list)):
        assert bitwise_equal(a, b), f"output {i} differs"


def checked_path_result(name, params):
    """The public call forced through the checked Python path: eps (or, for the backward, the axis) given as
    a NumPy scalar, which means the same but is not the plain form the small-call entries take."""
    params = copy_params(params)
    if name == "batch_norm_backward":
        params["axis"] = np.int64(params["axis"])
    else:
        params["eps"] = np.float64(params["eps"])
    assert ENTRY[name](*entry_args(name, copy_params(params), None)) is None
    return outputs(call(getattr(bnext, name), params), params)


@pytest.mark.parametrize("shape,axis", SMALL_SHAPES.values(), ids=SMALL_SHAPES.keys())
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_small_call_gives_the_bits_of_the_checked_path(name, shape, axis, dtype, rng):
    x = random_x(shape, axis, dtype, rng, offset=1e3)
    params = make_params(name, x, axis, rng)
    expected = checked_path_result(name, params)
    assert ENTRY[name](*entry_args(name, copy_params(params))) is not None  # the plain path is taken
    actual = outputs(call(getattr(bnext, name), params), params)
    assert_same_bits(actual, expected)


@pytest.mark.parametrize("shape,axis", LARGE_SHAPES.values(), ids=LARGE_SHAPES.keys())
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_large_call_is_forwarded_and_gives_the_bits_of_the_checked_path(name, shape, axis, dtype, n_threads, rng):
    x = random_x(shape, axis, dtype, rng, offset=1e3)
    params = make_params(name, x, axis, rng)
    expected = checked_path_result(name, params)  # (which asserts that the threaded build declines it)
    entry = getattr(large_calls, ENTRY[name].__name__)
    assert entry(*entry_args(name, copy_params(params))) is not None
    assert ENTRY[name](*entry_args(name, copy_params(params))) is not None  # forwarded there
    actual = outputs(call(getattr(bnext, name), params), params)
    assert_same_bits(actual, expected)


def test_threaded_build_runs_on_bnexts_thread_count(monkeypatch, rng):
    asked = []

    def spy():
        asked.append(True)
        return 2

    monkeypatch.setattr(large_calls, "get_num_threads", spy)
    x = random_x(LARGE_SHAPES["large_NCHW"][0], 1, np.float32, rng)
    assert bnext.batch_norm_train(x) is not None and asked
    asked.clear()
    bnext.batch_norm_train(x[:2])  # a small call: one thread, nothing asked
    assert not asked


PARAMETER_FORMS = ("none", "float32", "float64", "strided")


def parameter_form(value, form):
    if form == "none":
        return None
    if form == "strided":
        wide = np.zeros(2 * value.size, value.dtype)
        wide[::2] = value
        return wide[::2]
    return value.astype(form)


@pytest.mark.parametrize("form", PARAMETER_FORMS)
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_small_call_reads_every_parameter_form(name, form, dtype, rng):
    """weight/bias absent, of the other dtype or strided; running buffers of either dtype."""
    x = random_x((8, 3, 4), 1, dtype, rng, offset=-50.0)
    params = make_params(name, x, 1, rng)
    for key in ("weight", "bias"):
        if key in params:
            params[key] = parameter_form(params[key], form)
    if name != "batch_norm_backward" and form != "none":
        for key in ("running_mean", "running_var"):
            params[key] = parameter_form(params[key], form)
    expected = checked_path_result(name, params)
    assert ENTRY[name](*entry_args(name, copy_params(params))) is not None
    assert_same_bits(outputs(call(getattr(bnext, name), params), params), expected)


@pytest.mark.parametrize("kind", ("nan", "inf", "constant", "offset_1e6"))
def test_small_train_on_hostile_values_matches_the_checked_path(kind, dtype, rng):
    x = random_x((6, 4, 3), 1, dtype, rng)
    if kind == "nan":
        x[2, 1, 0] = np.nan
    elif kind == "inf":
        x[0, 2, 1] = np.inf
    elif kind == "constant":
        x[:, 3] = 7.25
    else:
        x = (x + 1e6).astype(dtype)
    params = make_params("batch_norm_train", x, 1, rng)
    expected = checked_path_result("batch_norm_train", params)
    assert_same_bits(outputs(call(bnext.batch_norm_train, params), params), expected)


def uncommon(name, kind, params):
    """params with one argument out of the common form (the call may still be valid, or not)."""
    p = copy_params(params)
    x = p["x"]
    if kind == "list_x":
        p["x"] = x.tolist()
    elif kind == "fortran_x":
        p["x"] = np.asfortranarray(x)
    elif kind == "byteswapped_x":
        p["x"] = x.astype(x.dtype.newbyteorder())
    elif kind == "float16_x":
        p["x"] = x.astype(np.float16)
    elif kind == "subclass_x":
        p["x"] = x.view(np.ma.MaskedArray)
    elif kind == "axis_out_of_range":
        p["axis"] = 3
    elif kind == "bool_axis":
        p["axis"] = True
    elif kind == "numpy_int_axis":
        p["axis"] = np.int64(1)
    elif kind == "huge_axis":
        p["axis"] = 2**70
    elif kind == "numpy_float_eps":
        p["eps"] = np.float64(1e-5)
    elif kind == "zero_eps":
        p["eps"] = 0.0
    elif kind == "nan_eps":
        p["eps"] = float("nan")
    elif kind == "short_weight":
        p["weight"] = p["weight"][:-1]
    elif kind == "2d_weight":
        p["weight"] = p["weight"].reshape(1, -1)
    elif kind == "list_weight":
        p["weight"] = p["weight"].tolist()
    return p


UNCOMMON = ("list_x", "fortran_x", "byteswapped_x", "float16_x", "subclass_x", "axis_out_of_range", "bool_axis",
            "numpy_int_axis", "huge_axis", "numpy_float_eps", "zero_eps", "nan_eps", "short_weight", "2d_weight", "list_weight")
ENTRY_KINDS = {
    "batch_norm_train": UNCOMMON + ("inf_momentum", "readonly_running_var", "one_value_per_channel"),
    "batch_norm_eval": UNCOMMON + ("short_running_mean",),
    "batch_norm_backward": tuple(k for k in UNCOMMON if "eps" not in k) + ("float64_dy", "fortran_dy"),
}


def uncommon_for(name, kind, params):
    p = uncommon(name, kind, params)
    if kind == "inf_momentum":
        p["momentum"] = float("inf")
    elif kind == "readonly_running_var":
        p["running_var"].flags.writeable = False
    elif kind == "one_value_per_channel":
        p["x"] = p["x"][:1, :, :1].copy()
    elif kind == "short_running_mean":
        p["running_mean"] = p["running_mean"][:-1]
    elif kind == "float64_dy":
        p["dy"] = p["dy"].astype(np.float64)
    elif kind == "fortran_dy":
        p["dy"] = np.asfortranarray(p["dy"])
    return p


@pytest.mark.parametrize("name,kind", [(n, k) for n, kinds in ENTRY_KINDS.items() for k in kinds])
def test_uncommon_arguments_are_declined(name, kind, rng):
    x = random_x((4, 3, 5), 1, np.float32, rng)
    params = uncommon_for(name, kind, make_params(name, x, 1, rng))
    if kind == "float64_dy":  # the dtypes must agree; float32 x with float64 dy is cast on the Python path
        assert params["dy"].dtype != params["x"].dtype
    before = copy_params(params)
    assert ENTRY[name](*entry_args(name, params)) is None
    for key, value in params.items():  # a declined call wrote nothing
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, before[key], equal_nan=True), key


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_small_calls_do_not_leak_references(name, rng):
    x = random_x((4, 3, 5), 1, np.float32, rng)
    params = make_params(name, x, 1, rng)
    call(getattr(bnext, name), params)
    gc.collect()
    counted = sorted(k for k, v in params.items() if isinstance(v, np.ndarray))
    before = [sys.getrefcount(params[k]) for k in counted]
    for _ in range(300):
        call(getattr(bnext, name), params)
    gc.collect()
    assert [sys.getrefcount(params[k]) for k in counted] == before


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_small_call_outputs_are_new_arrays_of_x_dtype(name, dtype, rng):
    x = random_x((4, 3, 5), 1, dtype, rng)
    params = make_params(name, x, 1, rng)
    result = call(getattr(bnext, name), params)
    for out in (result if isinstance(result, tuple) else (result,)):
        assert out.dtype == dtype and out.flags.c_contiguous and out.flags.writeable and out.flags.owndata
        assert not any(np.shares_memory(out, v) for v in params.values() if isinstance(v, np.ndarray))


# ----------------------------------------------------------------- layer and group norm forward

# name -> (shape, normalized_shape): rows of one value (batch_stats + column_affine) and longer ones (the
# fused row kernel, which takes rows of up to 4 KiB in groups and longer ones one at a time)
LAYER_CASES = {
    "rows_of_1": ((6, 1), 1),
    "rows_of_4": ((6, 4), 4),
    "rows_of_16": ((5, 16), (16,)),
    "rows_of_17": ((5, 17), 17),
    "rows_of_768": ((3, 768), 768),
    "two_dims": ((4, 3, 5), (3, 5)),
    "whole_array": ((3, 5), (3, 5)),
    "1d": ((40,), 40),
    "large_rows_of_400": ((100, 400), 400),  # forwarded to the threaded build
}
# name -> (shape, num_groups)
GROUP_CASES = {
    "2x4x1x1": ((2, 4, 1, 1), 2),
    "NC": ((5, 6), 3),
    "NCHW": ((2, 8, 4, 4), 4),
    "one_group": ((3, 4, 5), 1),
    "instance": ((3, 4, 5), 4),
    "large_NCHW": ((8, 16, 17, 17), 4),  # forwarded to the threaded build
}
FORMS = ("none", "float32", "float64")


def family_params(name, x, rng, case, form):
    """Keyword arguments of layer_norm / group_norm with weight and bias in `form` (or None)."""
    shape = (case,) if isinstance(case, int) else case
    param_shape = shape if name == "layer_norm" else (x.shape[1],)
    params = {"weight": None, "bias": None}
    if form != "none":
        params["weight"] = (1 + 0.1 * rng.standard_normal(param_shape)).astype(form)
        params["bias"] = (0.1 * rng.standard_normal(param_shape)).astype(form)
    return params


def family_call(name, x, case, params, **extra):
    function = getattr(bnext, name)
    return function(x, case, params["weight"], params["bias"], **extra)


FAMILY = [("layer_norm", k, v) for k, v in LAYER_CASES.items()] + [("group_norm", k, v) for k, v in GROUP_CASES.items()]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name,case_id,case", FAMILY, ids=[f"{n}-{k}" for n, k, _ in FAMILY])
def test_small_family_call_gives_the_bits_of_the_checked_path(name, case_id, case, form, dtype, rng):
    shape, arg = case
    x = random_x(shape, 0, dtype, rng, offset=300.0)
    params = family_params(name, x, rng, arg, form)
    entry = getattr(small_calls, name)
    assert entry(x, arg, params["weight"], params["bias"], 1e-5, None) is not None  # the plain path is taken
    assert entry(x, arg, params["weight"], params["bias"], np.float64(1e-5), None) is None
    expected = family_call(name, x, arg, params, eps=np.float64(1e-5))  # the checked path
    actual = family_call(name, x, arg, params)
    assert_same_bits(list(actual), list(expected))


FAMILY_UNCOMMON = {
    "layer_norm": {"list_shape": lambda p: {**p, "arg": list(p["arg"]) if isinstance(p["arg"], tuple) else [p["arg"]]},
                   "wrong_shape": lambda p: {**p, "arg": 7},
                   "numpy_int_shape": lambda p: {**p, "arg": np.int64(p["x"].shape[-1])},
                   "fortran_x": lambda p: {**p, "x": np.asfortranarray(p["x"])},
                   "short_weight": lambda p: {**p, "weight": p["weight"][:-1]},
                   "zero_eps": lambda p: {**p, "eps": 0.0}},
    "group_norm": {"indivisible": lambda p: {**p, "arg": 3},
                   "zero_groups": lambda p: {**p, "arg": 0},
                   "too_many_groups": lambda p: {**p, "arg": 8},
                   "numpy_int_groups": lambda p: {**p, "arg": np.int64(2)},
                   "1d_x": lambda p: {**p, "x": p["x"].ravel()},
                   "short_weight": lambda p: {**p, "weight": p["weight"][:-1]},
                   "float16_x": lambda p: {**p, "x": p["x"].astype(np.float16)}},
}
FAMILY_KINDS = [(n, k) for n, kinds in FAMILY_UNCOMMON.items() for k in kinds]


@pytest.mark.parametrize("name,kind", FAMILY_KINDS, ids=[f"{n}-{k}" for n, k in FAMILY_KINDS])
def test_uncommon_family_arguments_are_declined(name, kind, rng):
    x = random_x((4, 4, 3), 0, np.float32, rng)
    arg = (4, 3) if name == "layer_norm" else 2
    p = {"x": x, "arg": arg, "eps": 1e-5, **family_params(name, x, rng, arg, "float32")}
    if name == "layer_norm" and kind == "short_weight":
        p["weight"] = p["weight"].ravel()
    p = FAMILY_UNCOMMON[name][kind](p)
    assert getattr(small_calls, name)(p["x"], p["arg"], p["weight"], p["bias"], p["eps"], None) is None


LAYER_BACKWARD_CASES = {k: LAYER_CASES[k] for k in ("rows_of_4", "rows_of_17", "rows_of_768", "two_dims",
                                                     "whole_array", "1d", "large_rows_of_400")}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", LAYER_BACKWARD_CASES.values(), ids=LAYER_BACKWARD_CASES.keys())
def test_small_layer_norm_backward_gives_the_bits_of_the_checked_path(case, form, dtype, rng):
    shape, arg = case
    x = random_x(shape, 0, dtype, rng, offset=-40.0)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = family_params("layer_norm", x, rng, arg, form)["weight"]
    _, mean, invstd = bnext.layer_norm(x, arg)
    assert small_calls.layer_norm_backward(dy, x, mean, invstd, weight, arg, None) is not None
    as_list = list(arg) if isinstance(arg, tuple) else [arg]  # the same shape, not in the plain form
    assert small_calls.layer_norm_backward(dy, x, mean, invstd, weight, as_list, None) is None
    expected = bnext.layer_norm_backward(dy, x, mean, invstd, weight, normalized_shape=as_list)
    actual = bnext.layer_norm_backward(dy, x, mean, invstd, weight, normalized_shape=arg)
    assert_same_bits(list(actual), list(expected))


LAYER_BACKWARD_UNCOMMON = {
    "float64_dy": lambda p: {**p, "dy": p["dy"].astype(np.float64)},
    "fortran_dy": lambda p: {**p, "dy": np.asfortranarray(p["dy"])},
    "keepdim_mean": lambda p: {**p, "mean": p["mean"][..., None, None]},
    "short_invstd": lambda p: {**p, "invstd": p["invstd"][:-1]},
    "list_shape": lambda p: {**p, "arg": [4, 3]},
}


@pytest.mark.parametrize("kind", LAYER_BACKWARD_UNCOMMON)
def test_uncommon_layer_norm_backward_arguments_are_declined(kind, rng):
    x = random_x((4, 4, 3), 0, np.float32, rng)
    _, mean, invstd = bnext.layer_norm(x, (4, 3))
    p = {"dy": np.ones_like(x), "x": x, "mean": mean, "invstd": invstd, "weight": None, "arg": (4, 3)}
    p = LAYER_BACKWARD_UNCOMMON[kind](p)
    assert small_calls.layer_norm_backward(p["dy"], p["x"], p["mean"], p["invstd"], p["weight"], p["arg"],
                                           None) is None


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", GROUP_CASES.values(), ids=GROUP_CASES.keys())
def test_small_group_norm_backward_gives_the_bits_of_the_checked_path(case, form, dtype, rng):
    shape, groups = case
    x = random_x(shape, 0, dtype, rng, offset=25.0)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = family_params("group_norm", x, rng, groups, form)["weight"]
    _, mean, invstd = bnext.group_norm(x, groups)
    assert small_calls.group_norm_backward(dy, x, mean, invstd, weight, groups, True, None) is not None
    assert small_calls.group_norm_backward(dy, x, mean, invstd, weight, np.int64(groups), True, None) is None
    expected = bnext.group_norm_backward(dy, x, mean, invstd, weight, num_groups=np.int64(groups))
    actual = bnext.group_norm_backward(dy, x, mean, invstd, weight, num_groups=groups)
    assert_same_bits(list(actual), list(expected))


@pytest.mark.parametrize("use_input_stats", (True, False), ids=("batch_stats", "given_stats"))
def test_small_instance_norm_backward_gives_the_bits_of_the_checked_path(use_input_stats, dtype, rng):
    x = random_x((3, 4, 5, 2), 0, dtype, rng)
    dy = rng.standard_normal(x.shape).astype(dtype)
    weight = (1 + 0.1 * rng.standard_normal(4)).astype(dtype)
    _, mean, invstd = bnext.instance_norm(x)
    small = small_calls.group_norm_backward(dy, x, mean, invstd, weight, 4, use_input_stats, None)
    assert small_calls.group_norm_backward(dy, x, mean, invstd, weight.tolist(), 4, use_input_stats, None) is None
    expected = bnext.instance_norm_backward(dy, x, mean, invstd, weight.tolist(), use_input_stats=use_input_stats)
    actual = bnext.instance_norm_backward(dy, x, mean, invstd, weight, use_input_stats=use_input_stats)
    assert small is not None
    assert_same_bits(list(actual), list(expected))
    assert_same_bits(list(small), list(expected))


GROUP_BACKWARD_UNCOMMON = {
    "float64_dy": lambda p: {**p, "dy": p["dy"].astype(np.float64)},
    "indivisible": lambda p: {**p, "groups": 3},
    "numpy_int_groups": lambda p: {**p, "groups": np.int64(2)},
    "flat_mean": lambda p: {**p, "mean": p["mean"].ravel()},
    "short_weight": lambda p: {**p, "weight": np.ones(3, np.float32)},
    "1d_x": lambda p: {**p, "x": p["x"].ravel(), "dy": p["dy"].ravel()},
}


@pytest.mark.parametrize("kind", GROUP_BACKWARD_UNCOMMON)
def test_uncommon_group_norm_backward_arguments_are_declined(kind, rng):
    x = random_x((4, 4, 3), 0, np.float32, rng)
    _, mean, invstd = bnext.group_norm(x, 2)
    p = {"dy": np.ones_like(x), "x": x, "mean": mean, "invstd": invstd, "weight": None, "groups": 2}
    p = GROUP_BACKWARD_UNCOMMON[kind](p)
    assert small_calls.group_norm_backward(p["dy"], p["x"], p["mean"], p["invstd"], p["weight"], p["groups"],
                                           True, None) is None


# ----------------------------------------------------------------- out=

OUT_NAMES = KERNEL_NAMES + ("layer_norm", "group_norm", "layer_norm_backward", "group_norm_backward")


def out_case(name, rng, dtype):
    """(call, like, data): call(out) runs the public function `name` on fixed data; like is the array out
    takes the place of (x, or dy for a backward)."""
    x = random_x((5, 4, 6), 1, dtype, rng, offset=-7.0)
    dy = rng.standard_normal(x.shape).astype(dtype)
    if name in ENTRY:
        params = make_params(name, x, 1, rng)
        if name == "batch_norm_backward":
            params["dy"] = dy

        def call_with(out):
            p = copy_params(params)
            if out is not None:
                p["out"] = out
            return call(getattr(bnext, name), p)
        return call_with, (params["dy"] if name == "batch_norm_backward" else params["x"])
    weight = (1 + 0.1 * rng.standard_normal(4)).astype(dtype)
    if name == "layer_norm":
        return (lambda out: bnext.layer_norm(x.copy(), (4, 6), None, None, out=out)), x
    if name == "group_norm":
        return (lambda out: bnext.group_norm(x.copy(), 2, weight, None, out=out)), x
    if name == "layer_norm_backward":
        _, mean, invstd = bnext.layer_norm(x, 6)
        return (lambda out: bnext.layer_norm_backward(dy.copy(), x, mean, invstd, normalized_shape=6, out=out)), dy
    _, mean, invstd = bnext.group_norm(x, 2)
    return (lambda out: bnext.group_norm_backward(dy.copy(), x, mean, invstd, weight, num_groups=2, out=out)), dy


@pytest.mark.parametrize("name", OUT_NAMES)
def test_small_call_writes_a_given_out(name, dtype, rng):
    call_with, like = out_case(name, rng, dtype)
    expected = call_with(None)
    out = np.full_like(like, np.nan)
    actual = call_with(out)
    first = actual[0] if isinstance(actual, tuple) else actual
    assert first is out
    assert_same_bits(list(actual) if isinstance(actual, tuple) else [actual],
                     list(expected) if isinstance(expected, tuple) else [expected])


@pytest.mark.parametrize("kind", ("misaligned_overlap", "strided", "readonly"))
def test_small_entries_decline_outs_they_cannot_write_directly(kind, rng):
    base = random_x((4 * 3 * 5 + 1,), 0, np.float32, rng)
    x = base[:-1].reshape(4, 3, 5)
    params = make_params("batch_norm_eval", x, 1, rng)
    if kind == "misaligned_overlap":
        out = base[1:].reshape(4, 3, 5)  # shares all but one value with x, shifted by one
    elif kind == "strided":
        out = np.empty((4, 3, 10), np.float32)[:, :, ::2]
    else:
        out = np.empty_like(x)
        out.flags.writeable = False
    assert small_calls.eval(*entry_args("batch_norm_eval", params, out)) is None
    if kind == "readonly":
        with pytest.raises(ValueError, match="read-only"):
            bnext.batch_norm_eval(x, params["running_mean"], params["running_var"], out=out)
        return
    expected = bnext.batch_norm_eval(x.copy(), params["running_mean"], params["running_var"],
                                     params["weight"], params["bias"])
    result = bnext.batch_norm_eval(x, params["running_mean"], params["running_var"], params["weight"],
                                   params["bias"], out=out)  # the checked path, through a scratch array
    assert result is out
    assert_same_bits([np.ascontiguousarray(result)], [expected])


@pytest.mark.parametrize("target", ("dy", "x"))
@pytest.mark.parametrize("name", ("batch_norm_backward", "layer_norm_backward", "group_norm_backward"))
def test_small_backward_in_place(name, target, dtype, rng):
    """dx may be written over dy or x itself, as on the checked path."""
    x = random_x((5, 4, 6), 1, dtype, rng, offset=3.0)
    dy = rng.standard_normal(x.shape).astype(dtype)
    calls = {
        "batch_norm_backward": lambda g, a, out: bnext.batch_norm_backward(g, a, *bnext.batch_norm_train(x)[1:],
                                                                           out=out),
        "layer_norm_backward": lambda g, a, out: bnext.layer_norm_backward(g, a, *bnext.layer_norm(x, 6)[1:],
                                                                           normalized_shape=6, out=out),
        "group_norm_backward": lambda g, a, out: bnext.group_norm_backward(g, a, *bnext.group_norm(x, 2)[1:],
                                                                           num_groups=2, out=out),
    }
    expected = calls[name](dy.copy(), x.copy(), None)
    g, a = dy.copy(), x.copy()
    out = g if target == "dy" else a
    actual = calls[name](g, a, out)
    assert actual[0] is out
    assert_same_bits(list(actual), list(expected))


@pytest.mark.parametrize("name", ("batch_norm_train", "batch_norm_eval", "layer_norm", "group_norm"))
def test_small_forward_in_place(name, dtype, rng):
    x = random_x((5, 4, 6), 1, dtype, rng, offset=3.0)
    calls = {
        "batch_norm_train": lambda a, out: bnext.batch_norm_train(a, out=out),
        "batch_norm_eval": lambda a, out: bnext.batch_norm_eval(a, np.zeros(4), np.ones(4), out=out),
        "layer_norm": lambda a, out: bnext.layer_norm(a, 6, out=out),
        "group_norm": lambda a, out: bnext.group_norm(a, 2, out=out),
    }
    expected = calls[name](x.copy(), None)
    inplace = x.copy()
    actual = calls[name](inplace, inplace)
    first = actual[0] if isinstance(actual, tuple) else actual
    assert first is inplace
    assert_same_bits(list(actual) if isinstance(actual, tuple) else [actual],
                     list(expected) if isinstance(expected, tuple) else [expected])


# ----------------------------------------------------------------- instance norm forward

@pytest.mark.parametrize("running", ("none", "float32", "float64"))
@pytest.mark.parametrize("shape", ((2, 4, 3, 3), (5, 3, 7), (1, 2, 2), (8, 16, 17, 17)),
                         ids=("NCHW", "NCL", "two_values", "large_NCHW"))
def test_small_instance_norm_gives_the_bits_of_the_checked_path(shape, running, dtype, rng):
    x = random_x(shape, 1, dtype, rng, offset=60.0)
    weight = (1 + 0.1 * rng.standard_normal(shape[1])).astype(dtype)
    buffers = {}
    if running != "none":
        buffers = {"running_mean": rng.standard_normal(shape[1]).astype(running),
                   "running_var": rng.uniform(0.5, 2, shape[1]).astype(running)}
    checked_buffers = copy_params(buffers)
    assert small_calls.instance_norm(x, weight, None, 1e-5, *(copy_params(buffers).get(k) for k in
                                                               ("running_mean", "running_var")), 0.1, True,
                                     None) is not None
    expected = bnext.instance_norm(x, weight, eps=np.float64(1e-5), **checked_buffers)  # the checked path
    actual = bnext.instance_norm(x, weight, **buffers)
    assert_same_bits(list(actual) + list(buffers.values()), list(expected) + list(checked_buffers.values()))


@pytest.mark.parametrize("running", ("float32", "float64"))
@pytest.mark.parametrize("shape", ((2, 4, 3, 3), (5, 3, 7), (3, 2, 1), (8, 16, 17, 17)),
                         ids=("NCHW", "NCL", "one_spatial_value", "large_NCHW"))
def test_small_instance_norm_with_running_stats_gives_the_bits_of_the_checked_path(shape, running, dtype, rng):
    x = random_x(shape, 1, dtype, rng, offset=60.0)
    weight = (1 + 0.1 * rng.standard_normal(shape[1])).astype(dtype)
    bias = rng.standard_normal(shape[1]).astype(dtype)
    buffers = {"running_mean": rng.standard_normal(shape[1]).astype(running),
               "running_var": rng.uniform(0.5, 2, shape[1]).astype(running)}
    saved = copy_params(buffers)
    assert small_calls.instance_norm(x, weight, bias, 1e-5, buffers["running_mean"], buffers["running_var"], 0.1,
                                     False, None) is not None
    expected = bnext.instance_norm(x, weight, bias, eps=np.float64(1e-5), use_input_stats=False, **buffers)
    actual = bnext.instance_norm(x, weight, bias, use_input_stats=False, **buffers)
    assert_same_bits(list(actual) + list(buffers.values()), list(expected) + list(saved.values()))


INSTANCE_UNCOMMON = {
    "given_stats_without_buffers": lambda p: {**p, "use_input_stats": False},
    "given_stats_without_running_var": lambda p: {**p, "use_input_stats": False,
                                                  "running_mean": np.zeros(3, np.float32)},
    "truthy_int_flag": lambda p: {**p, "use_input_stats": 1},
    "one_spatial_value": lambda p: {**p, "x": p["x"][:, :, :1].copy()},
    "readonly_running": lambda p: {**p, "running_mean": np.zeros(3, np.float32)[::1].view()},
    "short_bias": lambda p: {**p, "bias": np.zeros(2, np.float32)},
    "inf_momentum": lambda p: {**p, "momentum": float("inf")},
}


@pytest.mark.parametrize("kind", INSTANCE_UNCOMMON)
def test_uncommon_instance_norm_arguments_are_declined(kind, rng):
    p = {"x": random_x((4, 3, 5), 1, np.float32, rng), "weight": None, "bias": None, "eps": 1e-5,
         "running_mean": None, "running_var": None, "momentum": 0.1, "use_input_stats": True}
    p = INSTANCE_UNCOMMON[kind](p)
    if kind == "readonly_running":
        p["running_mean"].flags.writeable = False
    assert small_calls.instance_norm(p["x"], p["weight"], p["bias"], p["eps"], p["running_mean"],
                                     p["running_var"], p["momentum"], p["use_input_stats"], None) is None
