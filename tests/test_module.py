"""The BatchNorm layer: defaults, train/eval, running statistics, backward."""

import numpy as np
import pytest

import bnext
from bnext import reference
from bn_helpers import RTOL, all_of, random_x


def close(actual, expected, dtype):
    expected = np.asarray(expected, dtype=np.float64)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL[np.dtype(dtype)] * (1 + np.abs(expected).max()))


def test_defaults():
    bn = bnext.BatchNorm(4)
    np.testing.assert_array_equal(bn.weight, np.ones(4))
    np.testing.assert_array_equal(bn.bias, np.zeros(4))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(4))
    np.testing.assert_array_equal(bn.running_var, np.ones(4))
    for array in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        assert array.dtype == np.float32 and array.shape == (4,)
    assert bn.num_batches_tracked == 0
    assert bn.training is True
    assert bn.eps == 1e-5 and bn.momentum == 0.1


def test_dtype_float64():
    bn = bnext.BatchNorm(2, dtype=np.float64)
    for array in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        assert array.dtype == np.float64


def test_train_and_eval_switch_mode():
    bn = bnext.BatchNorm(3)
    assert bn.eval() is bn and bn.training is False
    assert bn.train() is bn and bn.training is True
    bn.train(False)
    assert bn.training is False


@pytest.mark.parametrize("layout, axis", [("NCHW", 1), ("NHWC", -1), ("NC", 1)])
def test_training_steps_then_eval_match_reference(layout, axis, dtype, rng):
    shape = {"NCHW": (4, 3, 5, 5), "NHWC": (4, 5, 5, 3), "NC": (16, 3)}[layout]
    bn = bnext.BatchNorm(3, axis=axis, dtype=dtype, momentum=0.2, eps=1e-4)
    bn.weight[...] = [1.5, -0.5, 2.0]
    bn.bias[...] = [0.1, 0.2, -0.3]
    running_mean, running_var = np.zeros(3, dtype), np.ones(3, dtype)
    for step in range(3):
        x = random_x(shape, axis, dtype, rng)
        y = bn(x)
        expected, mean, invstd = reference.batch_norm_train(
            x, bn.weight, bn.bias, axis=axis, eps=1e-4, running_mean=running_mean,
            running_var=running_var, momentum=0.2)
        close(y, expected, dtype)
        assert y.dtype == dtype and y.shape == shape
        close(bn.running_mean, running_mean, dtype)
        close(bn.running_var, running_var, dtype)
        assert bn.num_batches_tracked == step + 1

        dy = rng.standard_normal(shape).astype(dtype)
        dx = bn.backward(dy)
        ref_dx, ref_dweight, ref_dbias = reference.batch_norm_backward(dy, x, mean, invstd, bn.weight, axis=axis)
        close(dx, ref_dx, dtype)
        close(bn.grad_weight, ref_dweight, dtype)
        close(bn.grad_bias, ref_dbias, dtype)

    bn.eval()
    x = random_x(shape, axis, dtype, rng)
    before = bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked
    y = bn(x)
    close(y, reference.batch_norm_eval(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, axis=axis,
                                       eps=1e-4), dtype)
    np.testing.assert_array_equal(bn.running_mean, before[0])
    np.testing.assert_array_equal(bn.running_var, before[1])
    assert bn.num_batches_tracked == before[2]


def test_momentum_none_is_a_cumulative_average(rng):
    bn = bnext.BatchNorm(2, momentum=None, dtype=np.float64)
    means, unbiased_vars = [], []
    for _ in range(4):
        x = random_x((10, 2), 1, np.float64, rng)
        bn(x)
        means.append(x.mean(axis=0))
        unbiased_vars.append(x.var(axis=0, ddof=1))
    # With factor 1/k at step k, starting from mean 0 / var 1 is forgotten after step 1.
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean(unbiased_vars, axis=0), rtol=1e-12)
    assert bn.num_batches_tracked == 4


def test_track_running_stats_false_uses_batch_statistics_in_eval(rng):
    bn = bnext.BatchNorm(3, track_running_stats=False, dtype=np.float64)
    x = random_x((8, 3, 4), 1, np.float64, rng)
    y_train = bn(x)
    bn.eval()
    y_eval = bn(x)
    expected, _, _ = reference.batch_norm_train(x)
    np.testing.assert_allclose(y_train, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    np.testing.assert_allclose(y_eval, expected, rtol=0, atol=1e-10 * np.abs(expected).max())


def test_affine_false(rng):
    bn = bnext.BatchNorm(3, affine=False, dtype=np.float64)
    x = random_x((8, 3), 1, np.float64, rng)
    y = bn(x)
    expected, mean, invstd = reference.batch_norm_train(x)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    dy = rng.standard_normal(x.shape)
    dx = bn.backward(dy)
    np.testing.assert_allclose(dx, reference.batch_norm_backward(dy, x, mean, invstd)[0], rtol=0,
                               atol=1e-10 * np.abs(dx).max())


def test_one_value_per_channel_in_training_raises_and_changes_nothing():
    bn = bnext.BatchNorm(3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(np.ones((1, 3, 1, 1), np.float32))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3))
    np.testing.assert_array_equal(bn.running_var, np.ones(3))
    assert bn.num_batches_tracked == 0
    bn.eval()
    assert bn(np.ones((1, 3, 1, 1), np.float32)).shape == (1, 3, 1, 1)


def test_wrong_number_of_channels_raises():
    bn = bnext.BatchNorm(3)
    with pytest.raises(ValueError, match="shape|channel|features"):
        bn(np.ones((4, 5), np.float32))
    assert bn.num_batches_tracked == 0


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=all_of("eps")):
        bnext.BatchNorm(3, eps=0.0)
    with pytest.raises(ValueError, match=all_of("momentum")):
        bnext.BatchNorm(3, momentum=float("nan"))
