"""Fixtures of the benchmark suite; the cases and the implementation registry come from bnext._bench_cases.

Profiles, chosen with the environment variable ``BNEXT_BENCH_PROFILE``:

- ``small`` (default): three tiny shapes (one is the per-call cost case (2, 4, 1, 1)), float32, 1 thread.
  The normal test run (``--benchmark-disable`` in the pytest config) calls each benchmark once, so the
  suite cannot rot; this keeps that quick.
- ``full``: every shape of the performance issue, float32 and float64, 1 and 2 threads.

Run the timings with ``python -m pytest benches/ --benchmark-only`` (add ``--benchmark-json FILE``
to keep the ``extra_info``: bytes moved and GB/s); ``--benchmark-only`` overrides the
``--benchmark-disable`` of the pytest config.
"""

import os

import pytest

from bnext import _bench_cases as cases

PROFILES = {
    "small": {"shapes": cases.SMALL_SHAPES, "dtypes": ("float32",), "layouts": cases.LAYOUTS,
              "threads": (1,)},
    "full": {"shapes": cases.FULL_SHAPES, "dtypes": cases.DTYPES, "layouts": cases.LAYOUTS,
             "threads": (1, 2)},
}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # The pytest config's addopts has --benchmark-disable (every normal run calls each benchmark
    # once); asking for --benchmark-only means "time them", so let it override that default.
    if config.getoption("benchmark_only", default=False):
        config.option.benchmark_enable = True


def selected_profile():
    name = os.environ.get("BNEXT_BENCH_PROFILE", "small")
    if name not in PROFILES:
        raise pytest.UsageError(f"BNEXT_BENCH_PROFILE={name!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[name]


def implementations(case):
    """The implementations timed for ``case``, as pytest params (torch skipped when not installed)."""
    params = [pytest.param("bnext"), pytest.param("bnext-out"), pytest.param("reference")]
    missing_torch = cases.load_torch() is None
    params.append(pytest.param("torch", marks=pytest.mark.skipif(missing_torch, reason="torch not installed")))
    params.append(pytest.param("copy"))
    if case.threads > 1:
        params.append(pytest.param("copy-threaded"))
    return params


def pytest_generate_tests(metafunc):
    """Parametrize ``case`` x ``impl``; the implementations of one case run back to back."""
    if not {"case", "impl"} <= set(metafunc.fixturenames):
        return
    profile = selected_profile()
    params = []
    for case in cases.make_cases(cases.OPS, **profile):
        for impl in implementations(case):
            (name,) = impl.values
            params.append(pytest.param(case, name, marks=impl.marks, id=f"{case.group}-{name}"))
    metafunc.parametrize(("case", "impl"), params)


_inputs = {}  # at most one entry: consecutive cases share inputs, and full-profile arrays are large


@pytest.fixture
def bench_inputs(case):
    """The input arrays of ``case``, built once for all cases of the same shape, dtype and layout."""
    if case.data_key not in _inputs:
        _inputs.clear()
        _inputs[case.data_key] = cases.make_inputs(case)
    return _inputs[case.data_key]


@pytest.fixture
def bench_call(case, impl, bench_inputs):
    """A zero-argument callable running ``impl`` on ``case``, with bnext and torch at case.threads."""
    with cases.thread_count(case.threads):
        yield cases.make_call(impl, case, bench_inputs)


_throughput = {}  # group -> {implementation: GB/s}, filled only when benchmarks are timed


@pytest.fixture
def record_throughput(case, impl):
    """Call with the GB/s of this benchmark; the terminal summary lists them per group."""
    return lambda gb_per_s: _throughput.setdefault(case.group, {}).__setitem__(impl, gb_per_s)


def pytest_terminal_summary(terminalreporter):
    if not _throughput:
        return
    terminalreporter.section("throughput (GB/s of the bytes each op must move)")
    for group, by_impl in _throughput.items():
        cells = ", ".join(f"{impl} {gb_per_s:.1f}" for impl, gb_per_s in by_impl.items())
        terminalreporter.write_line(f"{group}: {cells}")
