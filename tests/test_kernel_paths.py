"""Each traversal the kernels choose from the shape agrees with the reference.

The kernels walk (outer, C, inner) views in one of several ways (src/_batch_norm_kernels.pxi); these shapes
put each one, and its chunk boundaries, under test in float64 where the tolerance is tight.
"""

import numpy as np
import pytest

from bn_helpers import (KERNEL_NAMES, as_tuple, assert_results_close, call, copy_params, fast_and_reference,
                        implementation, make_params, random_x)

PATHS = {
    # inner <= 256: per-position lanes, 8 channels per work item (21 = 2 full chunks + 5).
    "short-rows": ((20, 21, 7, 7), 1),
    # The elementwise kernels (normalize, dx) over inner < 4096 take 4096 // inner channels of one batch row
    # per work item: 83 for 7x7 (100 = 83 + 17, and 39200 values: the threaded kernels, not the small calls).
    "short-rows-elementwise": ((8, 100, 7, 7), 1),
    # 256 < inner < 4096: a fold per row, 64 channels per work item (70 = 64 + 6), several row groups.
    "medium-rows": ((40, 70, 300), 1),
    # inner >= 4096: rows cut into equal chunks.
    "long-rows": ((3, 5, 9001), 1),
    # channels-last, C > 1: channel-minor blocks of >= 256 rows, merged 64 channels at a time (130 = 2*64 + 2).
    "channels-last": ((300, 130), 1),
    # channels-last with rows of at most 2 KiB: the gradient sums go down the rows in strips of 64 channels
    # (200 = a head up to the first cache line, whole strips, a tail).
    "channels-last-strips": ((700, 200), -1),
    # few channels: packed tiles, blocks of 5461 rows (16384 // 3), here three of them.
    "channels-last-few": ((12000, 3), -1),
    # one channel, inner == 1: turned into one long run.
    "one-channel": ((9000, 1), 1),
    # a channel axis in the middle of a 5-D array.
    "middle-axis": ((2, 3, 6, 4, 5), 2),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_each_traversal_matches_reference(name, path, dtype, rng):
    shape, axis = PATHS[path]
    x = random_x(shape, axis, dtype, rng, offset=50.0, spread=3.0)
    params = make_params(name, x, axis, rng)
    fast, reference = fast_and_reference(name)
    actual = as_tuple(call(fast, copy_params(params)))
    expected = as_tuple(call(reference, copy_params(params)))
    assert_results_close(name, actual, expected, params, what=path)


@pytest.mark.parametrize("offset", [0, 1, 5, 12], ids=lambda k: f"offset{k}")
def test_gradient_strips_from_any_cache_line_offset(offset, dtype, rng):
    # The strips start at dy's first cache-line boundary: each offset of the data from a line gives another
    # split into head, strips and tail; each must give the reference's sums.
    n_rows, n_channels = 600, 150
    x = random_x((n_rows, n_channels), 1, dtype, rng, offset=50.0, spread=3.0)
    params = make_params("batch_norm_backward", x, 1, rng)
    for key in ("dy", "x"):
        buffer = np.empty(n_rows * n_channels + 32, dtype)
        start = (-buffer.ctypes.data % 64) // buffer.itemsize + offset
        view = buffer[start:start + n_rows * n_channels].reshape(n_rows, n_channels)
        view[...] = params[key]
        assert (view.ctypes.data - offset * view.itemsize) % 64 == 0
        params[key] = view
    fast, reference = fast_and_reference("batch_norm_backward")
    actual = as_tuple(call(fast, params))  # (the backward does not write its inputs; copies would move them)
    expected = as_tuple(call(reference, copy_params(params)))
    assert_results_close("batch_norm_backward", actual, expected, params, what=f"offset {offset}")


@pytest.mark.parametrize("step", [-1, 2, -3], ids=lambda s: f"rows[::{s}]")
def test_gradient_strips_over_strided_rows(step, dtype, rng):
    # Row strides of either sign reach the strips as they are (the views are not copied).
    n_channels = 150
    x_full = random_x((900, n_channels), 1, dtype, rng, offset=50.0, spread=3.0)
    params = make_params("batch_norm_backward", x_full, 1, rng)
    params["x"] = params["x"][::step]
    params["dy"] = params["dy"][::step]
    params["mean"], params["invstd"] = implementation("reference", "batch_norm_train")(params["x"], axis=1)[1:]
    fast, reference = fast_and_reference("batch_norm_backward")
    actual = as_tuple(call(fast, params))
    expected = as_tuple(call(reference, copy_params(params)))
    assert_results_close("batch_norm_backward", actual, expected, params, what=f"rows[::{step}]")
