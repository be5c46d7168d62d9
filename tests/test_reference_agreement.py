"""Every kernel against its bnext.reference twin: dtype x layout/axis x contiguity x threads."""

import numpy as np
import pytest

from bn_helpers import (
    CONTIGUITIES, KERNEL_NAMES, LAYOUTS, as_tuple, assert_results_close, assert_running_close,
    call, copy_params, fast_and_reference, make_layout, make_params, random_x,
)


def run_pair(name, params):
    """Call fast on `params` and reference on a copy; return both results and the copies."""
    fast, ref = fast_and_reference(name)
    old = copy_params(params)
    ref_params = copy_params(params)
    actual = as_tuple(call(fast, params))
    expected = as_tuple(call(ref, ref_params))
    return actual, expected, ref_params, old


@pytest.mark.parametrize("contiguity", CONTIGUITIES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_matches_reference(name, layout, contiguity, dtype, n_threads, rng):
    shape, axis = LAYOUTS[layout]
    x = make_layout(random_x(shape, axis, dtype, rng), contiguity, axis)
    params = make_params(name, x, axis, rng)
    if "dy" in params:
        params["dy"] = make_layout(params["dy"], contiguity, axis)
    actual, expected, ref_params, old = run_pair(name, params)
    assert_results_close(name, actual, expected, params, what=f"{name} {layout} {contiguity}")
    if name == "batch_norm_train":
        assert_running_close(params, ref_params, old, what=name)


@pytest.mark.parametrize("layout", ["NC", "NCHW", "NHWC", "axis0"])
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_matches_reference_with_defaults(name, layout, dtype, rng):
    """weight and bias None (1 and 0), no running buffers."""
    shape, axis = LAYOUTS[layout]
    x = random_x(shape, axis, dtype, rng)
    params = make_params(name, x, axis, rng)
    optional = {"batch_norm_train": ("weight", "bias", "running_mean", "running_var", "momentum", "eps"),
                "batch_norm_eval": ("weight", "bias", "eps"),
                "batch_norm_backward": ("weight",)}[name]
    for key in optional:
        del params[key]
    actual, expected, _, _ = run_pair(name, params)
    assert_results_close(name, actual, expected, params, what=name)


@pytest.mark.parametrize("eps, momentum", [(1e-3, 0.3), (0.5, 1.0), (1e-12, 0.0)],
                         ids=["eps1e-3-mom0.3", "eps0.5-mom1", "eps1e-12-mom0"])
def test_train_matches_reference_with_eps_and_momentum(eps, momentum, dtype, rng):
    x = random_x((6, 4, 3), 1, dtype, rng)
    params = make_params("batch_norm_train", x, 1, rng)
    params.update(eps=eps, momentum=momentum)
    actual, expected, ref_params, old = run_pair("batch_norm_train", params)
    assert_results_close("batch_norm_train", actual, expected, params)
    assert_running_close(params, ref_params, old)


@pytest.mark.parametrize("eps", [1e-3, 0.5], ids=["eps1e-3", "eps0.5"])
def test_eval_matches_reference_with_eps(eps, dtype, rng):
    x = random_x((6, 4, 3), 1, dtype, rng)
    params = make_params("batch_norm_eval", x, 1, rng)
    params["eps"] = eps
    actual, expected, _, _ = run_pair("batch_norm_eval", params)
    assert_results_close("batch_norm_eval", actual, expected, params)


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_params_of_other_layouts(name, dtype, rng):
    """weight/bias/running stats/mean/invstd may themselves be strided or read-only."""
    x = random_x((5, 6, 4), 1, dtype, rng)
    params = make_params(name, x, 1, rng)
    for key in ("weight", "bias", "mean", "invstd"):
        if key in params:
            params[key] = make_layout(params[key], "negstride" if key in ("weight", "mean") else "readonly")
    for key in ("running_mean", "running_var"):
        if key in params:
            params[key] = make_layout(params[key], "strided")
    actual, expected, ref_params, old = run_pair(name, params)
    assert_results_close(name, actual, expected, params)
    if name == "batch_norm_train":
        assert_running_close(params, ref_params, old)
