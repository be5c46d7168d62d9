"""The build: OpenMP present when expected, and every SIMD build of the kernels (and of the small-call entries)
gives the same bits."""

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

import bnext
from bnext import _dispatch, _runtime


def openmp_expected():
    # As in setup.py: "1" requires OpenMP on any platform (CI and the Linux and Windows wheels set it), "0"
    # builds without it, anything else probes for it, which only a Linux compiler is sure to pass.
    wanted = os.environ.get("BNEXT_OPENMP", "auto")
    return wanted == "1" or (wanted != "0" and sys.platform.startswith("linux"))


def test_openmp_was_not_lost():
    if not openmp_expected():
        pytest.skip("a build without OpenMP was asked for, or this platform may lack it")
    assert _runtime.openmp_enabled(), "OpenMP was expected but the kernels were built without it"
    assert _runtime.max_threads() >= 1


def test_dispatch_picks_the_fastest_available_build():
    builds = _dispatch.available_builds()
    assert builds[0] == "baseline"
    expected = os.environ.get("BNEXT_SIMD") or builds[-1]
    assert _dispatch.simd_path == expected
    assert _dispatch.kernels.__name__ == _dispatch._MODULES[expected]
    assert _dispatch.small_calls.__name__ == _dispatch._MODULES[expected].replace("_batch_norm", "_small_calls")
    assert _dispatch.large_calls.__name__ == _dispatch._MODULES[expected].replace("_batch_norm", "_large_calls")


def run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env)


@pytest.mark.parametrize("build", _dispatch.available_builds())
def test_forced_build_is_used(build):
    result = run_python("import bnext._dispatch as d; print(d.simd_path)", BNEXT_SIMD=build)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == build


def test_unknown_forced_build_is_an_import_error():
    result = run_python("import bnext", BNEXT_SIMD="sse9")
    assert result.returncode != 0
    assert "BNEXT_SIMD must be one of" in result.stderr


def kernel_outputs(module, x, dy):
    """Every kernel of one build on (outer, C, inner) data, outputs concatenated as raw bytes."""
    n_channels = x.shape[1]
    mean, var = np.zeros(n_channels), np.zeros(n_channels)
    module.batch_stats(x, mean, var, 2)
    invstd = 1.0 / np.sqrt(var + 1e-5)
    weight = np.linspace(0.5, 2.0, n_channels)
    y = np.empty_like(x)
    module.normalize(x, mean, invstd * weight, weight[::-1].copy(), y, 2)
    sum_dy, sum_dy_xmu = np.zeros(n_channels), np.zeros(n_channels)
    module.gradient_sums(dy, x, mean, sum_dy, sum_dy_xmu, 2)
    dx = np.empty_like(x)
    module.input_gradient(dy, x, mean, invstd, weight * invstd, -sum_dy_xmu * invstd / x.size,
                          -sum_dy / x.size, dx, 2)
    return b"".join(a.tobytes() for a in (mean, var, y, sum_dy, sum_dy_xmu, dx))


def assert_builds_agree(outputs, modules, shape, dtype):
    """outputs(module, x, dy) is the same for every available build of `modules` ("_batch_norm": the kernels,
    "_small_calls": the small-call entries) as for the baseline build."""
    builds = _dispatch.available_builds()
    if len(builds) < 2:
        pytest.skip("only one kernel build on this machine")
    rng = np.random.default_rng(7)
    x = (1e3 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    results = {build: outputs(importlib.import_module(_dispatch._MODULES[build].replace("_batch_norm", modules)), x, dy)
               for build in builds}
    for build in builds[1:]:
        assert results[build] == results["baseline"], f"{build} differs from the baseline build"


@pytest.mark.parametrize("shape", [(4, 8, 300), (2, 3, 9000), (500, 24, 1), (64, 1, 1)],
                         ids=["nchw", "long-rows", "channels-last", "one-channel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_simd_builds_are_bitwise_identical(shape, dtype):
    assert_builds_agree(kernel_outputs, "_batch_norm", shape, dtype)


def small_call_outputs(module, x, dy):
    """Every plain-call entry of one build on (N, C, H, W) data, outputs concatenated as raw bytes."""
    n_channels, length = x.shape[1], x.shape[-1]
    weight, layer_weight = np.linspace(0.5, 2.0, n_channels), np.linspace(-1.0, 1.0, length)
    running_mean, running_var = np.zeros(n_channels), np.ones(n_channels)
    y, mean, invstd = module.train(x, weight, weight[::-1].copy(), 1, 1e-5, running_mean, running_var, 0.1, None)
    outputs = [y, mean, invstd, running_mean, running_var,
               module.eval(x, running_mean, running_var, weight, None, 1, 1e-5, None),
               *module.backward(dy, x, mean, invstd, weight, 1, None)]
    y, mean, invstd = module.layer_norm(x, length, layer_weight, None, 1e-5, None)
    outputs += [y, mean, invstd, *module.layer_norm_backward(dy, x, mean, invstd, layer_weight, length, None)]
    y, mean, invstd = module.group_norm(x, 2, weight, None, 1e-5, None)
    outputs += [y, mean, invstd, *module.group_norm_backward(dy, x, mean, invstd, weight, 2, True, None)]
    outputs += module.instance_norm(x, weight, None, 1e-5, running_mean, running_var, 0.1, True, None)
    return b"".join(a.tobytes() for a in outputs)


@pytest.mark.parametrize("modules", ["_small_calls", "_large_calls"])
@pytest.mark.parametrize("shape", [(2, 4, 1, 3), (8, 64, 7, 7), (3, 6, 10, 40)], ids=["tiny", "7x7", "rows-of-40"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_plain_call_builds_are_bitwise_identical(modules, shape, dtype):
    assert_builds_agree(small_call_outputs, modules, shape, dtype)


def test_version_is_single_sourced():
    from bnext._version import __version__

    assert bnext.__version__ == __version__


def test_show_config_reports_the_build(capsys):
    info = bnext.build_info()
    assert info["simd_path"] == _dispatch.simd_path
    assert info["openmp"] == _runtime.openmp_enabled()
    assert info["num_threads"] == bnext.get_num_threads()
    bnext.show_config()
    printed = capsys.readouterr().out
    assert f"simd_path    {_dispatch.simd_path}" in printed
    assert bnext.__version__ in printed


def test_show_config_names_compiler_and_flags():
    info = bnext.build_info()
    if sys.platform != "win32":
        assert info["compiler"].startswith(("gcc", "clang")), info["compiler"]
    if _runtime.openmp_enabled() and sys.platform.startswith("linux"):
        assert "-fopenmp" in info["flags"]
    if sys.platform != "win32":
        # Each flag as written (stringized as preprocessor tokens, -fno-math-errno came out macro-expanded).
        assert {"-ffp-contract=off", "-fno-math-errno"} <= set(info["flags"].split()), info["flags"]
    if sys.platform == "win32":  # MSVC: the flags reach show_config as preprocessor tokens
        assert "/O2" in info["flags"], info["flags"]
    if _dispatch.simd_path == "avx512":
        assert "-mavx512f" in info["flags"]
