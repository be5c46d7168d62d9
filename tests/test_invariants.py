"""Invariants: inputs unchanged, `out` returned as itself, in-place calls, empty inputs, no leaks."""

import gc
import sys
import tracemalloc

import numpy as np
import pytest

from bn_helpers import (
    KERNEL_NAMES, as_tuple, assert_results_close, call, copy_params, fast_and_reference, make_layout,
    make_params, random_x,
)

OUT_OF = {"batch_norm_train": "x", "batch_norm_eval": "x", "batch_norm_backward": "dy"}


@pytest.mark.parametrize("contiguity", ["C", "F", "negstride", "strided", "channels_innermost"])
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_inputs_are_not_modified(name, contiguity, dtype, rng):
    x = make_layout(random_x((5, 3, 4), 1, dtype, rng), contiguity)
    params = make_params(name, x, 1, rng)
    before = copy_params(params)
    call(fast_and_reference(name)[0], params)
    for key, value in params.items():
        if isinstance(value, np.ndarray) and key not in ("running_mean", "running_var"):
            np.testing.assert_array_equal(value, before[key], err_msg=key)


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_outputs_are_new_arrays_of_the_input_dtype(name, dtype, rng):
    x = random_x((5, 3, 4), 1, dtype, rng)
    params = make_params(name, x, 1, rng)
    results = as_tuple(call(fast_and_reference(name)[0], params))
    assert results[0].shape == x.shape
    for result in results:
        assert isinstance(result, np.ndarray)
        assert result.dtype == dtype
        for value in params.values():
            if isinstance(value, np.ndarray):
                assert not np.shares_memory(result, value)
    for result in results[1:]:
        assert result.shape == (3,)


@pytest.mark.parametrize("out_layout", ["C", "F", "negstride", "strided", "channels_innermost"])
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_out_is_returned_and_filled(name, out_layout, dtype, rng):
    x = random_x((5, 3, 4), 1, dtype, rng)
    params = make_params(name, x, 1, rng)
    expected = as_tuple(call(fast_and_reference(name)[1], copy_params(params)))
    out = make_layout(np.full(x.shape, np.nan, dtype), out_layout)
    params["out"] = out
    results = as_tuple(call(fast_and_reference(name)[0], params))
    assert results[0] is out
    assert_results_close(name, results, expected, params)


@pytest.mark.parametrize("contiguity", ["C", "F", "negstride", "strided", "channels_innermost"])
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_in_place(name, contiguity, dtype, rng):
    """out may be the input itself (x, or dy for backward): statistics are complete before writing."""
    x = make_layout(random_x((6, 3, 5), 1, dtype, rng), contiguity)
    params = make_params(name, x, 1, rng)
    params["dy"] = make_layout(params["dy"], contiguity) if "dy" in params else None
    params = {k: v for k, v in params.items() if v is not None}
    expected = as_tuple(call(fast_and_reference(name)[1], copy_params(params)))
    reference_params = copy_params(params)
    target = params[OUT_OF[name]]
    params["out"] = target
    results = as_tuple(call(fast_and_reference(name)[0], params))
    assert results[0] is target
    assert_results_close(name, results, expected, reference_params)


@pytest.mark.parametrize("layout", ["channels_last", "batch_axis_0"])
def test_in_place_other_axes(layout, rng):
    x, axis = (random_x((4, 5, 6), -1, np.float32, rng), -1) if layout == "channels_last" else \
        (random_x((6, 5, 4), 0, np.float32, rng), 0)
    fast, ref = fast_and_reference("batch_norm_train")
    expected = ref(x.copy(), axis=axis)
    results = fast(x, axis=axis, out=x)
    assert results[0] is x
    assert_results_close("batch_norm_train", results, expected, dict(x=expected[0], axis=axis))


def test_array_likes_are_accepted(rng):
    """Nested lists of floats are array-likes (float64), like for any NumPy function."""
    x = rng.standard_normal((4, 2))
    fast, _ = fast_and_reference("batch_norm_train")
    y_list, mean, invstd = fast(x.tolist(), [1.0, 2.0], [0.0, 1.0])
    y_array, _, _ = fast(x, np.array([1.0, 2.0]), np.array([0.0, 1.0]))
    np.testing.assert_array_equal(y_list, y_array)
    assert y_list.dtype == np.float64


@pytest.mark.parametrize("shape, axis", [((0, 3), 1), ((4, 3, 0), 1), ((0, 5, 5, 3), -1), ((2, 0, 3), 1)],
                         ids=["N0", "L0", "NHWC-N0", "NCL-L0xC0"])
def test_empty_batch(shape, axis, dtype):
    x = np.zeros(shape, dtype)
    n_channels = shape[axis]
    running_mean = np.full(n_channels, 0.5, dtype)
    running_var = np.full(n_channels, 2.0, dtype)
    train, evaluate, backward = (fast_and_reference(name)[0] for name in KERNEL_NAMES)
    y, mean, invstd = train(x, axis=axis, running_mean=running_mean, running_var=running_var)
    assert y.shape == shape and y.dtype == dtype
    assert mean.shape == (n_channels,) and invstd.shape == (n_channels,)
    assert mean.dtype == dtype and invstd.dtype == dtype
    assert np.all(running_mean == 0.5) and np.all(running_var == 2.0), "an empty batch must not move them"
    y = evaluate(x, running_mean, running_var, axis=axis)
    assert y.shape == shape and y.dtype == dtype
    dx, dweight, dbias = backward(x, x, np.zeros(n_channels, dtype), np.ones(n_channels, dtype), axis=axis)
    assert dx.shape == shape and dx.dtype == dtype
    assert dweight.shape == (n_channels,) and dbias.shape == (n_channels,)
    assert np.all(dweight == 0) and np.all(dbias == 0)


@pytest.mark.parametrize("shape", [(4, 0), (4, 0, 5), (1, 0)], ids=["4x0", "4x0x5", "1x0"])
def test_zero_channels(shape, dtype):
    x = np.zeros(shape, dtype)
    train, evaluate, backward = (fast_and_reference(name)[0] for name in KERNEL_NAMES)
    y, mean, invstd = train(x, np.ones(0, dtype), np.zeros(0, dtype))
    assert y.shape == shape and mean.shape == (0,) and invstd.shape == (0,)
    assert evaluate(x, np.zeros(0, dtype), np.ones(0, dtype)).shape == shape
    dx, dweight, dbias = backward(x, x, np.zeros(0, dtype), np.ones(0, dtype))
    assert dx.shape == shape and dweight.shape == (0,) and dbias.shape == (0,)


def test_empty_batch_in_place():
    x = np.zeros((0, 3), np.float32)
    y, _, _ = fast_and_reference("batch_norm_train")[0](x, out=x)
    assert y is x


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_no_reference_leaks(name, rng):
    """Many calls (with out and running buffers) leave every argument's refcount unchanged."""
    x = random_x((4, 3, 5), 1, np.float32, rng)
    params = make_params(name, x, 1, rng)
    params["out"] = np.empty_like(x)
    fast = fast_and_reference(name)[0]
    call(fast, params)
    gc.collect()
    before = refcounts(params)
    for _ in range(300):
        call(fast, params)
    gc.collect()
    assert refcounts(params) == before


def refcounts(params):
    return {k: sys.getrefcount(params[k]) for k in sorted(params) if isinstance(params[k], np.ndarray)}


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_no_memory_growth(name, rng):
    x = random_x((8, 4, 16), 1, np.float64, rng)
    params = make_params(name, x, 1, rng)
    fast = fast_and_reference(name)[0]
    for _ in range(20):
        call(fast, params)
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(100):
            call(fast, params)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One call allocates ~ x.nbytes (y) that is freed again; 100 leaked outputs would be 100 x that.
    assert end - start < x.nbytes


def test_errors_do_not_leak(rng):
    x = random_x((4, 3), 1, np.float32, rng)
    weight = np.ones(5, np.float32)
    fast = fast_and_reference("batch_norm_train")[0]
    gc.collect()
    before = sys.getrefcount(x), sys.getrefcount(weight)
    for _ in range(200):
        with pytest.raises(ValueError):
            fast(x, weight)
    gc.collect()
    assert (sys.getrefcount(x), sys.getrefcount(weight)) == before


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_channels_innermost_output_keeps_the_memory_format(name, dtype, rng):
    """Like torch's channels_last: an NCHW array stored NHWC gives an output stored NHWC (new or out=)."""
    x = make_layout(random_x((4, 6, 3, 5), 1, dtype, rng), "channels_innermost")
    params = make_params(name, x, 1, rng)
    if "dy" in params:
        params["dy"] = make_layout(params["dy"], "channels_innermost")
    expected = as_tuple(call(fast_and_reference(name)[1], copy_params(params)))
    fast_params = copy_params(params)  # (copies are C-ordered: keep the inputs themselves)
    fast_params.update({key: params[key] for key in ("x", "dy") if key in params})
    results = as_tuple(call(fast_and_reference(name)[0], fast_params))
    assert np.moveaxis(results[0], 1, -1).flags.c_contiguous
    assert_results_close(name, results, expected, params)
    params["out"] = np.full(x.shape, np.nan, dtype)  # a C-ordered out= is filled all the same
    results = as_tuple(call(fast_and_reference(name)[0], params))
    assert results[0] is params["out"]
    assert_results_close(name, results, expected, params)
