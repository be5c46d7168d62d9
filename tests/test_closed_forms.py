"""Results known in closed form: the seed documents' worked examples, n = 2, constants, dyadic data.

Each test runs on both implementations (bnext and bnext.reference), so the
reference is itself checked against hand-derived values.
"""

import numpy as np
import pytest

from bn_helpers import RTOL, all_of, assert_within, implementation, make_layout

IMPLS = pytest.mark.parametrize("impl", ["bnext", "reference"])


def column(values, dtype):
    """Values as one channel of an (N, 1) batch."""
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


# The seed examples: (x, weight, bias, the x_hat and y quoted in the seed).
# The seeds round x_hat to 2 (h1, h2) or 3 decimals, so they are checked to that
# precision; the exact closed form (x - mean) / sqrt(var + eps) is checked to RTOL.
SEED_EXAMPLES = {
    "h1": ([50, 52, 54, 56], 5.0, 10.0, [-1.34, -0.45, 0.45, 1.34], [3.3, 7.75, 12.25, 16.7], 0.02),
    "h2": ([2, 4, 6, 8], 2.0, 3.0, [-1.34, -0.45, 0.45, 1.34], [0.32, 2.1, 3.9, 5.68], 0.01),
    # Seed 002 misprints the outer values (-1.118/1.118 and -1.236/3.236); these are the correct ones.
    "x1234": ([1, 2, 3, 4], 2.0, 1.0, [-1.342, -0.447, 0.447, 1.342], [-1.683, 0.106, 1.894, 3.683], 1e-3),
}


@IMPLS
@pytest.mark.parametrize("example", SEED_EXAMPLES)
def test_seed_worked_example(example, impl, dtype):
    values, weight, bias, quoted_x_hat, quoted_y, quoted_precision = SEED_EXAMPLES[example]
    train = implementation(impl, "batch_norm_train")
    x = column(values, dtype)
    y, mean, invstd = train(x, np.array([weight], dtype), np.array([bias], dtype))
    x_hat, _, _ = train(x)

    values = np.asarray(values, dtype=np.float64)
    exact_mean = values.mean()
    exact_var = ((values - exact_mean) ** 2).mean()
    exact_x_hat = (values - exact_mean) / np.sqrt(exact_var + 1e-5)
    rtol = RTOL[dtype]
    np.testing.assert_allclose(mean, [exact_mean], rtol=rtol)
    np.testing.assert_allclose(invstd, [1 / np.sqrt(exact_var + 1e-5)], rtol=rtol)
    assert_within(x_hat.ravel(), exact_x_hat, rtol * 2)
    assert_within(y.ravel(), weight * exact_x_hat + bias, rtol * 20)
    assert_within(x_hat.ravel(), quoted_x_hat, quoted_precision / 2 + 0.005)
    assert_within(y.ravel(), quoted_y, quoted_precision)


def test_seed_002_misprint_is_not_reproduced(dtype):
    """The misprinted outer values of seed 002 are wrong; bnext must not agree with them."""
    y, _, _ = implementation("bnext", "batch_norm_train")(
        column([1, 2, 3, 4], dtype), np.array([2.0], dtype), np.array([1.0], dtype))
    assert abs(y[0, 0] - (-1.236)) > 0.4
    assert abs(y[3, 0] - 3.236) > 0.4


@IMPLS
def test_two_values_per_channel(impl, dtype, rng):
    """m = 2: mean = c, var = d**2, x_hat = -+d / sqrt(d**2 + eps)."""
    n_channels = 7
    centre = rng.uniform(-5, 5, n_channels)
    half_gap = rng.uniform(0.01, 3, n_channels)
    x = np.stack([centre - half_gap, centre + half_gap]).astype(dtype)
    weight = rng.uniform(0.5, 2, n_channels).astype(dtype)
    bias = rng.standard_normal(n_channels).astype(dtype)
    running_mean = np.zeros(n_channels, dtype)
    running_var = np.ones(n_channels, dtype)

    y, mean, invstd = implementation(impl, "batch_norm_train")(
        x, weight, bias, eps=1e-5, running_mean=running_mean, running_var=running_var, momentum=0.25)

    # Closed forms from the float values actually stored.
    x64 = x.astype(np.float64)
    c = (x64[0] + x64[1]) / 2
    d = (x64[1] - x64[0]) / 2
    exact_invstd = 1 / np.sqrt(d * d + 1e-5)
    w, b = weight.astype(np.float64), bias.astype(np.float64)
    exact_y = np.stack([b - w * d * exact_invstd, b + w * d * exact_invstd])
    rtol = RTOL[dtype]
    assert_within(mean, c, rtol * (np.abs(c) + d))
    np.testing.assert_allclose(invstd, exact_invstd, rtol=rtol)
    assert_within(y, exact_y, rtol * (np.abs(b) + np.abs(w)))
    # Unbiased variance of two values: 2 d**2.
    assert_within(running_mean, 0.25 * c, rtol * (np.abs(c) + d))
    np.testing.assert_allclose(running_var, 0.75 + 0.25 * 2 * d * d, rtol=rtol)


@IMPLS
def test_two_values_per_channel_backward(impl, dtype, rng):
    """m = 2: dx1 = -dx2 = w * invstd * (dy1 - dy2) / 2 * (1 - s**2), s = d * invstd."""
    n_channels = 5
    x = np.stack([rng.uniform(-1, 0, n_channels), rng.uniform(0.5, 2, n_channels)]).astype(dtype)
    dy = rng.standard_normal((2, n_channels)).astype(dtype)
    weight = rng.uniform(0.5, 2, n_channels).astype(dtype)
    x64, dy64, w = x.astype(np.float64), dy.astype(np.float64), weight.astype(np.float64)
    mean = ((x64[0] + x64[1]) / 2).astype(dtype)
    eps = 0.1  # large, so that 1 - s**2 is far from 0 and the closed form is well conditioned
    d = x64[1] - mean.astype(np.float64)
    d0 = x64[0] - mean.astype(np.float64)
    invstd = (1 / np.sqrt(((d * d + d0 * d0) / 2) + eps)).astype(dtype)
    s1 = d0 * invstd.astype(np.float64)
    s2 = d * invstd.astype(np.float64)

    dx, dweight, dbias = implementation(impl, "batch_norm_backward")(dy, x, mean, invstd, weight)

    exact_dbias = dy64[0] + dy64[1]
    exact_dweight = dy64[0] * s1 + dy64[1] * s2
    k = w * invstd.astype(np.float64) / 2
    exact_dx = np.stack([k * (2 * dy64[0] - exact_dbias - s1 * exact_dweight),
                         k * (2 * dy64[1] - exact_dbias - s2 * exact_dweight)])
    rtol = RTOL[dtype]
    scale = np.abs(dy64).sum(axis=0)
    assert_within(dbias, exact_dbias, rtol * scale)
    assert_within(dweight, exact_dweight, rtol * scale * 2)
    assert_within(dx, exact_dx, rtol * 4 * k * scale)


@IMPLS
@pytest.mark.parametrize("constant", [0.0, 1.0, -3.5, 0.1, 1e6, -7.25e4, 1e30],
                         ids=lambda c: f"const{c:g}")
def test_constant_channel_gives_bias_exactly(constant, impl, dtype, rng):
    x = np.full((6, 3, 5), constant, dtype=dtype)
    x[:, 1] = rng.standard_normal((6, 5))  # one ordinary channel beside the constant ones
    weight = np.array([2.0, 1.5, -3.0], dtype)
    bias = np.array([0.5, -1.0, 0.0], dtype)
    y, mean, invstd = implementation(impl, "batch_norm_train")(x, weight, bias, eps=1e-5)
    for c in (0, 2):
        assert np.all(y[:, c] == bias[c]), f"channel {c}: y != bias"
        assert mean[c] == x[0, c, 0]
        np.testing.assert_allclose(invstd[c], 1 / np.sqrt(1e-5), rtol=RTOL[dtype])


@IMPLS
@pytest.mark.parametrize("layout", ["C", "F", "negstride"])
def test_constant_channels_backward(layout, impl, dtype, rng):
    """x_hat = 0: dweight = 0 exactly, dx = w * invstd * (dy - mean(dy))."""
    x = make_layout(np.full((8, 2, 3), 1e6, dtype=dtype), layout)
    dy = rng.standard_normal(x.shape).astype(dtype)
    mean = np.full(2, 1e6, dtype)
    invstd = np.full(2, 1 / np.sqrt(1e-5), dtype)
    weight = np.array([2.0, -0.5], dtype)
    dx, dweight, dbias = implementation(impl, "batch_norm_backward")(dy, x, mean, invstd, weight)
    assert np.all(dweight == 0)
    dy64 = dy.astype(np.float64)
    channel_mean = dy64.mean(axis=(0, 2), keepdims=True)
    expected = (weight.astype(np.float64) * invstd.astype(np.float64)).reshape(1, 2, 1) * (dy64 - channel_mean)
    assert_within(dx, expected, RTOL[dtype] * np.abs(expected).max() * 4)
    assert_within(dbias, dy64.sum(axis=(0, 2)), RTOL[dtype] * np.abs(dy64).sum())


@IMPLS
def test_dyadic_training_statistics(impl, dtype):
    """x = k/8 for k = 0..7 (shuffled): mean 7/16 and biased var 21/256, both exact binary fractions."""
    order = np.array([3, 0, 7, 5, 1, 6, 2, 4])
    x = np.stack([order / 8, -order / 8 + 100, order / 4]).T.astype(dtype)  # (8, 3)
    y, mean, invstd = implementation(impl, "batch_norm_train")(x, eps=2.0 ** -10)
    exact_mean = np.array([7 / 16, 100 - 7 / 16, 7 / 8])
    exact_var = np.array([21 / 256, 21 / 256, 21 / 64])
    exact_invstd = 1 / np.sqrt(exact_var + 2.0 ** -10)
    np.testing.assert_array_equal(mean, exact_mean.astype(dtype))
    np.testing.assert_allclose(invstd, exact_invstd, rtol=RTOL[dtype])
    exact_y = (x.astype(np.float64) - exact_mean) * exact_invstd
    assert_within(y, exact_y, RTOL[dtype] * np.abs(exact_y).max())


@IMPLS
def test_dyadic_eval_is_exact(impl, dtype, rng):
    """running_var + eps == 1 exactly, so y = weight * (x - running_mean) + bias with no rounding."""
    eps = 2.0 ** -10
    x = (rng.integers(-64, 64, (5, 4, 3)) / 8).astype(dtype)
    running_mean = np.array([0.5, -1.25, 3.0, 0.0], dtype)
    running_var = np.full(4, 1 - eps, dtype)
    weight = np.array([2.0, 0.25, -1.0, 1.0], dtype)
    bias = np.array([0.0, 1.5, -0.125, 4.0], dtype)
    y = implementation(impl, "batch_norm_eval")(x, running_mean, running_var, weight, bias, eps=eps)
    shape = (1, 4, 1)
    expected = weight.reshape(shape) * (x - running_mean.reshape(shape)) + bias.reshape(shape)
    np.testing.assert_array_equal(y, expected)
    assert y.dtype == dtype


@IMPLS
def test_eval_defaults_are_identity_scale(impl, dtype, rng):
    """weight None and bias None mean 1 and 0."""
    x = rng.standard_normal((4, 3)).astype(dtype)
    eps = 2.0 ** -10
    y = implementation(impl, "batch_norm_eval")(x, np.zeros(3, dtype), np.full(3, 1 - eps, dtype), eps=eps)
    np.testing.assert_array_equal(y, x)


@IMPLS
def test_running_statistics_closed_form(impl, dtype):
    """running = (1 - momentum) * old + momentum * batch, with var * m / (m - 1)."""
    x = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [6.0, 10.0]], dtype)  # mean 3, var 3.5, unbiased 14/3
    running_mean = np.array([1.0, 2.0], dtype)
    running_var = np.array([2.0, 0.5], dtype)
    implementation(impl, "batch_norm_train")(
        x, running_mean=running_mean, running_var=running_var, momentum=0.5)
    np.testing.assert_allclose(running_mean, [2.0, 6.0], rtol=RTOL[dtype])
    np.testing.assert_allclose(running_var, [1.0 + 7 / 3, 0.25], rtol=RTOL[dtype])


@IMPLS
def test_training_with_one_value_per_channel_raises(impl, dtype):
    running_mean = np.zeros(3, dtype)
    running_var = np.ones(3, dtype)
    with pytest.raises(ValueError, match=all_of("Expected more than 1 value per channel when training")):
        implementation(impl, "batch_norm_train")(
            np.ones((1, 3, 1, 1), dtype), running_mean=running_mean, running_var=running_var)
    assert np.all(running_mean == 0) and np.all(running_var == 1)
