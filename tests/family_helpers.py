"""Shared pieces of the normalization-family tests (layer/group/instance norm): data, comparisons, finite
differences. Kept apart from bn_helpers (batch norm's) and imported as `from family_helpers import ...`."""

import numpy as np

from bn_helpers import RTOL, assert_close, make_layout


def scale_of(a):
    """max |a| over finite entries (at least 1e-300), the scale a result is judged against."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.abs(a[np.isfinite(a)])
    return max(float(finite.max()) if finite.size else 0.0, 1e-300)


def assert_all_close(actual, expected, dtype, what="", factor=1.0, scales=None):
    """Each result of a tuple within RTOL[dtype] * factor of its scale: its own, or scales[k] when given."""
    for k, (a, e) in enumerate(zip(actual, expected)):
        scale = scales[k] if scales is not None and scales[k] is not None else scale_of(e)
        assert_close(np.asarray(a), np.asarray(e).astype(dtype), dtype=dtype, scale=factor * scale,
                     what=f"{what}[{k}]")


def dx_scale(dy, invstd, weight):
    """The size of the terms dx is a difference of: |dy| * |weight| * invstd (dx itself may cancel to ~0)."""
    w = 1.0 if weight is None else scale_of(weight)
    return scale_of(dy) * w * scale_of(invstd)


def laid_out(x, kind):
    return make_layout(x, kind)


def finite_difference(function, arrays, index, direction, h=1e-6):
    """Directional derivative of function(*arrays) along `direction` of arrays[index], central differences."""
    plus = list(arrays)
    minus = list(arrays)
    plus[index] = arrays[index] + h * direction
    minus[index] = arrays[index] - h * direction
    return (function(*plus) - function(*minus)) / (2 * h)


def check_gradients(loss, grads, arrays, rng, n_directions=3, rtol=1e-6):
    """The analytic gradients `grads` (one per array) agree with finite differences of `loss` in random
    directions: <grad, v> == d loss / d v."""
    for index, (array, grad) in enumerate(zip(arrays, grads)):
        for _ in range(n_directions):
            v = rng.standard_normal(array.shape)
            numeric = finite_difference(loss, arrays, index, v)
            analytic = float(np.sum(grad * v))
            assert abs(numeric - analytic) <= rtol * max(1.0, abs(analytic)), (index, numeric, analytic)


__all__ = ["RTOL", "assert_all_close", "check_gradients", "dx_scale", "laid_out", "scale_of"]
