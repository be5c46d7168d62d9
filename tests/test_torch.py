"""Against PyTorch (CPU) when it is installed: functional batch_norm, autograd, BatchNorm2d step for step."""

import numpy as np
import pytest

import bnext
from bn_helpers import RTOL, random_x

torch = pytest.importorskip("torch", exc_type=ImportError)


def to_torch(array):
    return torch.from_numpy(np.ascontiguousarray(array))


def close(actual, expected, dtype, what=""):
    """Within RTOL of the output's scale (torch itself carries rounding error, on easy data only)."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = np.abs(expected).max() if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=0,
                               atol=RTOL[np.dtype(dtype)] * max(scale, 1.0) * 4, err_msg=what)


SHAPES = {"NC": (16, 3), "NCL": (4, 3, 7), "NCHW": (4, 3, 5, 5), "NCDHW": (2, 3, 3, 4, 4)}


@pytest.mark.parametrize("shape", SHAPES)
def test_functional_training_matches_torch(shape, dtype, rng):
    shape = SHAPES[shape]
    x = random_x(shape, 1, dtype, rng)
    weight = rng.uniform(0.5, 2, 3).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    running_mean, running_var = np.zeros(3, dtype), np.ones(3, dtype)
    torch_mean, torch_var = to_torch(running_mean.copy()), to_torch(running_var.copy())
    expected = torch.nn.functional.batch_norm(to_torch(x), torch_mean, torch_var, to_torch(weight),
                                              to_torch(bias), training=True, momentum=0.1, eps=1e-5)
    y, _, _ = bnext.batch_norm_train(x, weight, bias, running_mean=running_mean, running_var=running_var)
    close(y, expected.numpy(), dtype, "y")
    close(running_mean, torch_mean.numpy(), dtype, "running_mean")
    close(running_var, torch_var.numpy(), dtype, "running_var")


@pytest.mark.parametrize("shape", SHAPES)
def test_functional_eval_matches_torch(shape, dtype, rng):
    shape = SHAPES[shape]
    x = random_x(shape, 1, dtype, rng)
    weight, bias = rng.uniform(0.5, 2, 3).astype(dtype), rng.standard_normal(3).astype(dtype)
    running_mean, running_var = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    expected = torch.nn.functional.batch_norm(to_torch(x), to_torch(running_mean), to_torch(running_var),
                                              to_torch(weight), to_torch(bias), training=False, eps=1e-5)
    y = bnext.batch_norm_eval(x, running_mean, running_var, weight, bias)
    close(y, expected.numpy(), dtype, "y")


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_torch_autograd(shape, dtype, rng):
    shape = SHAPES[shape]
    x = random_x(shape, 1, dtype, rng)
    weight, bias = rng.uniform(0.5, 2, 3).astype(dtype), rng.standard_normal(3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    tx, tw, tb = (to_torch(a.copy()).requires_grad_(True) for a in (x, weight, bias))
    ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=1e-5)
    ty.backward(to_torch(dy))

    _, mean, invstd = bnext.batch_norm_train(x, weight, bias)
    dx, dweight, dbias = bnext.batch_norm_backward(dy, x, mean, invstd, weight)
    close(dx, tx.grad.numpy(), dtype, "dx")
    close(dweight, tw.grad.numpy(), dtype, "dweight")
    close(dbias, tb.grad.numpy(), dtype, "dbias")


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
def test_batchnorm2d_step_for_step(momentum, affine, dtype, rng):
    torch_dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtype]
    reference = torch.nn.BatchNorm2d(3, eps=1e-5, momentum=momentum, affine=affine, dtype=torch_dtype)
    bn = bnext.BatchNorm(3, eps=1e-5, momentum=momentum, affine=affine, dtype=dtype)
    if affine:
        weight, bias = rng.uniform(0.5, 2, 3).astype(dtype), rng.standard_normal(3).astype(dtype)
        bn.weight[...] = weight
        bn.bias[...] = bias
        with torch.no_grad():
            reference.weight.copy_(to_torch(weight))
            reference.bias.copy_(to_torch(bias))
    for step in range(4):
        x = random_x((4, 3, 6, 6), 1, dtype, rng)
        dy = rng.standard_normal(x.shape).astype(dtype)
        tx = to_torch(x.copy()).requires_grad_(True)
        ty = reference(tx)
        ty.backward(to_torch(dy))
        y = bn(x)
        dx = bn.backward(dy)
        close(y, ty.detach().numpy(), dtype, f"step {step} y")
        close(dx, tx.grad.numpy(), dtype, f"step {step} dx")
        close(bn.running_mean, reference.running_mean.numpy(), dtype, f"step {step} running_mean")
        close(bn.running_var, reference.running_var.numpy(), dtype, f"step {step} running_var")
        assert bn.num_batches_tracked == int(reference.num_batches_tracked)
        if affine:
            close(bn.grad_weight, reference.weight.grad.numpy(), dtype, f"step {step} grad_weight")
            close(bn.grad_bias, reference.bias.grad.numpy(), dtype, f"step {step} grad_bias")
            reference.weight.grad = None
            reference.bias.grad = None
    bn.eval()
    reference.eval()
    x = random_x((2, 3, 6, 6), 1, dtype, rng)
    with torch.no_grad():
        close(bn(x), reference(to_torch(x)).numpy(), dtype, "eval y")


def test_bnext_beats_torch_on_offset_float32_data(rng):
    """At 1e4 with spread 1e-2, bnext stays within float32 tolerance of the float64 truth."""
    x = (1e4 + 1e-2 * rng.standard_normal((64, 3, 8, 8))).astype(np.float32)
    truth, _, _ = bnext.reference.batch_norm_train(x.astype(np.float64))
    y, _, _ = bnext.batch_norm_train(x)
    expected_torch = torch.nn.functional.batch_norm(to_torch(x), None, None, training=True).numpy()
    bnext_error = np.abs(y - truth).max()
    torch_error = np.abs(expected_torch - truth).max()
    assert bnext_error < 1e-5 * np.abs(truth).max()
    assert bnext_error <= torch_error
