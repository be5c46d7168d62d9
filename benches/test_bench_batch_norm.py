"""pytest-benchmark suite: bnext, its NumPy reference, torch and a copy, side by side per case.

Each case is one pytest-benchmark ``group`` (``{op}-{shape}-{dtype}-{layout}-t{threads}``), so the
implementations print next to each other. The parameters and inputs come from ``conftest.py``.
"""


def test_batch_norm(benchmark, case, impl, bench_call, record_throughput):
    benchmark.group = case.group
    # A copy moves 2 arrays of x's size whatever the op; the ops move what Case.bytes_moved says.
    bytes_moved = case.copy_bytes if impl.startswith("copy") else case.bytes_moved
    benchmark.extra_info.update(
        op=case.op, shape=list(case.shape), dtype=case.dtype, layout=case.layout,
        threads=case.threads, implementation=impl, bytes_moved=bytes_moved,
    )
    benchmark(bench_call)
    if benchmark.stats is not None:  # None under --benchmark-disable: the call ran once, untimed
        benchmark.extra_info["GB/s"] = bytes_moved / benchmark.stats.stats.median / 1e9
        record_throughput(benchmark.extra_info["GB/s"])
