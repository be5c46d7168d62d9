"""layer_norm / layer_norm_backward / LayerNorm: reference twin, finite differences, layouts, errors, threads."""

import numpy as np
import pytest

import bnext
from bn_helpers import bitwise_equal
from bnext import reference
from family_helpers import assert_all_close, dx_scale, check_gradients, laid_out

# name -> (shape, normalized_shape): short, medium and long rows (>= the 4096-value block), one value, 1 row,
# short rows in several groups of rows and a partial last group (the fused kernel's rows_per_pass).
CASES = {
    "rows3x5x6-last": ((3, 5, 6), (6,)),
    "rows3-last2": ((3, 4, 5), (4, 5)),
    "2d-int-shape": ((17, 33), 33),
    "one-value": ((9, 1), 1),
    "one-row": ((1, 300), (300,)),
    "long-rows": ((3, 5000), (5000,)),
    "many-rows": ((130, 7), (7,)),
    "row-groups": ((700, 5), (5,)),
    "whole-array": ((2, 3, 4), (2, 3, 4)),
}


def make(shape, normalized_shape, dtype, rng, offset=0.0):
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    x = (offset + rng.normal(2.0, 3.0, shape)).astype(dtype)
    weight = rng.uniform(-2, 2, ns).astype(dtype)
    bias = rng.normal(size=ns).astype(dtype)
    return x, weight, bias


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, affine, dtype, rng):
    shape, ns = CASES[case]
    x, weight, bias = make(shape, ns, dtype, rng)
    if not affine:
        weight = bias = None
    fast = bnext.layer_norm(x, ns, weight, bias)
    ref = reference.layer_norm(x, ns, weight, bias)
    assert_all_close(fast, ref, dtype, "forward")
    dy = rng.standard_normal(shape).astype(dtype)
    fast_b = bnext.layer_norm_backward(dy, x, fast[1], fast[2], weight, normalized_shape=ns)
    ref_b = reference.layer_norm_backward(dy, x, ref[1], ref[2], weight, normalized_shape=ns)
    assert_all_close(fast_b, ref_b, dtype, "backward", factor=10 if dtype == np.float32 else 1,
                     scales=(dx_scale(dy, ref[2], weight), None, None))


@pytest.mark.parametrize("kind", ["F", "strided", "negstride", "readonly"])
def test_layouts(kind, dtype, rng):
    x, weight, bias = make((6, 5, 8), (8,), dtype, rng)
    xl = laid_out(x, kind)
    assert_all_close(bnext.layer_norm(xl, 8, weight, bias), reference.layer_norm(x, 8, weight, bias), dtype)
    dy = laid_out(rng.standard_normal(x.shape).astype(dtype), kind)
    _, mean, invstd = reference.layer_norm(x, 8)
    assert_all_close(bnext.layer_norm_backward(dy, xl, mean, invstd, weight, normalized_shape=8),
                     reference.layer_norm_backward(dy, x, mean, invstd, weight, normalized_shape=8), dtype,
                     factor=10)


def test_offset_data_is_exact(rng):
    x = (1e4 + 1e-2 * rng.standard_normal((8, 300))).astype(np.float32)
    y, _, _ = bnext.layer_norm(x, 300)
    expected, _, _ = reference.layer_norm(x, 300)
    assert np.abs(y - expected).max() < 1e-4


def test_finite_differences(rng):
    x, weight, bias = make((3, 4, 5), (4, 5), np.float64, rng)
    r = rng.standard_normal(x.shape)

    def loss(x, weight, bias):
        return float(np.sum(bnext.layer_norm(x, (4, 5), weight, bias)[0] * r))

    _, mean, invstd = bnext.layer_norm(x, (4, 5), weight, bias)
    dx, dweight, dbias = bnext.layer_norm_backward(r, x, mean, invstd, weight, normalized_shape=(4, 5))
    check_gradients(loss, (dx, dweight, dbias), (x, weight, bias), rng)


def test_seed_002_worked_example():
    # Document 002's x = [1, 2, 3, 4], gamma = 2, beta = 1 (with its printed outer values corrected).
    y, mean, invstd = bnext.layer_norm(np.array([[1.0, 2.0, 3.0, 4.0]]), 4, np.full(4, 2.0), np.ones(4))
    np.testing.assert_allclose(y, [[-1.683, 0.106, 1.894, 3.683]], atol=1e-3)
    assert mean.tolist() == [2.5]


def test_torch_keepdim_statistics_accepted(rng):
    x, weight, _ = make((4, 6), (6,), np.float64, rng)
    _, mean, invstd = bnext.layer_norm(x, 6)
    dy = rng.standard_normal(x.shape)
    a = bnext.layer_norm_backward(dy, x, mean, invstd, normalized_shape=6)
    b = bnext.layer_norm_backward(dy, x, mean[:, None], invstd[:, None], normalized_shape=6)
    assert all(bitwise_equal(p, q) for p, q in zip(a, b))


def test_out_and_in_place(rng):
    x, weight, bias = make((5, 7), (7,), np.float64, rng)
    expected = bnext.layer_norm(x, 7, weight, bias)[0]
    out = np.empty_like(x)
    assert bnext.layer_norm(x, 7, weight, bias, out=out)[0] is out
    assert bitwise_equal(out, expected)
    x_copy = x.copy()
    assert bnext.layer_norm(x_copy, 7, weight, bias, out=x_copy)[0] is x_copy
    assert bitwise_equal(x_copy, expected)
    fortran_out = np.asfortranarray(np.empty_like(x))
    assert bnext.layer_norm(x, 7, weight, bias, out=fortran_out)[0] is fortran_out
    assert bitwise_equal(fortran_out, expected)


def test_inputs_unchanged_and_empty(rng):
    x, weight, bias = make((5, 7), (7,), np.float32, rng)
    saved = x.copy(), weight.copy(), bias.copy()
    bnext.layer_norm(x, 7, weight, bias)
    assert all(bitwise_equal(a, b) for a, b in zip((x, weight, bias), saved))
    y, mean, invstd = bnext.layer_norm(np.zeros((0, 7), np.float32), 7)
    assert y.shape == (0, 7) and mean.shape == (0,) and invstd.shape == (0,)


# At least 32768 values each: smaller inputs run on one thread (src/_parallel.pxd).
@pytest.mark.parametrize("shape", [(400, 100), (4, 9000), (40000, 1)], ids=["rows", "long", "one-value"])
def test_thread_count_invariance(shape, dtype, rng):
    x, weight, bias = make(shape, shape[1:], dtype, rng, offset=50.0)
    dy = rng.standard_normal(shape).astype(dtype)
    results = []
    old = bnext.get_num_threads()
    try:
        for n in (1, 2, 3, 4):
            bnext.set_num_threads(n)
            fwd = bnext.layer_norm(x, shape[1:], weight, bias)
            results.append(fwd + bnext.layer_norm_backward(dy, x, fwd[1], fwd[2], weight, normalized_shape=shape[1:]))
    finally:
        bnext.set_num_threads(old)
    for other in results[1:]:
        assert all(bitwise_equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x=np.zeros((3, 4), np.int64)), TypeError, "x must be a float32 or float64 array, got int64"),
    (dict(x=np.zeros((3, 4), np.float16)), TypeError, "x must be"),
    (dict(normalized_shape=5), ValueError, "normalized_shape"),
    (dict(normalized_shape=()), ValueError, "normalized_shape"),
    (dict(normalized_shape="4"), TypeError, "normalized_shape"),
    (dict(weight=np.ones(5)), ValueError, "weight must have shape"),
    (dict(bias=np.ones((1, 4))), ValueError, "bias must have shape"),
    (dict(weight=np.ones(4, np.int32)), TypeError, "weight"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps="1"), TypeError, "eps"),
    (dict(out=np.zeros((3, 4), np.float32)), TypeError, "out must have dtype"),
    (dict(out=np.zeros((4, 3))), ValueError, "out must have shape"),
], ids=["int", "float16", "shape-mismatch", "empty-shape", "str-shape", "weight-shape", "bias-shape",
        "weight-int", "eps-zero", "eps-str", "out-dtype", "out-shape"])
def test_errors_name_the_argument_and_change_nothing(kwargs, error, match):
    params = dict(x=np.ones((3, 4)), normalized_shape=4, weight=None, bias=None, eps=1e-5, out=np.full((3, 4), 7.0))
    params.update(kwargs)
    out = params["out"]
    before = out.copy()
    with pytest.raises(error, match=match):
        bnext.layer_norm(params["x"], params["normalized_shape"], params["weight"], params["bias"],
                         eps=params["eps"], out=out)
    assert np.array_equal(out, before)


def test_read_only_out_is_rejected():
    out = np.zeros((3, 4))
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out is read-only"):
        bnext.layer_norm(np.ones((3, 4)), 4, out=out)


def test_backward_errors():
    x = np.ones((3, 4))
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        bnext.layer_norm_backward(np.ones((3, 5)), x, np.zeros(3), np.ones(3), normalized_shape=4)
    with pytest.raises(ValueError, match="mean must have shape"):
        bnext.layer_norm_backward(x, x, np.zeros(4), np.ones(3), normalized_shape=4)
    with pytest.raises(TypeError, match="invstd"):
        bnext.layer_norm_backward(x, x, np.zeros(3), None, normalized_shape=4)


def test_layer(rng):
    layer = bnext.LayerNorm((4, 5), dtype=np.float64)
    layer.weight[...] = rng.uniform(0.5, 2, (4, 5))
    x = rng.standard_normal((3, 4, 5))
    y = layer(x)
    expected = reference.layer_norm(x, (4, 5), layer.weight, layer.bias)
    assert_all_close((y,), expected[:1], np.float64)
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    ref = reference.layer_norm_backward(dy, x, expected[1], expected[2], layer.weight, normalized_shape=(4, 5))
    assert_all_close((dx, layer.grad_weight, layer.grad_bias), ref, np.float64)
    assert layer.eval() is layer and not layer.training
    assert "LayerNorm((4, 5)" in repr(layer)
    plain = bnext.LayerNorm(5, elementwise_affine=False)
    plain(np.ones((2, 5), np.float32))
    plain.backward(np.ones((2, 5), np.float32))
    assert plain.weight is None and plain.grad_weight is None
    with pytest.raises(RuntimeError, match="before a forward"):
        bnext.LayerNorm(3).backward(np.ones((1, 3)))
