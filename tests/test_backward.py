"""Backward: finite differences in float64 and the identities sum(dx) = 0, sum(dx * x_hat) = 0."""

import numpy as np
import pytest

from bn_helpers import IMPLEMENTATIONS, RTOL, assert_within, implementation, make_layout, random_x

SHAPES = {"NC": ((5, 3), 1), "NCL": ((3, 2, 4), 1), "NLC": ((3, 4, 2), -1), "axis0": ((2, 3, 2), 0)}


def loss(x, weight, bias, g, axis, eps):
    """L = sum(g * y): its gradient with respect to y is g."""
    y, _, _ = implementation("reference", "batch_norm_train")(x, weight, bias, axis=axis, eps=eps)
    return float(np.sum(g * y))


def central_difference(f, value, h=1e-6):
    """Gradient of f at `value` (modified in place and restored) by central differences."""
    grad = np.zeros_like(value)
    for index in np.ndindex(value.shape):
        saved = value[index]
        value[index] = saved + h
        up = f()
        value[index] = saved - h
        down = f()
        value[index] = saved
        grad[index] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("layout", SHAPES)
def test_gradients_match_finite_differences(layout, impl, rng):
    shape, axis = SHAPES[layout]
    eps = 1e-3
    x = random_x(shape, axis, np.float64, rng)
    n_channels = shape[axis]
    weight = rng.uniform(0.5, 2, n_channels)
    bias = rng.standard_normal(n_channels)
    g = rng.standard_normal(shape)

    _, mean, invstd = implementation(impl, "batch_norm_train")(x, weight, bias, axis=axis, eps=eps)
    dx, dweight, dbias = implementation(impl, "batch_norm_backward")(g, x, mean, invstd, weight, axis=axis)

    def f():
        return loss(x, weight, bias, g, axis, eps)

    for name, value, analytic in (("dx", x, dx), ("dweight", weight, dweight), ("dbias", bias, dbias)):
        numeric = central_difference(f, value)
        assert_within(analytic, numeric, 1e-6 * (1 + np.abs(numeric).max()), what=name)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("contiguity", ["C", "F", "negstride"])
@pytest.mark.parametrize("layout", SHAPES)
def test_dx_sums_vanish_per_channel(layout, contiguity, impl, dtype, rng):
    """dx is orthogonal to constants and to x_hat, per channel (y is invariant to shifting/scaling x).

    The second identity is exact only as eps -> 0 (it is off by m * eps / (var + eps)), so eps is tiny.
    """
    shape, axis = SHAPES[layout]
    x = make_layout(random_x(shape, axis, dtype, rng), contiguity)
    dy = make_layout(rng.standard_normal(shape).astype(dtype), contiguity)
    weight = rng.uniform(0.5, 2, shape[axis]).astype(dtype)
    _, mean, invstd = implementation(impl, "batch_norm_train")(x, axis=axis, eps=1e-14)
    dx, _, _ = implementation(impl, "batch_norm_backward")(dy, x, mean, invstd, weight, axis=axis)

    reduce_axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    param_shape = [1] * x.ndim
    param_shape[axis] = shape[axis]
    x_hat = (x.astype(np.float64) - mean.astype(np.float64).reshape(param_shape)) * \
        invstd.astype(np.float64).reshape(param_shape)
    dx64 = dx.astype(np.float64)
    scale = np.abs(dx64).sum(axis=reduce_axes) * (1 + np.abs(x_hat).max())
    assert_within(dx64.sum(axis=reduce_axes), 0, 10 * RTOL[dtype] * scale, what="sum(dx)")
    assert_within((dx64 * x_hat).sum(axis=reduce_axes), 0, 10 * RTOL[dtype] * scale, what="sum(dx * x_hat)")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_weight_none_means_one(impl, dtype, rng):
    x = random_x((6, 3, 2), 1, dtype, rng)
    dy = rng.standard_normal(x.shape).astype(dtype)
    _, mean, invstd = implementation("reference", "batch_norm_train")(x)
    backward = implementation(impl, "batch_norm_backward")
    without = backward(dy, x, mean, invstd)
    with_ones = backward(dy, x, mean, invstd, np.ones(3, dtype))
    for a, b in zip(without, with_ones):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_dx_is_linear_in_weight(impl, rng):
    """dweight and dbias do not depend on weight; dx scales with it."""
    x = random_x((6, 3, 2), 1, np.float64, rng)
    dy = rng.standard_normal(x.shape)
    _, mean, invstd = implementation("reference", "batch_norm_train")(x)
    backward = implementation(impl, "batch_norm_backward")
    dx1, dw1, db1 = backward(dy, x, mean, invstd, np.ones(3))
    dx3, dw3, db3 = backward(dy, x, mean, invstd, np.array([3.0, -2.0, 0.5]))
    np.testing.assert_allclose(dx3, dx1 * np.array([3.0, -2.0, 0.5]).reshape(1, 3, 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dw3, dw1, rtol=1e-14)
    np.testing.assert_allclose(db3, db1, rtol=1e-14)
