"""Streaming per-feature moments: count, mean, variance, min and max, merged with Chan's formula.

For data that does not fit in memory or lives on several workers: update with batches, merge partial
results in any order, no second pass. Each batch's mean and M2 come from batch norm's batch_stats kernel
(double accumulation, bitwise thread-count invariant); the merges are NumPy arithmetic on (features,)
vectors.

Means are kept as ``shift + mean_offset``, where shift is a data value of the first batch: the deltas of
Chan's formula are then differences of small offsets, so data far from zero (an offset of 1e8 with unit
spread) loses nothing to the rounding of the mean itself.
"""
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _validation as check
from ._dispatch import kernels
from ._layout import readable_view
from ._threads import get_num_threads
from .scaling import SampleProblem
from ._typing import Array, ArrayLike, Float64Array

_FIELDS = ("count", "shift", "mean_offset", "m2", "min", "max")


class Moments:
    """Streaming per-feature statistics of batches of samples.

    Examples
    --------
    >>> import numpy as np, bnext
    >>> x = np.arange(12.0).reshape(6, 2)
    >>> a = bnext.Moments().update(x[:2])
    >>> b = bnext.Moments().update(x[2:])
    >>> merged = a.merge(b)
    >>> merged.count, merged.mean, merged.var(ddof=1), merged.max
    (6, array([5., 6.]), array([14., 14.]), array([10., 11.]))
    """

    def __init__(self) -> None:
        self._count = 0
        self._shape: tuple[int, ...] | None = None
        # The feature arrays exist from the first batch on; every reader checks the count first.
        self._shift: Float64Array
        self._mean_offset: Float64Array
        self._m2: Float64Array
        self._min: Float64Array
        self._max: Float64Array
        self._shift = self._mean_offset = self._m2 = self._min = self._max = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ accumulating

    def update(self, batch: ArrayLike, axis: int = 0) -> "Moments":
        """Add a batch of samples; returns self.

        Parameters
        ----------
        batch : array of shape (n_samples, *features) (or samples at `axis`), float32 or float64
            Every batch must have the same feature shape (the shape without `axis`).
        axis : int, default 0
            The sample axis.
        """
        x = check.float_array("batch", batch)
        if x.ndim < 1:
            raise ValueError(f"batch must have at least 1 dimension, got shape {x.shape}")
        axis = check.channel_axis(axis, x.ndim)
        shape = x.shape[:axis] + x.shape[axis + 1:]
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"batch has feature shape {shape}, but this Moments holds {self._shape}")
        n_samples = x.shape[axis]
        if n_samples == 0:
            self._shape = shape
            return self
        samples = SampleProblem(x, axis, None).samples
        shift = samples[0].astype(np.float64) if self._shift is None else self._shift.reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):
            # Deviations from the shift are exact for data near it (Sterbenz), and their moments are small.
            deviations = np.subtract(samples, shift, dtype=np.float64)
        mean = np.zeros(samples.shape[1])
        var = np.zeros(samples.shape[1])
        if samples.shape[1] > 0:
            kernels.batch_stats(readable_view(deviations, 1), mean, var, get_num_threads())
        other = Moments._from_state(n_samples, shape, shift.reshape(shape), mean.reshape(shape),
                                    (var * n_samples).reshape(shape),
                                    samples.min(axis=0).astype(np.float64).reshape(shape),
                                    samples.max(axis=0).astype(np.float64).reshape(shape))
        return self.merge(other)

    def merge(self, other: "Moments") -> "Moments":
        """Merge the statistics of `other` (another Moments) into this one; returns self.

        Chan, Golub and LeVeque's pairwise formula: the result equals the statistics of all the data up to
        rounding, whatever the order of updates and merges.
        """
        if not isinstance(other, Moments):
            raise TypeError(f"other must be a Moments, got {type(other).__name__}")
        if other._count == 0:
            if self._shape is None:
                self._shape = other._shape
            elif other._shape is not None and other._shape != self._shape:
                raise ValueError(f"other has feature shape {other._shape}, but this Moments holds {self._shape}")
            return self
        if self._shape is not None and other._shape != self._shape:
            raise ValueError(f"other has feature shape {other._shape}, but this Moments holds {self._shape}")
        if self._count == 0:
            self._count, self._shape = other._count, other._shape
            self._shift, self._mean_offset, self._m2, self._min, self._max = (
                a.copy() for a in (other._shift, other._mean_offset, other._m2, other._min, other._max))
            return self
        count_a, count_b = self._count, other._count
        total = count_a + count_b
        with np.errstate(invalid="ignore", over="ignore"):
            # other's mean in this one's coordinates: the difference of two data values is exact when close.
            offset_b = (other._shift - self._shift) + other._mean_offset
            delta = offset_b - self._mean_offset
            self._mean_offset = self._mean_offset + delta * (count_b / total)
            self._m2 = self._m2 + other._m2 + delta * delta * (count_a / total) * count_b
        self._min = np.minimum(self._min, other._min)
        self._max = np.maximum(self._max, other._max)
        self._count = total
        return self

    # ------------------------------------------------------------------ results

    @property
    def count(self) -> int:
        """The number of samples seen (an int)."""
        return self._count

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The feature shape, or None before the first batch."""
        return self._shape

    def _require_data(self) -> None:
        if self._count == 0:
            raise ValueError("Moments has seen no samples yet")

    @property
    def mean(self) -> Float64Array:
        """Per-feature mean, float64 array of the feature shape."""
        self._require_data()
        return self._shift + self._mean_offset

    def var(self, ddof: int = 0) -> Float64Array:
        """Per-feature variance: M2 / (count - ddof); ddof=0 biased, ddof=1 unbiased."""
        self._require_data()
        ddof = check.integer("ddof", ddof)
        if ddof < 0 or ddof >= self._count:
            raise ValueError(f"ddof must be >= 0 and smaller than count {self._count}, got {ddof}")
        return self._m2 / (self._count - ddof)

    def std(self, ddof: int = 0) -> Float64Array:
        """Per-feature standard deviation, sqrt(var(ddof))."""
        return np.sqrt(self.var(ddof))

    @property
    def min(self) -> Float64Array:
        self._require_data()
        minimum: Float64Array = self._min.copy()
        return minimum

    @property
    def max(self) -> Float64Array:
        self._require_data()
        maximum: Float64Array = self._max.copy()
        return maximum

    # ------------------------------------------------------------------ transport

    def to_arrays(self) -> dict[str, Array]:
        """The full state as a dict of NumPy arrays (count as a 0-d int64), for any transport.

        Keys: count, shift, mean_offset (mean = shift + mean_offset), m2 (sum of squared deviations), min,
        max. Before any sample the feature arrays are zeros (of shape (0,) while the feature shape is unknown).
        """
        shape = self._shape if self._shape is not None else (0,)
        if self._count == 0:
            empty = np.zeros(shape)
            return {"count": np.array(0, np.int64), "shift": empty, "mean_offset": empty.copy(),
                    "m2": empty.copy(), "min": empty.copy(), "max": empty.copy()}
        return {"count": np.array(self._count, np.int64), "shift": self._shift.copy(),
                "mean_offset": self._mean_offset.copy(), "m2": self._m2.copy(), "min": self._min.copy(),
                "max": self._max.copy()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, ArrayLike]) -> "Moments":
        """A Moments from the dict `to_arrays` returned (or any mapping with the same keys)."""
        missing = [key for key in _FIELDS if key not in arrays]
        if missing:
            raise ValueError(f"arrays is missing {', '.join(missing)}")
        count_array = np.asarray(arrays["count"])
        if count_array.shape != () or count_array.dtype.kind not in "iu":
            raise TypeError(f"count must be a 0-d integer array or an int, got {count_array.dtype} of shape "
                            f"{count_array.shape}")
        count = int(count_array)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        values = {key: check.float_array(key, arrays[key]).astype(np.float64) for key in _FIELDS[1:]}
        shape = values["shift"].shape
        for key, value in values.items():
            if value.shape != shape:
                raise ValueError(f"{key} must have the shape of shift {shape}, got {value.shape}")
        if count == 0:
            result = cls()
            result._shape = shape
            return result
        return cls._from_state(count, shape, *(values[key] for key in _FIELDS[1:]))

    @classmethod
    def _from_state(cls, count: Any, shape: Any, shift: Any, mean_offset: Any, m2: Any, minimum: Any,
                    maximum: Any) -> "Moments":
        result = cls()
        result._count, result._shape = int(count), tuple(shape)
        result._shift, result._mean_offset, result._m2 = shift, mean_offset, m2
        result._min, result._max = minimum, maximum
        return result

    def __repr__(self) -> str:
        return f"Moments(count={self._count}, shape={self._shape})"
