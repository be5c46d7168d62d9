"""Outputs of 16 MiB and more are written with streaming stores (src/_stream.pxd): the same values by another
store path, which stages values and handles the unaligned head and tail of every run itself. These tests run
that path: against the reference, against the plain-store path (the same computation on pieces below the
threshold, bitwise), into misaligned and in-place outputs, and at several thread counts (each thread fences
its own streamed stores)."""

import numpy as np
import pytest

import bnext
from bn_helpers import assert_results_close, bitwise_equal, call, copy_params, fast_and_reference, make_params
from bn_helpers import random_x

STREAM_MIN_BYTES = 16 * 2**20  # src/_stream.pxd
# Rows of 1030 values: 4 KiB runs (long enough to stream) whose ends are not on cache lines.
ROW = 1030
OUTS = ("fresh", "misaligned", "in_place")


def streamed_shape(dtype, n_channels=4):
    """(N, C, ROW) just above the streaming threshold, plus one sample so halves stay below it."""
    n = STREAM_MIN_BYTES // (n_channels * ROW * np.dtype(dtype).itemsize) + 1
    return (n, n_channels, ROW)


def misaligned_like(a):
    """An uninitialised array like a that starts one value past its buffer's start."""
    return np.empty(a.size + 1, a.dtype)[1:].reshape(a.shape)


def with_out(params, name, kind):
    if kind == "fresh":
        return params
    target = params["dy"] if name == "batch_norm_backward" else params["x"]
    params["out"] = target if kind == "in_place" else misaligned_like(target)
    return params


@pytest.fixture(scope="module")
def big_x():
    rng = np.random.default_rng(20261122)
    return {np.dtype(d): random_x(streamed_shape(d), 1, d, rng, offset=50.0) for d in (np.float32, np.float64)}


@pytest.mark.parametrize("out_kind", OUTS)
@pytest.mark.parametrize("name", ("batch_norm_train", "batch_norm_eval", "batch_norm_backward"))
def test_streamed_batch_norm_matches_reference(name, out_kind, dtype, big_x, rng):
    x = big_x[dtype].copy()
    assert x.nbytes >= STREAM_MIN_BYTES
    params = make_params(name, x, 1, rng)
    fast, ref = fast_and_reference(name)
    expected = call(ref, copy_params(params))
    params = with_out(params, name, out_kind)
    actual = call(fast, params)
    assert_results_close(name, actual, expected, params, what=f"{name} {out_kind}")
    if out_kind != "fresh":
        first = actual[0] if isinstance(actual, tuple) else actual
        assert first is params["out"]


def halves_agree(function, x, **kwargs):
    """function on the whole batch (streamed) and on each half (plain stores) give the same bits."""
    assert x.nbytes >= STREAM_MIN_BYTES > x[: len(x) // 2 + 1].nbytes
    whole = function(x, **kwargs)
    whole = whole if isinstance(whole, tuple) else (whole,)
    half = len(x) // 2
    for piece in (slice(0, half), slice(half, None)):
        part = function(np.ascontiguousarray(x[piece]), **kwargs)
        part = part if isinstance(part, tuple) else (part,)
        for index, (a, b) in enumerate(zip(whole, part)):
            assert bitwise_equal(a[piece], b), f"output {index} differs on rows {piece}"


def test_streamed_eval_equals_plain_stores(dtype, big_x, rng):
    mean, var = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    halves_agree(lambda x: bnext.batch_norm_eval(x, mean, var, axis=1), big_x[dtype])


@pytest.mark.parametrize("out_kind", ("fresh", "misaligned"))
def test_streamed_group_norm_equals_plain_stores(out_kind, dtype, big_x):
    x = big_x[dtype].reshape(len(big_x[dtype]), 4, 2, ROW // 2)
    weight, bias = np.linspace(0.5, 2.0, 4), np.linspace(-1.0, 1.0, 4)

    def forward(v):
        out = misaligned_like(v) if out_kind == "misaligned" else None
        return bnext.group_norm(v, 2, weight, bias, out=out)

    halves_agree(forward, x)


def test_streamed_layer_norm_equals_plain_stores(dtype, big_x):
    x = big_x[dtype].reshape(len(big_x[dtype]), 4 * ROW)
    halves_agree(lambda v: bnext.layer_norm(v, v.shape[-1], np.linspace(0.5, 2.0, v.shape[-1])), x)


def test_streamed_group_norm_backward_dx_equals_plain_stores(dtype, big_x, rng):
    x = big_x[dtype]
    dy = rng.standard_normal(x.shape).astype(dtype)
    _, mean, invstd = bnext.group_norm(x, 2)

    def dx_of(rows):
        return bnext.group_norm_backward(dy[rows], x[rows], mean[rows], invstd[rows], num_groups=2)[0]

    half = len(x) // 2
    whole = dx_of(slice(None))
    assert whole.nbytes >= STREAM_MIN_BYTES > whole[:half + 1].nbytes
    assert bitwise_equal(whole[:half], dx_of(slice(0, half)))
    assert bitwise_equal(whole[half:], dx_of(slice(half, None)))


@pytest.mark.parametrize("name", ("batch_norm_train", "batch_norm_backward"))
def test_streamed_results_identical_for_1_2_3_threads(name, big_x, rng):
    x = big_x[np.dtype(np.float32)]
    params = make_params(name, x, 1, rng)
    old = bnext.get_num_threads()
    results = []
    try:
        for n_threads in (1, 2, 3):
            bnext.set_num_threads(n_threads)
            results.append(call(getattr(bnext, name), copy_params(params)))
    finally:
        bnext.set_num_threads(old)
    for other in results[1:]:
        for index, (a, b) in enumerate(zip(results[0], other)):
            assert bitwise_equal(a, b), f"output {index} differs with the thread count"
