"""Property tests (hypothesis): random shapes, axes, strides and dtypes against the reference."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bn_helpers import as_tuple, assert_results_close, call, copy_params, fast_and_reference, make_params

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def strided_inputs(draw, min_per_channel=2):
    """(x, axis, rng): x a possibly non-contiguous view with at least min_per_channel values per channel."""
    ndim = draw(st.integers(2, 5))
    shape = draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim))
    axis = draw(st.integers(-ndim, ndim - 1))
    others = [n for i, n in enumerate(shape) if i != axis % ndim]
    if int(np.prod(others)) < min_per_channel:
        shape[(axis + 1) % ndim] = min_per_channel
    steps = draw(st.lists(st.sampled_from([1, 2, -1, -2, 3]), min_size=ndim, max_size=ndim))
    transpose = draw(st.permutations(range(ndim)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    base_shape = [n * abs(s) for n, s in zip(shape, steps)]
    base = (rng.uniform(-3, 3) + rng.standard_normal(base_shape)).astype(dtype)
    view = base[tuple(slice(None, None, s) for s in steps)]
    # Transpose the buffer, then the axes back, so memory order differs from logical order.
    x = np.ascontiguousarray(view.transpose(transpose)).transpose(np.argsort(transpose))
    if draw(st.booleans()):
        x = view
    return x, axis, rng


def check_against_reference(name, x, axis, rng):
    params = make_params(name, x, axis, rng)
    fast, ref = fast_and_reference(name)
    expected = as_tuple(call(ref, copy_params(params)))
    actual = as_tuple(call(fast, params))
    assert_results_close(name, actual, expected, params, what=f"{name} {x.shape} axis={axis} {x.strides}")


@SETTINGS
@given(strided_inputs())
def test_train_property(data):
    check_against_reference("batch_norm_train", *data)


@SETTINGS
@given(strided_inputs(min_per_channel=1))
def test_eval_property(data):
    check_against_reference("batch_norm_eval", *data)


@SETTINGS
@given(strided_inputs())
def test_backward_property(data):
    check_against_reference("batch_norm_backward", *data)


@SETTINGS
@given(strided_inputs(), st.floats(1e3, 1e6), st.floats(1e-2, 1e2))
def test_train_output_is_invariant_to_shift_and_scale(data, shift, scale):
    """BN(a * x + b) == BN(x) for a > 0, up to float64 rounding (eps made negligible)."""
    x, axis, _ = data
    x = x.astype(np.float64)
    train = fast_and_reference("batch_norm_train")[0]
    y, _, _ = train(x, axis=axis, eps=1e-300)
    y_moved, _, _ = train(scale * x + shift, axis=axis, eps=1e-300)
    finite_spread = np.ptp(x, axis=tuple(i for i in range(x.ndim) if i != axis % x.ndim)) > 1e-3
    shape = [1] * x.ndim
    shape[axis] = -1
    mask = np.broadcast_to(finite_spread.reshape(shape), x.shape)
    np.testing.assert_allclose(y_moved[mask], y[mask], rtol=0, atol=1e-6)

