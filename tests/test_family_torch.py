"""layer_norm, group_norm and instance_norm against PyTorch's functional ops and their autograd (skipped without
torch), including the sample inputs of PyTorch's own OpInfo tests."""

import warnings

import numpy as np
import pytest

import bnext
from family_helpers import assert_all_close, dx_scale, scale_of

torch = pytest.importorskip("torch", exc_type=ImportError)
functional = torch.nn.functional


def torch_grads(function, x, params, dy):
    """(y, dx, *dparams) of a torch functional op by autograd, float64 tensors in, numpy out."""
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    params_t = [None if p is None else torch.from_numpy(p.copy()).requires_grad_(True) for p in params]
    y = function(x_t, *params_t)
    y.backward(torch.from_numpy(dy))
    grads = [x_t.grad.numpy()] + [None if p is None else p.grad.numpy() for p in params_t]
    return y.detach().numpy(), grads


@pytest.mark.parametrize("shape, normalized_shape", [((4, 5, 6), (6,)), ((3, 4, 5), (4, 5)), ((8, 1), (1,))],
                         ids=["last", "last2", "one"])
def test_layer_norm(shape, normalized_shape, dtype, rng):
    x = rng.normal(2.0, 3.0, shape).astype(dtype)
    weight = rng.uniform(-2, 2, normalized_shape).astype(dtype)
    bias = rng.normal(size=normalized_shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y_t, grads = torch_grads(lambda x, w, b: functional.layer_norm(x, normalized_shape, w, b, 1e-5), x,
                             (weight, bias), dy)
    y, mean, invstd = bnext.layer_norm(x, normalized_shape, weight, bias)
    dx, dweight, dbias = bnext.layer_norm_backward(dy, x, mean, invstd, weight, normalized_shape=normalized_shape)
    assert_all_close((y,), (y_t,), dtype, factor=10)
    # dweight against the size of its terms |dy * x_hat| (x_hat is exactly 0 for one value; torch's is ~1e-8).
    dweight_scale = 4 * scale_of(np.abs(dy).reshape(-1, weight.size).sum(axis=0))
    assert_all_close((dx, dweight, dbias), grads, dtype, factor=100 if dtype == np.float32 else 1,
                     scales=(dx_scale(dy, invstd, weight), dweight_scale, None))
    _, mean_t, rstd_t = torch.native_layer_norm(torch.from_numpy(x), normalized_shape, None, None, 1e-5)
    assert_all_close((mean, invstd), (mean_t.numpy().reshape(mean.shape), rstd_t.numpy().reshape(mean.shape)),
                     dtype, factor=10)


@pytest.mark.parametrize("shape, groups", [((4, 6, 5, 5), 3), ((3, 8, 7), 8), ((5, 4), 1)],
                         ids=["NCHW-g3", "NCL-gC", "NC-g1"])
def test_group_norm(shape, groups, dtype, rng):
    x = rng.normal(2.0, 3.0, shape).astype(dtype)
    weight = rng.uniform(-2, 2, shape[1]).astype(dtype)
    bias = rng.normal(size=shape[1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y_t, grads = torch_grads(lambda x, w, b: functional.group_norm(x, groups, w, b, 1e-5), x, (weight, bias), dy)
    y, mean, invstd = bnext.group_norm(x, groups, weight, bias)
    dx, dweight, dbias = bnext.group_norm_backward(dy, x, mean, invstd, weight, num_groups=groups)
    assert_all_close((y,), (y_t,), dtype, factor=10)
    assert_all_close((dx, dweight, dbias), grads, dtype, factor=100 if dtype == np.float32 else 1,
                     scales=(dx_scale(dy, invstd, weight), None, None))


@pytest.mark.parametrize("use_input_stats", [True, False], ids=["input-stats", "running-stats"])
def test_instance_norm(use_input_stats, dtype, rng):
    shape = (3, 4, 6, 5)
    x = rng.normal(2.0, 3.0, shape).astype(dtype)
    weight = rng.uniform(-2, 2, 4).astype(dtype)
    bias = rng.normal(size=4).astype(dtype)
    running_mean = rng.normal(size=4).astype(dtype)
    running_var = rng.uniform(0.5, 2, 4).astype(dtype)
    rm_t, rv_t = torch.from_numpy(running_mean.copy()), torch.from_numpy(running_var.copy())
    dy = rng.standard_normal(shape).astype(dtype)
    y_t, grads = torch_grads(lambda x, w, b: functional.instance_norm(
        x, rm_t, rv_t, w, b, use_input_stats=use_input_stats, momentum=0.2, eps=1e-5), x, (weight, bias), dy)
    rm, rv = running_mean.copy(), running_var.copy()
    y, mean, invstd = bnext.instance_norm(x, weight, bias, running_mean=rm, running_var=rv, momentum=0.2,
                                          use_input_stats=use_input_stats)
    grads_b = bnext.instance_norm_backward(dy, x, mean, invstd, weight, use_input_stats=use_input_stats)
    assert_all_close((y, rm, rv), (y_t, rm_t.numpy(), rv_t.numpy()), dtype, factor=10)
    assert_all_close(grads_b, grads, dtype, factor=100 if dtype == np.float32 else 1,
                     scales=(dx_scale(dy, invstd, weight), None, None))


def opinfo_samples(name):
    """PyTorch's own OpInfo sample inputs of `name` (float64, CPU), or a skip when they cannot be loaded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.testing._internal.common_methods_invocations import op_db
            (op,) = [op for op in op_db if op.name == name and op.variant_test_name == ""]
            return list(op.sample_inputs("cpu", torch.float64, requires_grad=False))
    except Exception as exc:  # the internal test package is not part of torch's public API
        pytest.skip(f"torch OpInfo samples of {name} unavailable: {exc!r}")


def usable(sample):
    """bnext requires eps > 0 (torch also accepts eps <= 0, e.g. OpInfo's eps=-0.5 sample)."""
    eps = sample.kwargs.get("eps", 1e-5)
    return eps > 0


def as_numpy(value):
    return value.detach().numpy().copy() if isinstance(value, torch.Tensor) else value


def check_sample(expected, actual):
    expected = as_numpy(expected)
    assert_all_close((actual,), (expected,), np.float64, factor=10)


def test_opinfo_layer_norm():
    samples = [sample for sample in opinfo_samples("nn.functional.layer_norm") if usable(sample)]
    assert samples
    for sample in samples:
        x = as_numpy(sample.input)
        normalized_shape, *rest = sample.args
        weight, bias = (list(map(as_numpy, rest)) + [None, None])[:2]
        eps = sample.kwargs.get("eps", 1e-5)
        expected = functional.layer_norm(sample.input, normalized_shape, *rest, **sample.kwargs)
        check_sample(expected, bnext.layer_norm(x, tuple(normalized_shape), weight, bias, eps=eps)[0])


def test_opinfo_group_norm():
    samples = [sample for sample in opinfo_samples("nn.functional.group_norm") if usable(sample)]
    assert samples
    for sample in samples:
        x = as_numpy(sample.input)
        num_groups, *rest = sample.args
        kwargs = dict(sample.kwargs)
        weight = as_numpy(kwargs.pop("weight", rest[0] if rest else None))
        bias = as_numpy(kwargs.pop("bias", rest[1] if len(rest) > 1 else None))
        eps = kwargs.pop("eps", 1e-5)
        expected = functional.group_norm(sample.input, num_groups, None if weight is None else torch.from_numpy(weight),
                                         None if bias is None else torch.from_numpy(bias), eps)
        check_sample(expected, bnext.group_norm(x, num_groups, weight, bias, eps=eps)[0])


def test_opinfo_instance_norm():
    samples = [sample for sample in opinfo_samples("nn.functional.instance_norm") if usable(sample)]
    assert samples
    for sample in samples:
        kwargs = {k: as_numpy(v) for k, v in sample.kwargs.items()}
        x = as_numpy(sample.input)
        torch_kwargs = {k: (torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
        expected = functional.instance_norm(sample.input, *sample.args, **torch_kwargs)
        names = ("running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps")
        call = dict(zip(names, sample.args))
        call.update(kwargs)
        for key in ("running_mean", "running_var"):
            if isinstance(call.get(key), np.ndarray):
                call[key] = call[key].copy()
        weight, bias = call.pop("weight", None), call.pop("bias", None)
        check_sample(expected, bnext.instance_norm(x, weight, bias, **call)[0])
