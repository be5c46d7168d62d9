# The normalization both kernel sources apply: subtract a double mean split into two floatings, then scale
# and shift. x - hi is exact when x is near the mean, so |mean| >> std loses nothing (x * a + b with
# b = shift - mean * a would cancel catastrophically in float32).

from cython cimport floating


cdef inline void split_mean_value(double mean, floating* hi, floating* lo) noexcept nogil:
    """hi + lo == mean to about 2**-48 relative in float32; lo == 0 in float64."""
    hi[0] = <floating>mean
    lo[0] = <floating>(mean - <double>hi[0])


cdef inline void affine_run(const floating* x, Py_ssize_t xs, floating* y, Py_ssize_t ys, Py_ssize_t n,
                            floating hi, floating lo, floating scale, floating shift) noexcept nogil:
    """y = ((x - hi) - lo) * scale + shift over one strided run."""
    cdef Py_ssize_t i
    if xs == 1 and ys == 1:
        for i in range(n):
            y[i] = ((x[i] - hi) - lo) * scale + shift
    else:
        for i in range(n):
            y[i * ys] = ((x[i * xs] - hi) - lo) * scale + shift
