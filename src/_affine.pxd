# The normalization both kernel sources apply: subtract a double mean split into two floatings, then scale
# and shift. x - hi is exact when x is near the mean, so |mean| >> std loses nothing (x * a + b with
# b = shift - mean * a would cancel catastrophically in float32).

from cython cimport floating

from _stream cimport STAGE, piece_length, stream_values


cdef inline void split_mean_value(double mean, floating* hi, floating* lo) noexcept nogil:
    """hi + lo == mean to about 2**-48 relative in float32; lo == 0 in float64."""
    hi[0] = <floating>mean
    lo[0] = <floating>(mean - <double>hi[0])


cdef inline void affine_values(const floating* x, floating* y, Py_ssize_t n, floating hi, floating lo,
                               floating scale, floating shift) noexcept nogil:
    """y = ((x - hi) - lo) * scale + shift over n contiguous values."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = ((x[i] - hi) - lo) * scale + shift


cdef inline void affine_streamed(const floating* x, floating* y, Py_ssize_t n, floating hi, floating lo,
                                 floating scale, floating shift) noexcept nogil:
    """affine_values over one contiguous run, computed piece by piece into a stage in L1 and written with
    streaming stores (_stream.pxd).

    Streamed stores are not fenced here: a fence waits for them to reach memory, and one per run cost more
    than streaming saved (measured: 0.8 -> 1.4 ms on 25 MB). Each thread fences once, after its last run.
    """
    cdef floating staged[STAGE]
    cdef Py_ssize_t i0 = 0, m
    while i0 < n:
        m = piece_length(y, i0, n)
        affine_values(x + i0, staged, m, hi, lo, scale, shift)
        stream_values(y + i0, staged, m)
        i0 += m


cdef inline void affine_run(const floating* x, Py_ssize_t xs, floating* y, Py_ssize_t ys, Py_ssize_t n,
                            floating hi, floating lo, floating scale, floating shift, bint stream) noexcept nogil:
    """affine_values over one strided run; a contiguous run asked to stream goes through affine_streamed.

    The stage lives in affine_streamed so that this dispatch stays small enough to be inlined into the
    kernels' loops over short rows (with the stage here it was a call per row of 49 values).
    """
    cdef Py_ssize_t i
    if xs == 1 and ys == 1 and stream:
        affine_streamed(x, y, n, hi, lo, scale, shift)
    elif xs == 1 and ys == 1:
        affine_values(x, y, n, hi, lo, scale, shift)
    else:
        for i in range(n):
            y[i * ys] = ((x[i * xs] - hi) - lo) * scale + shift
