"""Moments: merged from random splits equals the one-shot statistics; offsets; pickling; transport; errors."""

import pickle

import numpy as np
import pytest

import bnext
from bn_helpers import bitwise_equal


def one_shot(x):
    """Two-pass float64 statistics of x (samples on axis 0), exact enough to judge 1e-12.

    Deviations are taken from the first sample, and the variance from the unrounded mean offset: at an
    offset of 1e8 the mean itself is rounded to 1.5e-8, which would change a variance of 1e-6 by 1e-10.
    """
    x = x.astype(np.float64)
    deviations = x - x[0]
    offset = deviations.mean(axis=0)
    return x[0] + offset, ((deviations - offset) ** 2).mean(axis=0)


def split_moments(x, n_parts, rng, *, merge_tree=True):
    """Moments of x from n_parts random contiguous pieces, merged in a random order (or updated in sequence)."""
    cuts = np.sort(rng.choice(np.arange(1, len(x)), n_parts - 1, replace=False)) if n_parts > 1 else []
    pieces = np.split(x, cuts)
    if not merge_tree:
        moments = bnext.Moments()
        for piece in pieces:
            moments.update(piece)
        return moments
    parts = [bnext.Moments().update(piece) for piece in pieces]
    while len(parts) > 1:
        i, j = sorted(rng.choice(len(parts), 2, replace=False))
        merged = parts[i].merge(parts.pop(j))
        parts[i] = merged
    return parts[0]


@pytest.mark.parametrize("offset", [0.0, 1e8], ids=["centred", "offset1e8"])
@pytest.mark.parametrize("n_parts", [1, 2, 7, 100])
@pytest.mark.parametrize("merge_tree", [True, False], ids=["merged", "updated"])
def test_splits_equal_one_shot(n_parts, offset, merge_tree, rng):
    x = offset + rng.normal(0.0, 1.0, (3000, 5)) * np.array([1.0, 1e-3, 10.0, 1.0, 2.0])
    x[:, 3] = offset + 0.25  # a constant feature
    moments = split_moments(x, n_parts, rng, merge_tree=merge_tree)
    mean, var = one_shot(x)
    assert moments.count == len(x)
    # The mean relative to its own size or, near zero, to the spread.
    assert np.all(np.abs(moments.mean - mean) <= 1e-12 * (np.abs(mean) + np.sqrt(var)))
    np.testing.assert_allclose(moments.var(), var, rtol=1e-12, atol=0)
    np.testing.assert_allclose(moments.var(ddof=1), var * len(x) / (len(x) - 1), rtol=1e-12, atol=0)
    np.testing.assert_allclose(moments.std(), np.sqrt(var), rtol=1e-12, atol=0)
    assert moments.var()[3] == 0.0 and moments.mean[3] == x[0, 3]
    assert np.array_equal(moments.min, x.min(axis=0)) and np.array_equal(moments.max, x.max(axis=0))


def test_float32_batches_and_axes(rng):
    x = rng.normal(2.0, 3.0, (4, 200, 3)).astype(np.float32)
    moments = bnext.Moments().update(x[:, :120], axis=1).update(x[:, 120:], axis=1)
    mean, var = one_shot(np.moveaxis(x, 1, 0))
    assert moments.shape == (4, 3)
    assert np.all(np.abs(moments.mean - mean) <= 1e-12 * (np.abs(mean) + np.sqrt(var)))
    np.testing.assert_allclose(moments.var(), var, rtol=1e-12)


def test_pickle_and_arrays_round_trip(rng):
    moments = bnext.Moments().update(1e8 + rng.normal(size=(50, 4)))
    for copy in (pickle.loads(pickle.dumps(moments)), bnext.Moments.from_arrays(moments.to_arrays())):
        assert copy.count == moments.count
        for a, b in ((copy.mean, moments.mean), (copy.var(), moments.var()), (copy.min, moments.min)):
            assert bitwise_equal(a, b)
    arrays = moments.to_arrays()
    assert set(arrays) == {"count", "shift", "mean_offset", "m2", "min", "max"}
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    # Sent over a transport that only knows plain arrays, and merged on the other side.
    other = bnext.Moments().update(rng.normal(size=(30, 4)))
    merged = bnext.Moments.from_arrays(dict(arrays)).merge(other)
    assert merged.count == 80


def test_empty_and_state_errors():
    empty = bnext.Moments()
    assert empty.count == 0 and empty.shape is None
    with pytest.raises(ValueError, match="no samples"):
        empty.mean
    moments = bnext.Moments().update(np.ones((3, 2)))
    assert moments.merge(bnext.Moments()).count == 3
    assert bnext.Moments().merge(moments).count == 3
    with pytest.raises(ValueError, match="ddof"):
        moments.var(ddof=3)
    with pytest.raises(ValueError, match="feature shape"):
        moments.update(np.ones((3, 4)))
    with pytest.raises(ValueError, match="feature shape"):
        moments.merge(bnext.Moments().update(np.ones((3, 5))))
    with pytest.raises(TypeError, match="batch must be a float32 or float64 array, got int64"):
        moments.update(np.ones((3, 2), np.int64))
    with pytest.raises(TypeError, match="other must be a Moments"):
        moments.merge({})
    with pytest.raises(ValueError, match="missing"):
        bnext.Moments.from_arrays({"count": 3})
    assert moments.count == 3 and moments.shape == (2,)


def test_thread_count_invariance(rng):
    x = 1e4 + rng.normal(size=(20000, 7))
    old = bnext.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            bnext.set_num_threads(n)
            m = bnext.Moments().update(x[:7000]).update(x[7000:])
            results.append((m.mean, m.var()))
    finally:
        bnext.set_num_threads(old)
    assert all(bitwise_equal(a, b) for other in results[1:] for a, b in zip(results[0], other))


def test_against_scikit_learn_partial_fit(rng):
    preprocessing = pytest.importorskip("sklearn.preprocessing", exc_type=ImportError)
    x = rng.normal(5.0, 3.0, (1000, 4))
    scaler = preprocessing.StandardScaler()
    moments = bnext.Moments()
    for piece in np.array_split(x, 9):
        scaler.partial_fit(piece)
        moments.update(piece)
    np.testing.assert_allclose(moments.mean, scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(moments.var(), scaler.var_, rtol=1e-10)
    minmax = preprocessing.MinMaxScaler()
    for piece in np.array_split(x, 9):
        minmax.partial_fit(piece)
    assert np.array_equal(moments.min, minmax.data_min_) and np.array_equal(moments.max, minmax.data_max_)
