"""Hostile numerics: float32 results within float32 tolerance of the float64 reference
computed from the same float32 data; NaN/Inf confined to their channel."""

import numpy as np
import pytest

from bn_helpers import (
    HOSTILE_KINDS, IMPLEMENTATIONS, KERNEL_NAMES, as_tuple, assert_results_close, assert_running_close,
    bitwise_equal, call,
    copy_params, fast_and_reference, hostile_data, implementation, make_params,
)


@pytest.mark.parametrize("name", KERNEL_NAMES)
@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_float32_matches_float64_reference(kind, name, rng):
    x, axis = hostile_data(kind, np.float32, rng)
    params = make_params(name, x, axis, rng)
    # Running buffers are checked below (some of these variances overflow float32).
    if name == "batch_norm_train":
        del params["running_mean"], params["running_var"]
    fast, ref = fast_and_reference(name)
    actual = as_tuple(call(fast, params))
    expected = as_tuple(call(ref, copy_params(params)))
    assert_results_close(name, actual, expected, params, what=kind)


@pytest.mark.parametrize("kind", [k for k in HOSTILE_KINDS if k not in ("huge_1e30", "mixed_scales")])
def test_hostile_float32_running_statistics(kind, rng):
    x, axis = hostile_data(kind, np.float32, rng)
    params = make_params("batch_norm_train", x, axis, rng)
    old = copy_params(params)
    ref_params = copy_params(params)
    fast, ref = fast_and_reference("batch_norm_train")
    call(fast, params)
    call(ref, ref_params)
    assert_running_close(params, ref_params, old, what=kind)


def test_running_var_overflowing_float32_becomes_inf_silently(rng):
    """Data near 1e30 has a variance near 1e60: a float32 running_var can only hold inf.

    That is the honest answer; it must come without a warning (and y/mean/invstd stay exact).
    """
    x = (1e30 * rng.standard_normal((32, 3))).astype(np.float32)
    running_mean = np.zeros(3, np.float32)
    running_var = np.ones(3, np.float32)
    fast, ref = fast_and_reference("batch_norm_train")
    fast(x, running_mean=running_mean, running_var=running_var)
    assert np.all(np.isinf(running_var))
    expected_mean = ref(x)[1].astype(np.float64) * 0.1
    np.testing.assert_allclose(running_mean, expected_mean, rtol=1e-6)


@pytest.mark.parametrize("offset", [1e4, 1e6], ids=["offset1e4", "offset1e6"])
def test_eval_at_large_offset_keeps_small_differences(offset, rng):
    """Eval with running_mean near the data: y = (x - mean) * invstd must not cancel."""
    x = (offset + 1e-1 * rng.standard_normal((256, 3))).astype(np.float32)
    mean = x.astype(np.float64).mean(axis=0).astype(np.float32)
    var = x.astype(np.float64).var(axis=0).astype(np.float32)
    fast, ref = fast_and_reference("batch_norm_eval")
    y = fast(x, mean, var, eps=1e-12)
    expected = ref(x, mean, var, eps=1e-12)
    # In normalized units (y is O(1) here) float32 allows ~1e-5.
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_more_than_2_24_values_per_channel(rng):
    """float32 counters or sums would stall past 2**24; the statistics must not."""
    n = 2 ** 24 + 3
    x = (1e3 + rng.random((n, 1), dtype=np.float32)).astype(np.float32)
    params = dict(x=x, weight=np.array([1.5], np.float32), bias=np.array([-2.0], np.float32),
                  running_mean=np.zeros(1, np.float32), running_var=np.ones(1, np.float32))
    fast, ref = fast_and_reference("batch_norm_train")
    ref_params = copy_params(params)
    actual = fast(**params)
    expected = ref(**ref_params)
    assert_results_close("batch_norm_train", actual, expected, params, what="2**24+3")
    np.testing.assert_allclose(params["running_mean"], ref_params["running_mean"], rtol=1e-6)
    np.testing.assert_allclose(params["running_var"], ref_params["running_var"], rtol=1e-5)
    # Uniform [0, 1) around 1e3: mean ~1000.5, var ~1/12.
    assert abs(float(actual[1][0]) - 1000.5) < 1e-3
    np.testing.assert_allclose(1 / float(actual[2][0]) ** 2, 1 / 12 + 1e-5, rtol=1e-2)


def test_backward_more_than_2_24_values_per_channel(rng):
    n = 2 ** 24 + 3
    x = rng.random((n, 1), dtype=np.float32)
    dy = (0.5 + rng.random((n, 1), dtype=np.float32)).astype(np.float32)
    _, mean, invstd = implementation("reference", "batch_norm_train")(x)
    params = dict(dy=dy, x=x, mean=mean, invstd=invstd)
    fast, ref = fast_and_reference("batch_norm_backward")
    assert_results_close("batch_norm_backward", fast(**params), ref(**params), params, what="2**24+3")


BAD_VALUES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def poison(x, value, channel=1):
    """A copy of x (N, C, L) with one entry of `channel` set to `value`."""
    bad = x.copy()
    bad[2, channel, 1] = value
    return bad


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad", BAD_VALUES)
def test_nonfinite_in_one_channel_train(bad, impl, dtype, rng):
    x = rng.standard_normal((6, 4, 5)).astype(dtype)
    weight = rng.uniform(0.5, 2, 4).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    train = implementation(impl, "batch_norm_train")
    clean_buffers = [np.zeros(4, dtype), np.ones(4, dtype)]
    dirty_buffers = [np.zeros(4, dtype), np.ones(4, dtype)]
    clean = train(x, weight, bias, running_mean=clean_buffers[0], running_var=clean_buffers[1])
    dirty = train(poison(x, BAD_VALUES[bad]), weight, bias,
                  running_mean=dirty_buffers[0], running_var=dirty_buffers[1])
    y, mean, invstd = dirty
    assert np.all(np.isnan(y[:, 1])), "the poisoned channel must be all NaN"
    assert np.isnan(invstd[1])
    assert not np.isfinite(mean[1])
    assert np.isnan(dirty_buffers[1][1])
    others = [0, 2, 3]
    for got, want in zip(dirty, clean):
        assert bitwise_equal(np.take(got, others, axis=-1 if got.ndim == 1 else 1),
                             np.take(want, others, axis=-1 if want.ndim == 1 else 1))
    for got, want in zip(dirty_buffers, clean_buffers):
        assert bitwise_equal(got[others], want[others])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad", BAD_VALUES)
def test_nonfinite_in_eval_touches_only_that_element(bad, impl, dtype, rng):
    x = rng.standard_normal((6, 4, 5)).astype(dtype)
    stats = (rng.standard_normal(4).astype(dtype), rng.uniform(0.5, 2, 4).astype(dtype))
    evaluate = implementation(impl, "batch_norm_eval")
    clean = evaluate(x, *stats)
    dirty = evaluate(poison(x, BAD_VALUES[bad]), *stats)
    assert not np.isfinite(dirty[2, 1, 1])
    if bad == "nan":
        assert np.isnan(dirty[2, 1, 1])
    mask = np.ones(x.shape, bool)
    mask[2, 1, 1] = False
    assert bitwise_equal(dirty[mask], clean[mask])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad", BAD_VALUES)
def test_nonfinite_in_one_channel_backward(bad, impl, dtype, rng):
    x = rng.standard_normal((6, 4, 5)).astype(dtype)
    _, mean, invstd = implementation("reference", "batch_norm_train")(x)
    dy = rng.standard_normal(x.shape).astype(dtype)
    weight = rng.uniform(0.5, 2, 4).astype(dtype)
    backward = implementation(impl, "batch_norm_backward")
    clean = backward(dy, x, mean, invstd, weight)
    dirty = backward(poison(dy, BAD_VALUES[bad]), x, mean, invstd, weight)
    dx, dweight, dbias = dirty
    # NaN in dy makes the channel NaN; +-inf makes it non-finite (inf or NaN).
    assert np.all(np.isnan(dx[:, 1])) if bad == "nan" else not np.any(np.isfinite(dx[:, 1]))
    assert not np.isfinite(dbias[1]) and not np.isfinite(dweight[1])
    others = [0, 2, 3]
    assert bitwise_equal(dx[:, others], clean[0][:, others])
    assert bitwise_equal(dweight[others], clean[1][others])
    assert bitwise_equal(dbias[others], clean[2][others])


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_nonfinite_channels_last(bad, rng):
    """Channels-last data takes a different kernel path; the poison must stay in its channel."""
    x = rng.standard_normal((64, 9)).astype(np.float32)
    clean = implementation("bnext", "batch_norm_train")(x, axis=-1)
    bad_x = x.copy()
    bad_x[10, 4] = BAD_VALUES[bad]
    dirty = implementation("bnext", "batch_norm_train")(bad_x, axis=-1)
    assert np.all(np.isnan(dirty[0][:, 4]))
    others = [c for c in range(9) if c != 4]
    assert bitwise_equal(dirty[0][:, others], clean[0][:, others])
    assert bitwise_equal(dirty[2][others], clean[2][others])
