"""standardize and minmax_scale: reference twin, scikit-learn, constant features, axes, layouts, errors."""

import numpy as np
import pytest

import bnext
from bn_helpers import bitwise_equal
from bnext import reference
from family_helpers import assert_all_close, laid_out

FUNCTIONS = ("standardize", "minmax_scale")
# name -> (shape, sample axis)
CASES = {
    "2d-axis0": ((200, 7), 0),
    "2d-axis1": ((7, 200), 1),
    "2d-axis-1": ((5, 300), -1),
    "1d": ((50,), 0),
    "one-feature": ((300, 1), 0),
    "3d-axis1": ((4, 30, 5), 1),
    "3d-axis0": ((30, 4, 5), 0),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", FUNCTIONS)
def test_matches_reference(name, case, dtype, rng):
    shape, axis = CASES[case]
    x = rng.normal(3.0, 2.0, shape).astype(dtype)
    fast, ref = getattr(bnext, name), getattr(reference, name)
    assert_all_close((fast(x, axis),), (ref(x, axis),), dtype)


@pytest.mark.parametrize("kind", ["F", "strided", "negstride", "readonly"])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_layouts(name, kind, rng):
    x = rng.normal(3.0, 2.0, (40, 6))
    fast, ref = getattr(bnext, name), getattr(reference, name)
    assert_all_close((fast(laid_out(x, kind)),), (ref(x),), np.float64)


def test_standardize_options(rng):
    x = rng.normal(3.0, 2.0, (40, 6))
    for kwargs in (dict(ddof=1), dict(eps=0.5), dict(ddof=2, eps=1e-3)):
        assert_all_close((bnext.standardize(x, **kwargs),), (reference.standardize(x, **kwargs),), np.float64)


def test_constant_features(dtype):
    x = np.empty((100, 3), dtype)
    x[:, 0] = 1e6 + 0.0625
    x[:, 1] = np.linspace(0, 1, 100)
    x[:, 2] = -3.0
    y = bnext.standardize(x)
    assert np.all(y[:, [0, 2]] == 0) and np.all(np.isfinite(y))
    z = bnext.minmax_scale(x, feature_range=(-2, 5))
    assert np.all(z[:, [0, 2]] == -2) and z[:, 1].min() == -2 and z[:, 1].max() == 5


def test_minmax_ignores_nan_like_scikit_learn():
    x = np.array([[1.0, np.nan], [np.nan, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(bnext.minmax_scale(x), [[0.0, np.nan], [np.nan, 0.0], [1.0, 1.0]])


def test_out_and_in_place(rng):
    x = rng.normal(size=(30, 4))
    for name in FUNCTIONS:
        fast = getattr(bnext, name)
        expected = fast(x)
        out = np.empty_like(x)
        assert fast(x, out=out) is out and bitwise_equal(out, expected)
        x_copy = x.copy()
        assert fast(x_copy, out=x_copy) is x_copy and bitwise_equal(x_copy, expected)
        odd_out = np.empty((4, 30)).T
        assert fast(x, out=odd_out) is odd_out and bitwise_equal(odd_out, expected)


def test_empty():
    assert bnext.standardize(np.zeros((0, 3))).shape == (0, 3)
    assert bnext.minmax_scale(np.zeros((5, 0), np.float32)).shape == (5, 0)


def test_thread_count_invariance(rng):
    x = 1e3 + rng.normal(size=(20000, 9))
    old = bnext.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            bnext.set_num_threads(n)
            results.append((bnext.standardize(x), bnext.minmax_scale(x)))
    finally:
        bnext.set_num_threads(old)
    assert all(bitwise_equal(a, b) for other in results[1:] for a, b in zip(results[0], other))


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x=np.ones((3, 2), np.int64)), TypeError, "x must be a float32 or float64 array, got int64"),
    (dict(x=np.float64(3.0)), ValueError, "at least 1 dimension"),
    (dict(axis=2), ValueError, "axis 2 is out of bounds"),
    (dict(axis=0.5), TypeError, "axis must be an integer"),
    (dict(out=np.ones((2, 3))), ValueError, "out must have shape"),
], ids=["int", "0d", "axis-range", "axis-float", "out-shape"])
def test_errors(name, kwargs, error, match):
    params = dict(x=np.ones((3, 2)), axis=0, out=np.full((3, 2), 7.0))
    params.update(kwargs)
    before = params["out"].copy()
    with pytest.raises(error, match=match):
        getattr(bnext, name)(params["x"], params["axis"], out=params["out"])
    assert np.array_equal(params["out"], before)


def test_specific_errors():
    with pytest.raises(ValueError, match="ddof"):
        bnext.standardize(np.ones((3, 2)), ddof=3)
    with pytest.raises(ValueError, match="eps"):
        bnext.standardize(np.ones((3, 2)), eps=-1.0)
    with pytest.raises(ValueError, match="feature_range"):
        bnext.minmax_scale(np.ones((3, 2)), feature_range=(1, 1))
    with pytest.raises(TypeError, match="feature_range"):
        bnext.minmax_scale(np.ones((3, 2)), feature_range=1)


def test_against_scikit_learn(rng):
    preprocessing = pytest.importorskip("sklearn.preprocessing", exc_type=ImportError)
    x = rng.normal(5.0, 3.0, (500, 6))
    x[:, 2] = 4.0
    np.testing.assert_allclose(bnext.standardize(x), preprocessing.StandardScaler().fit_transform(x),
                               rtol=1e-12, atol=1e-12)
    for feature_range in ((0, 1), (-1, 3)):
        expected = preprocessing.MinMaxScaler(feature_range=feature_range).fit_transform(x)
        np.testing.assert_allclose(bnext.minmax_scale(x, feature_range=feature_range), expected, rtol=1e-12,
                                   atol=1e-12)
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(bnext.standardize(x32), preprocessing.StandardScaler().fit_transform(x32),
                               rtol=1e-5, atol=1e-5)
