"""Thread control with the rest of the ecosystem: threadpoolctl, OMP_NUM_THREADS, and PyTorch's OpenMP.

bnext's default thread count is the OpenMP runtime's ``omp_get_max_threads()``, so whatever sets that
runtime's team size (``OMP_NUM_THREADS``, threadpoolctl) sets bnext's; ``bnext.set_num_threads`` overrides
them all. What a fresh process sees is tested in subprocesses, so the test run's own state cannot leak in.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

import bnext
from bnext import _runtime, _threads

threadpoolctl = pytest.importorskip("threadpoolctl")

needs_openmp = pytest.mark.skipif(not _runtime.openmp_enabled(), reason="bnext was built without OpenMP")

# The OpenMP runtimes threadpoolctl knows: GCC's libgomp, LLVM's libomp, Intel's libiomp, MSVC's vcomp.
OPENMP_PREFIXES = ("libgomp", "libomp", "libiomp", "vcomp")


@pytest.fixture
def default_threads():
    """bnext without a set_num_threads override (other tests' fixtures leave one), restored afterwards."""
    saved = _threads._override
    bnext.set_num_threads(None)
    yield
    bnext.set_num_threads(saved)


def run_json(code, **env):
    """Run `code` in a fresh interpreter (outside any source tree) and return what it printed as JSON."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    full_env.update(env)
    completed = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                               env=full_env, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


@needs_openmp
def test_threadpool_info_lists_bnexts_openmp_runtime():
    info = run_json("""
        import json, bnext, threadpoolctl
        print(json.dumps(threadpoolctl.threadpool_info()))
    """)
    # NumPy brings BLAS but no OpenMP, so the one OpenMP runtime loaded is the one bnext links.
    openmp = [entry for entry in info if entry["user_api"] == "openmp"]
    assert len(openmp) == 1, info
    assert openmp[0]["prefix"] in OPENMP_PREFIXES
    assert os.path.basename(openmp[0]["filepath"]).startswith(OPENMP_PREFIXES)
    assert openmp[0]["num_threads"] >= 1


@needs_openmp
def test_threadpool_info_thread_count_is_bnexts_default(default_threads):
    openmp = [entry for entry in threadpoolctl.threadpool_info() if entry["user_api"] == "openmp"]
    assert openmp
    assert bnext.get_num_threads() in {entry["num_threads"] for entry in openmp}


def test_default_is_the_openmp_runtimes_team_size(default_threads):
    assert bnext.get_num_threads() == _runtime.max_threads() >= 1


@needs_openmp
@pytest.mark.parametrize("user_api", ["openmp", None], ids=["openmp", "all"])
def test_threadpool_limits_limits_bnext(user_api, default_threads):
    before = bnext.get_num_threads()
    with threadpoolctl.threadpool_limits(1, user_api=user_api):
        assert bnext.get_num_threads() == 1
    assert bnext.get_num_threads() == before


@needs_openmp
def test_threadpool_limits_above_the_default_raises_bnexts_count(default_threads):
    with threadpoolctl.threadpool_limits(3, user_api="openmp"):
        assert bnext.get_num_threads() == 3


@needs_openmp
def test_set_num_threads_overrides_threadpool_limits(default_threads):
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        bnext.set_num_threads(2)
        assert bnext.get_num_threads() == 2
        bnext.set_num_threads(None)
        assert bnext.get_num_threads() == 1


@needs_openmp
@pytest.mark.parametrize("omp_num_threads", ["1", "3"])
def test_omp_num_threads_is_honoured(omp_num_threads):
    seen = run_json("""
        import json, bnext, threadpoolctl
        openmp = [e["num_threads"] for e in threadpoolctl.threadpool_info() if e["user_api"] == "openmp"]
        print(json.dumps([bnext.get_num_threads(), openmp]))
    """, OMP_NUM_THREADS=omp_num_threads)
    assert seen == [int(omp_num_threads), [int(omp_num_threads)]]


def test_set_num_threads_overrides_omp_num_threads():
    seen = run_json("""
        import json, bnext
        bnext.set_num_threads(2)
        print(json.dumps(bnext.get_num_threads()))
    """, OMP_NUM_THREADS="1")
    assert seen == 2


# ----------------------------------------------------------------- PyTorch in the same process

# Every kernel on data with a large offset, with 2 threads; prints a digest of the outputs and the thread
# counts bnext sees by default, under an explicit override, and after torch changed its own thread count.
TORCH_SCRIPT = """
    import hashlib, json, sys
    {first}
    import numpy as np
    rng = np.random.default_rng(3)
    x = (1e4 + rng.standard_normal((16, 12, 9, 9))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    weight, bias = rng.uniform(0.5, 2, 12).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    running_mean, running_var = np.zeros(12, np.float32), np.ones(12, np.float32)
    default_threads = bnext.get_num_threads()
    bnext.set_num_threads(2)
    y, mean, invstd = bnext.batch_norm_train(x, weight, bias, running_mean=running_mean,
                                             running_var=running_var)
    outputs = [y, mean, invstd, running_mean, running_var,
               bnext.batch_norm_eval(x, running_mean, running_var, weight, bias),
               *bnext.batch_norm_backward(dy, x, mean, invstd, weight),
               *bnext.batch_norm_train(x.transpose(0, 2, 3, 1), axis=-1)]
    digest = hashlib.sha256(b"".join(a.tobytes() for a in outputs)).hexdigest()
    override_threads = bnext.get_num_threads()
    if "torch" in sys.modules:
        import torch
        torch.nn.functional.batch_norm(torch.ones(4, 3, 5, 5), None, None, training=True)
        torch.set_num_threads(1)
    print(json.dumps({{"digest": digest, "default": default_threads, "override": override_threads,
                      "override_after_torch": bnext.get_num_threads()}}))
"""

TORCH_ORDERS = {
    "no-torch": "import bnext",
    "torch-first": "import torch, bnext",
    "torch-after": "import bnext, torch",
}


def run_torch_script(order):
    return run_json(TORCH_SCRIPT.format(first=TORCH_ORDERS[order]))


@pytest.fixture(scope="module")
def without_torch():
    return run_torch_script("no-torch")


@pytest.mark.parametrize("order", ["torch-first", "torch-after"])
def test_importing_torch_changes_neither_results_nor_thread_settings(order, without_torch):
    pytest.importorskip("torch", exc_type=ImportError)
    with_torch = run_torch_script(order)
    assert with_torch["digest"] == without_torch["digest"], "bnext's results changed with torch loaded"
    assert with_torch["default"] == without_torch["default"]
    assert with_torch["override"] == without_torch["override"] == 2
    # torch.set_num_threads(1) cannot touch an explicit bnext.set_num_threads.
    assert with_torch["override_after_torch"] == 2


def bnext_vendors_libgomp():
    """True for an auditwheel-repaired install: bnext.libs/ beside the package holds a renamed libgomp."""
    libs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(bnext.__file__))), "bnext.libs")
    return os.path.isdir(libs) and any(name.startswith("libgomp") for name in os.listdir(libs))


# Where torch's OpenMP runtime is known to be GCC's libgomp under bnext's soname, libgomp.so.1. On aarch64
# Linux torch vendors a renamed libgomp-<hash>.so.1 and on Windows it uses Intel's OpenMP beside bnext's
# MSVC vcomp, so there whether the two share a runtime depends on details of torch's build.
on_x86_64_linux = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="torch's OpenMP runtime is known to be libgomp.so.1, the one bnext links, only on x86_64 Linux",
)


@needs_openmp
@on_x86_64_linux
@pytest.mark.parametrize("order", ["torch-first", "torch-after"])
def test_torch_set_num_threads_reaches_bnexts_default_only_through_a_shared_runtime(order):
    """torch.set_num_threads moves bnext's default exactly when bnext's OpenMP calls reach torch's libgomp.

    A build from source links libgomp.so.1, the soname of torch's own copy, so the process has one runtime
    whatever the order. The repaired wheel's renamed libgomp stays separate when bnext is imported first;
    torch loads its libgomp with global symbol visibility, so when torch comes first bnext binds to it.
    """
    pytest.importorskip("torch", exc_type=ImportError)
    seen = run_json(f"""
        import json
        {TORCH_ORDERS[order]}
        before = bnext.get_num_threads()
        torch.set_num_threads(1)
        after = bnext.get_num_threads()
        bnext.set_num_threads(2)
        print(json.dumps([before, after, bnext.get_num_threads()]))
    """, OMP_NUM_THREADS="2")
    shared = not bnext_vendors_libgomp() or order == "torch-first"
    assert seen == [2, 1 if shared else 2, 2]
