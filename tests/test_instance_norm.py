"""instance_norm / instance_norm_backward / InstanceNorm: reference twin, running statistics, eval mode, errors."""

import numpy as np
import pytest

import bnext
from bn_helpers import bitwise_equal
from bnext import reference
from family_helpers import assert_all_close, dx_scale, check_gradients


def make(shape, dtype, rng):
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    weight = rng.uniform(-2, 2, shape[1]).astype(dtype)
    bias = rng.normal(size=shape[1]).astype(dtype)
    running_mean = rng.normal(size=shape[1]).astype(dtype)
    running_var = rng.uniform(0.5, 2, shape[1]).astype(dtype)
    return x, weight, bias, running_mean, running_var


@pytest.mark.parametrize("use_input_stats", [True, False], ids=["input-stats", "running-stats"])
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 3, 7), (2, 2, 80, 60)], ids=["NCHW", "NCL", "long"])
def test_matches_reference(shape, use_input_stats, dtype, rng):
    x, weight, bias, running_mean, running_var = make(shape, dtype, rng)
    fast_buffers = running_mean.copy(), running_var.copy()
    ref_buffers = running_mean.copy(), running_var.copy()
    fast = bnext.instance_norm(x, weight, bias, running_mean=fast_buffers[0], running_var=fast_buffers[1],
                               momentum=0.3, use_input_stats=use_input_stats)
    ref = reference.instance_norm(x, weight, bias, running_mean=ref_buffers[0], running_var=ref_buffers[1],
                                  momentum=0.3, use_input_stats=use_input_stats)
    assert_all_close(fast, ref, dtype, "forward")
    assert_all_close(fast_buffers, ref_buffers, dtype, "running")
    dy = rng.standard_normal(shape).astype(dtype)
    fast_b = bnext.instance_norm_backward(dy, x, fast[1], fast[2], weight, use_input_stats=use_input_stats)
    ref_b = reference.instance_norm_backward(dy, x, ref[1], ref[2], weight, use_input_stats=use_input_stats)
    assert_all_close(fast_b, ref_b, dtype, "backward", factor=10 if dtype == np.float32 else 1,
                     scales=(dx_scale(dy, ref[2], weight), None, None))


def test_equals_group_norm_with_one_channel_per_group(rng):
    x, weight, bias, _, _ = make((3, 4, 5), np.float64, rng)
    a = bnext.instance_norm(x, weight, bias)
    b = bnext.group_norm(x, 4, weight, bias)
    assert all(bitwise_equal(p, q) for p, q in zip(a, b))


def test_finite_differences(rng):
    x, weight, bias, _, _ = make((2, 3, 4), np.float64, rng)
    r = rng.standard_normal(x.shape)

    def loss(x, weight, bias):
        return float(np.sum(bnext.instance_norm(x, weight, bias)[0] * r))

    _, mean, invstd = bnext.instance_norm(x, weight, bias)
    check_gradients(loss, bnext.instance_norm_backward(r, x, mean, invstd, weight), (x, weight, bias), rng)


def test_errors_change_nothing():
    running_mean, running_var = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        bnext.instance_norm(np.ones((4, 3, 1)), running_mean=running_mean, running_var=running_var)
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        bnext.instance_norm(np.ones((4, 3, 2)), use_input_stats=False)
    with pytest.raises(ValueError, match="running_var must have shape"):
        bnext.instance_norm(np.ones((4, 3, 2)), running_mean=running_mean, running_var=np.ones(4))
    with pytest.raises(TypeError, match="momentum"):
        bnext.instance_norm(np.ones((4, 3, 2)), running_mean=running_mean, running_var=running_var, momentum="x")
    assert np.array_equal(running_mean, np.zeros(3)) and np.array_equal(running_var, np.ones(3))


def test_layer_train_and_eval(rng):
    layer = bnext.InstanceNorm(3, affine=True, track_running_stats=True, dtype=np.float64)
    x = rng.normal(2.0, 3.0, (4, 3, 10))
    layer(x)
    assert np.all(layer.running_mean != 0)
    layer.eval()
    y = layer(x)
    expected = reference.instance_norm(x, layer.weight, layer.bias, running_mean=layer.running_mean,
                                       running_var=layer.running_var, use_input_stats=False)[0]
    assert_all_close((y,), (expected,), np.float64)
    dy = rng.standard_normal(x.shape)
    assert_all_close((layer.backward(dy),), (dy * layer.weight[:, None] / np.sqrt(layer.running_var[:, None] + 1e-5),),
                     np.float64)
    plain = bnext.InstanceNorm(3)
    plain.eval()
    plain(x)  # no running statistics: eval mode still uses the instance statistics
    assert plain.running_mean is None and "InstanceNorm(3" in repr(plain)
