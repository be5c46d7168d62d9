"""group_norm / group_norm_backward / GroupNorm: reference twin, finite differences, layouts, errors, threads."""

import numpy as np
import pytest

import bnext
from bn_helpers import bitwise_equal
from bnext import reference
from family_helpers import assert_all_close, dx_scale, check_gradients, laid_out

# name -> (shape, num_groups): short spatial rows, long groups (>= 4096 values), no spatial axes, G = 1, G = C,
# short rows in several groups of rows and a partial last group (the fused kernel's rows_per_pass).
CASES = {
    "NCHW-g2": ((3, 4, 5, 6), 2),
    "NCL-g1": ((4, 6, 7), 1),
    "NC-g3": ((5, 6), 3),
    "G=C": ((2, 4, 3, 3), 4),
    "long-groups": ((2, 4, 70, 70), 2),
    "one-sample": ((1, 8, 9), 4),
    "rank5": ((2, 6, 2, 3, 4), 3),
    "row-groups": ((300, 8, 2), 4),
}


def make(shape, dtype, rng, offset=0.0):
    x = (offset + rng.normal(1.0, 2.0, shape)).astype(dtype)
    weight = rng.uniform(-2, 2, shape[1]).astype(dtype)
    weight[0] = 0.0  # a zero weight must not break dx
    bias = rng.normal(size=shape[1]).astype(dtype)
    return x, weight, bias


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, affine, dtype, rng):
    shape, groups = CASES[case]
    x, weight, bias = make(shape, dtype, rng)
    if not affine:
        weight = bias = None
    fast = bnext.group_norm(x, groups, weight, bias)
    ref = reference.group_norm(x, groups, weight, bias)
    assert_all_close(fast, ref, dtype, "forward")
    dy = rng.standard_normal(shape).astype(dtype)
    fast_b = bnext.group_norm_backward(dy, x, fast[1], fast[2], weight, num_groups=groups)
    ref_b = reference.group_norm_backward(dy, x, ref[1], ref[2], weight, num_groups=groups)
    assert_all_close(fast_b, ref_b, dtype, "backward", factor=10 if dtype == np.float32 else 1,
                     scales=(dx_scale(dy, ref[2], weight), None, None))


@pytest.mark.parametrize("kind", ["F", "strided", "negstride", "readonly"])
def test_layouts(kind, dtype, rng):
    x, weight, bias = make((3, 4, 5, 6), dtype, rng)
    xl = laid_out(x, kind)
    assert_all_close(bnext.group_norm(xl, 2, weight, bias), reference.group_norm(x, 2, weight, bias), dtype)
    _, mean, invstd = reference.group_norm(x, 2)
    dy = rng.standard_normal(x.shape).astype(dtype)
    assert_all_close(bnext.group_norm_backward(laid_out(dy, kind), xl, mean, invstd, weight, num_groups=2),
                     reference.group_norm_backward(dy, x, mean, invstd, weight, num_groups=2), dtype, factor=10)


def test_channels_last_view(rng):
    x, weight, bias = make((2, 6, 4, 4), np.float64, rng)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert_all_close(bnext.group_norm(nhwc, 3, weight, bias), reference.group_norm(x, 3, weight, bias), np.float64)


def test_finite_differences(rng):
    x, weight, bias = make((2, 4, 3), np.float64, rng)
    weight[0] = 0.7
    r = rng.standard_normal(x.shape)

    def loss(x, weight, bias):
        return float(np.sum(bnext.group_norm(x, 2, weight, bias)[0] * r))

    _, mean, invstd = bnext.group_norm(x, 2, weight, bias)
    grads = bnext.group_norm_backward(r, x, mean, invstd, weight, num_groups=2)
    check_gradients(loss, grads, (x, weight, bias), rng)


def test_offset_data(rng):
    x = (1e4 + 1e-2 * rng.standard_normal((4, 6, 5, 5))).astype(np.float32)
    y, _, _ = bnext.group_norm(x, 3)
    expected, _, _ = reference.group_norm(x, 3)
    assert np.abs(y - expected).max() < 1e-4


def test_out_and_in_place(rng):
    x, weight, bias = make((3, 4, 5), np.float64, rng)
    expected = bnext.group_norm(x, 2, weight, bias)[0]
    out = np.empty_like(x)
    assert bnext.group_norm(x, 2, weight, bias, out=out)[0] is out and bitwise_equal(out, expected)
    x_copy = x.copy()
    assert bnext.group_norm(x_copy, 2, weight, bias, out=x_copy)[0] is x_copy
    assert bitwise_equal(x_copy, expected)
    _, mean, invstd = bnext.group_norm(x, 2, weight, bias)
    dy = rng.standard_normal(x.shape)
    dx = bnext.group_norm_backward(dy, x, mean, invstd, weight, num_groups=2)[0]
    dy_copy = dy.copy()
    assert bnext.group_norm_backward(dy_copy, x, mean, invstd, weight, num_groups=2, out=dy_copy)[0] is dy_copy
    assert bitwise_equal(dy_copy, dx)


def test_empty_batch():
    y, mean, invstd = bnext.group_norm(np.zeros((0, 4, 3), np.float32), 2)
    assert y.shape == (0, 4, 3) and mean.shape == (0, 2)


# At least 32768 values each: smaller inputs run on one thread (src/_parallel.pxd).
@pytest.mark.parametrize("shape", [(16, 32, 9, 9), (4, 4, 64, 64), (6000, 8)], ids=["short", "long", "no-spatial"])
def test_thread_count_invariance(shape, dtype, rng):
    x, weight, bias = make(shape, dtype, rng, offset=30.0)
    dy = rng.standard_normal(shape).astype(dtype)
    results = []
    old = bnext.get_num_threads()
    try:
        for n in (1, 2, 3, 4):
            bnext.set_num_threads(n)
            fwd = bnext.group_norm(x, 4, weight, bias)
            results.append(fwd + bnext.group_norm_backward(dy, x, fwd[1], fwd[2], weight, num_groups=4))
    finally:
        bnext.set_num_threads(old)
    for other in results[1:]:
        assert all(bitwise_equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x=np.zeros((3, 4, 2), np.int32)), TypeError, "x must be a float32 or float64 array, got int32"),
    (dict(x=np.zeros(4)), ValueError, "x must have at least 2 dimensions"),
    (dict(num_groups=3), ValueError, "divisible by num_groups 3"),
    (dict(num_groups=0), ValueError, "num_groups must be >= 1"),
    (dict(num_groups=2.0), TypeError, "num_groups must be an integer"),
    (dict(weight=np.ones(3)), ValueError, r"weight must have shape \(4,\)"),
    (dict(bias=np.ones(4, complex)), TypeError, "bias"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(out=np.zeros((3, 4, 2), np.float32)), TypeError, "out must have dtype"),
], ids=["int", "1d", "not-divisible", "zero-groups", "float-groups", "weight-shape", "bias-complex", "eps", "out"])
def test_errors_name_the_argument_and_change_nothing(kwargs, error, match):
    params = dict(x=np.ones((3, 4, 2)), num_groups=2, weight=None, bias=None, eps=1e-5, out=np.full((3, 4, 2), 7.0))
    params.update(kwargs)
    before = params["out"].copy()
    with pytest.raises(error, match=match):
        bnext.group_norm(params["x"], params["num_groups"], params["weight"], params["bias"], eps=params["eps"],
                         out=params["out"])
    assert np.array_equal(params["out"], before)


def test_backward_errors():
    x = np.ones((3, 4, 2))
    with pytest.raises(ValueError, match=r"mean must have shape \(3, 2\)"):
        bnext.group_norm_backward(x, x, np.zeros((3, 4)), np.ones((3, 2)), num_groups=2)
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        bnext.group_norm_backward(x[:2], x, np.zeros((3, 2)), np.ones((3, 2)), num_groups=2)


def test_layer(rng):
    layer = bnext.GroupNorm(2, 4, dtype=np.float64)
    layer.weight[...] = rng.uniform(0.5, 2, 4)
    x = rng.standard_normal((3, 4, 5))
    y = layer(x)
    ref = reference.group_norm(x, 2, layer.weight, layer.bias)
    assert_all_close((y,), ref[:1], np.float64)
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    ref_b = reference.group_norm_backward(dy, x, ref[1], ref[2], layer.weight, num_groups=2)
    assert_all_close((dx, layer.grad_weight, layer.grad_bias), ref_b, np.float64)
    with pytest.raises(ValueError, match="4 channels"):
        layer(np.ones((2, 6, 3)))
    with pytest.raises(ValueError, match="divisible"):
        bnext.GroupNorm(3, 4)
    assert repr(layer).startswith("GroupNorm(2, 4")
