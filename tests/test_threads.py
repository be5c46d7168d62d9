"""Thread-count invariance (bitwise) and concurrent calls from Python threads."""

import threading

import numpy as np
import pytest

import bnext
from bn_helpers import KERNEL_NAMES, as_tuple, bitwise_equal, call, copy_params, make_params, random_x

# Shapes that exercise the parallel paths: many channels, few channels with a long batch,
# channels-last, and a spatial NCHW batch. Each has at least PARALLEL_MIN_VALUES (src/_parallel.pxd) values:
# smaller inputs run on the calling thread whatever the thread count.
PARALLEL_MIN_VALUES = 32768
SHAPES = {
    "many-channels": ((48, 700), 1),
    "few-channels-long-batch": ((40000, 3), 1),
    "channels-last": ((32, 16, 16, 5), -1),
    # rows of 200 channels, under 2 KiB apart: the gradient sums' register strips
    "channels-last-strips": ((20, 6, 5, 200), -1),
    "NCHW": ((32, 3, 20, 20), 1),
    "NCHW-short-rows": ((40, 21, 7, 7), 1),
    "NCHW-long-rows": ((3, 2, 9000), 1),
    "one-channel": ((50000, 1), 1),
}


@pytest.fixture
def restore_threads():
    old = bnext.get_num_threads()
    yield
    bnext.set_num_threads(old)


def run_with_threads(name, params, n_threads):
    bnext.set_num_threads(n_threads)
    assert bnext.get_num_threads() == n_threads
    params = copy_params(params)
    results = as_tuple(call(getattr(bnext, name), params))
    buffers = tuple(params[k] for k in ("running_mean", "running_var") if k in params)
    return results + buffers


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_bitwise_identical_for_1_2_3_threads(name, shape, dtype, rng, restore_threads):
    x = random_x(*SHAPES[shape], dtype, rng, offset=100.0)
    assert x.size >= PARALLEL_MIN_VALUES  # else every thread count runs the same single-threaded code
    params = make_params(name, x, SHAPES[shape][1], rng)
    serial = run_with_threads(name, params, 1)
    for n_threads in (2, 3):
        parallel = run_with_threads(name, params, n_threads)
        for index, (a, b) in enumerate(zip(serial, parallel)):
            assert bitwise_equal(a, b), f"output {index} differs between 1 and {n_threads} threads"


def test_repeated_runs_are_bitwise_identical(rng, restore_threads):
    x = random_x((3000, 7), 1, np.float32, rng, offset=1e4)
    bnext.set_num_threads(2)
    first = bnext.batch_norm_train(x)
    for _ in range(5):
        again = bnext.batch_norm_train(x)
        assert all(bitwise_equal(a, b) for a, b in zip(first, again))


def test_set_num_threads_rejects_non_positive(restore_threads):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n_threads|thread"):
            bnext.set_num_threads(bad)


def test_get_num_threads_default_is_positive():
    assert bnext.get_num_threads() >= 1


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_concurrent_python_threads_get_serial_results(name, dtype, rng):
    """4 Python threads calling at once (with different data) each get their serial result."""
    inputs = []
    for k in range(4):
        shape, axis = ((2000, 6), 1) if k % 2 else ((8, 5, 10, 10), 1)
        inputs.append(make_params(name, random_x(shape, axis, dtype, rng, offset=float(k)), axis, rng))
    expected = [as_tuple(call(getattr(bnext, name), copy_params(p))) for p in inputs]
    barrier = threading.Barrier(4)
    results = [None] * 4
    errors = []

    def work(k):
        try:
            barrier.wait()
            for _ in range(10):
                results[k] = as_tuple(call(getattr(bnext, name), copy_params(inputs[k])))
                if not all(bitwise_equal(a, b) for a, b in zip(results[k], expected[k])):
                    errors.append(f"thread {k} got a different result")
                    return
        except Exception as error:  # reported below, in the main thread
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors
