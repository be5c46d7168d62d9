# Plain calls: the common case of the batch-norm entry points and of layer, group and instance norm (forward
# and backward), recognized and run without Python-level work.
#
# On a few values a call costs what happens around the kernels: Python argument checks, allocation, views
# and typed-memoryview conversions, OpenMP regions (about 20 us of a 23 us (2, 4, 1, 1) training call); on
# a 1 MB input the checks still cost 15-20 us ((256, 1024) training forward: 85-88 us against 64-65 us
# in the kernel). The public functions (bnext/batch_norm.py, layer_norm.py, group_norm.py,
# instance_norm.py) first offer their arguments here. A call is taken when every argument is in its plain
# form: exact ndarrays of native, aligned float32/float64 (strides in whole elements), x C-contiguous, float
# eps and momentum, int axis and group counts, out None or a C-contiguous array that is x (dy) itself or
# shares no memory with the inputs. Anything else returns None and takes the Python path, which checks
# everything and raises the errors: so nothing here raises for bad input, an argument that is not plainly
# valid is just not the common case.
#
# These entries include the kernel sources (below) and are built six more times (setup.py): three SIMD
# builds without OpenMP for inputs under PARALLEL_MIN_VALUES values, which the kernels run on one thread
# anyway (_small_calls*.pyx: entering an OpenMP region costs ~0.3 us even on one thread), and the same
# three with OpenMP for larger inputs (_large_calls*.pyx, THREADED), to which the small-call build forwards
# them (use_threaded; bnext._dispatch pairs the builds). The SIMD builds matter near the small-call size
# limit: (8, 64, 7, 7) float32 training forward 14.9 -> 8.6 us, backward 18.3 -> 10.9 us in the AVX-512
# build. The arithmetic is the kernels' own, and every build rounds the same way (-ffp-contract=off): the
# results are bitwise those of the Python path (tests/test_small_calls.py).

cimport numpy as cnp
from libc.math cimport isfinite
from _parallel cimport PARALLEL_MIN_VALUES

include "_batch_norm_kernels.pxi"
include "_family_kernels.pxi"

cnp.import_array()

from bnext._threads import get_num_threads


# The threaded build (the one built with OpenMP) that a small-call build forwards inputs of PARALLEL_MIN_VALUES
# values or more to; None in the threaded build itself.
cdef object threaded_build = None


def use_threaded(module):
    """Forward inputs of PARALLEL_MIN_VALUES values or more to `module`'s entries (bnext._dispatch)."""
    global threaded_build
    threaded_build = None if THREADED else module


cdef inline bint forwarded(object x) noexcept:
    # Whether this build hands x's call to the threaded build: a small-call build, for large inputs.
    return (threaded_build is not None and type(x) is cnp.ndarray
            and cnp.PyArray_SIZE(<cnp.ndarray>x) >= PARALLEL_MIN_VALUES)


cdef inline bint size_taken(Py_ssize_t size) noexcept:
    # The small-call builds take inputs under PARALLEL_MIN_VALUES values, the threaded builds any size.
    return size > 0 and (THREADED or size < PARALLEL_MIN_VALUES)


cdef int call_threads() except -1:
    # The kernels' thread count: bnext's setting in the threaded builds, 1 in the small-call builds (whose
    # kernels have no OpenMP).
    return get_num_threads() if THREADED else 1


cdef enum:
    NOT_FLOAT = -1
    # Per-channel scratch: weight, bias, mean, var, invstd (or their backward counterparts).
    N_VECTORS = 5


cdef int float_type(object a) noexcept:
    """NPY_FLOAT or NPY_DOUBLE for an exact ndarray of native, aligned float32/float64 whose strides are whole
    elements; else NOT_FLOAT."""
    cdef int t, k
    cdef Py_ssize_t itemsize
    if type(a) is not cnp.ndarray:
        return NOT_FLOAT
    t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if not ((t == cnp.NPY_FLOAT or t == cnp.NPY_DOUBLE) and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a)
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)):
        return NOT_FLOAT
    # (Aligned means strides in multiples of the dtype's alignment, which may be 4 for float64 on 32-bit x86.)
    itemsize = sizeof(float) if t == cnp.NPY_FLOAT else sizeof(double)
    for k in range(cnp.PyArray_NDIM(<cnp.ndarray>a)):
        if cnp.PyArray_STRIDES(<cnp.ndarray>a)[k] % itemsize:
            return NOT_FLOAT
    return t


cdef int small_batch(object x, object axis, Shape3* shape) noexcept:
    """x's float type when x is a small C-contiguous batch with a valid channel axis, with *shape set to its
    (outer, C, inner) view as bnext._layout.kernel_view makes it; else NOT_FLOAT."""
    cdef int t = float_type(x)
    cdef int ndim, a, k
    cdef Py_ssize_t size
    cdef cnp.npy_intp* dims
    if t == NOT_FLOAT:
        return NOT_FLOAT
    ndim = cnp.PyArray_NDIM(<cnp.ndarray>x)
    size = cnp.PyArray_SIZE(<cnp.ndarray>x)
    if (ndim < 2 or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x) or not size_taken(size)
            or type(axis) is not int or not -ndim <= axis < ndim):
        return NOT_FLOAT
    a = <int>axis + (ndim if axis < 0 else 0)
    dims = cnp.PyArray_DIMS(<cnp.ndarray>x)
    shape.n_outer = 1
    for k in range(a):
        shape.n_outer *= dims[k]
    shape.C = dims[a]
    shape.n_inner = size // (shape.n_outer * shape.C)
    if shape.C == 1 and shape.n_inner == 1:
        # One channel with nothing after it: one run of n_outer values, as kernel_view turns it.
        shape.n_inner = shape.n_outer
        shape.n_outer = 1
    return t


cdef bint read_vector(object a, Py_ssize_t C, double* dst) noexcept:
    """Copy a 1-D float array of length C into dst as double; False when `a` is anything else."""
    cdef cnp.npy_intp n = C
    return read_values(a, 1, &n, C, dst)


cdef bint read_values(object a, int ndim, const cnp.npy_intp* dims, Py_ssize_t n, double* dst) noexcept:
    """Copy a float array of shape dims (n values) into dst as double, in C order; False when `a` is anything
    else (or is a strided array of more than one dimension)."""
    cdef int t = float_type(a)
    cdef char* data
    cdef Py_ssize_t stride, i
    cdef int k
    if t == NOT_FLOAT or cnp.PyArray_NDIM(<cnp.ndarray>a) != ndim:
        return False
    for k in range(ndim):
        if cnp.PyArray_DIMS(<cnp.ndarray>a)[k] != dims[k]:
            return False
    if ndim > 1 and not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a):
        return False
    data = cnp.PyArray_BYTES(<cnp.ndarray>a)
    stride = cnp.PyArray_STRIDES(<cnp.ndarray>a)[ndim - 1] if ndim > 0 else 0
    for i in range(n):
        dst[i] = (<float*>(data + i * stride))[0] if t == cnp.NPY_FLOAT else (<double*>(data + i * stride))[0]
    return True


cdef bint read_or_fill(object a, int ndim, const cnp.npy_intp* dims, Py_ssize_t n, double fill,
                       double* dst) noexcept:
    # None: n copies of fill (the row kernels always read a weight and a bias).
    cdef Py_ssize_t i
    if a is None:
        for i in range(n):
            dst[i] = fill
        return True
    return read_values(a, ndim, dims, n, dst)


cdef bint read_optional(object a, Py_ssize_t C, double* dst, const double** ptr) noexcept:
    # None: *ptr = NULL (the kernels read 1 or 0); a vector: read into dst.
    if a is None:
        ptr[0] = NULL
        return True
    ptr[0] = dst
    return read_vector(a, C, dst)


cdef bint running_buffer(object a, Py_ssize_t C) noexcept:
    # None, or a writeable 1-D float array of length C (updated in place).
    return a is None or (float_type(a) != NOT_FLOAT and cnp.PyArray_NDIM(<cnp.ndarray>a) == 1
                         and cnp.PyArray_DIMS(<cnp.ndarray>a)[0] == C and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a))


cdef bint positive_finite(object v) noexcept:
    return type(v) is float and isfinite(<double>v) and <double>v > 0


cdef void update_buffer(object buffer, const double* batch, double factor, double momentum) noexcept:
    cdef cnp.ndarray b
    if buffer is None:
        return
    b = <cnp.ndarray>buffer
    if cnp.PyArray_TYPE(b) == cnp.NPY_FLOAT:
        update_running_into(<float*>cnp.PyArray_DATA(b), cnp.PyArray_STRIDES(b)[0] // sizeof(float),
                            cnp.PyArray_DIMS(b)[0], batch, factor, momentum)
    else:
        update_running_into(<double*>cnp.PyArray_DATA(b), cnp.PyArray_STRIDES(b)[0] // sizeof(double),
                            cnp.PyArray_DIMS(b)[0], batch, factor, momentum)


cdef object channel_array(const double* values, Py_ssize_t C, int t):
    """A new (C,) array of float type t holding values."""
    cdef cnp.npy_intp n = C
    return stat_array(values, 1, &n, t)


cdef object stat_array(const double* values, int ndim, cnp.npy_intp* dims, int t):
    """A new array of shape dims and float type t holding values (C order)."""
    cdef object arr = cnp.PyArray_EMPTY(ndim, dims, t, 0)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>arr)
    if t == cnp.NPY_FLOAT:
        to_floating(values, n, <float*>cnp.PyArray_DATA(<cnp.ndarray>arr))
    else:
        to_floating(values, n, <double*>cnp.PyArray_DATA(<cnp.ndarray>arr))
    return arr


cdef object output_for(object out, object x, int t, object other):
    """The array a small call writes: a new C-ordered array like x when out is None; out itself when it is a
    writeable C-contiguous array of x's float type and shape that is x or other exactly or shares no memory
    with them; else None (the checked path decides, with a scratch copy or an error)."""
    if out is None:
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(<cnp.ndarray>x), cnp.PyArray_DIMS(<cnp.ndarray>x), t, 0)
    if (float_type(out) != t or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out)
            or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out) or not cnp.PyArray_SAMESHAPE(<cnp.ndarray>out,
                                                                                        <cnp.ndarray>x)
            or overlaps_partially(out, x) or (other is not None and overlaps_partially(out, other))):
        return None
    return out


cdef bint overlaps_partially(object a, object b) noexcept:
    # Two C-contiguous arrays of one shape and dtype: the same memory exactly (in place, which every kernel
    # allows), or none of it.
    cdef char* pa = cnp.PyArray_BYTES(<cnp.ndarray>a)
    cdef char* pb = cnp.PyArray_BYTES(<cnp.ndarray>b)
    cdef Py_ssize_t n = cnp.PyArray_NBYTES(<cnp.ndarray>a)
    return pa != pb and pa < pb + n and pb < pa + n


cdef Strides3 contiguous_strides(Shape3 s) noexcept:
    cdef Strides3 t
    t.outer = s.C * s.n_inner
    t.channel = s.n_inner
    t.inner = 1
    return t


def train(x, weight, bias, axis, eps, running_mean, running_var, momentum, out):
    """batch_norm_train(x, weight, bias, axis=axis, eps=eps, running_mean=..., running_var=..., momentum=...)
    for a small common-case call: (y, mean, invstd), or None when the call is not one."""
    if forwarded(x):
        return threaded_build.train(x, weight, bias, axis, eps, running_mean, running_var, momentum, out)
    cdef Shape3 s
    cdef int t = small_batch(x, axis, &s)
    cdef Py_ssize_t m
    cdef double* v
    cdef const double* w
    cdef const double* b
    cdef double* mean
    cdef double* var
    cdef double* invstd
    if t == NOT_FLOAT or not positive_finite(eps) or type(momentum) is not float or not isfinite(<double>momentum):
        return None
    m = s.n_outer * s.n_inner
    if m < 2 or not running_buffer(running_mean, s.C) or not running_buffer(running_var, s.C):
        return None
    v = <double*>checked_malloc(N_VECTORS * s.C * sizeof(double))
    mean, var, invstd = v + 2 * s.C, v + 3 * s.C, v + 4 * s.C
    try:
        if not (read_optional(weight, s.C, v, &w) and read_optional(bias, s.C, v + s.C, &b)):
            return None
        y = output_for(out, x, t, None)
        if y is None:
            return None
        if t == cnp.NPY_FLOAT:
            train_into(<const float*>cnp.PyArray_DATA(<cnp.ndarray>x), s, contiguous_strides(s), w, b, <double>eps,
                       mean, var, invstd, <float*>cnp.PyArray_DATA(<cnp.ndarray>y), contiguous_strides(s), call_threads())
        else:
            train_into(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x), s, contiguous_strides(s), w, b,
                       <double>eps, mean, var, invstd, <double*>cnp.PyArray_DATA(<cnp.ndarray>y),
                       contiguous_strides(s), call_threads())
        update_buffer(running_mean, mean, 1.0, <double>momentum)
        update_buffer(running_var, var, <double>m / <double>(m - 1), <double>momentum)
        return y, channel_array(mean, s.C, t), channel_array(invstd, s.C, t)
    finally:
        free(v)


def eval(x, running_mean, running_var, weight, bias, axis, eps, out):
    """batch_norm_eval(x, running_mean, running_var, weight, bias, axis=axis, eps=eps) for a small
    common-case call: y, or None when the call is not one."""
    if forwarded(x):
        return threaded_build.eval(x, running_mean, running_var, weight, bias, axis, eps, out)
    cdef Shape3 s
    cdef int t = small_batch(x, axis, &s)
    cdef double* v
    cdef const double* w
    cdef const double* b
    cdef double* mean
    cdef double* var
    if t == NOT_FLOAT or not positive_finite(eps):
        return None
    v = <double*>checked_malloc(N_VECTORS * s.C * sizeof(double))
    mean, var = v + 2 * s.C, v + 3 * s.C
    try:
        if not (read_optional(weight, s.C, v, &w) and read_optional(bias, s.C, v + s.C, &b)
                and read_vector(running_mean, s.C, mean) and read_vector(running_var, s.C, var)):
            return None
        y = output_for(out, x, t, None)
        if y is None:
            return None
        if t == cnp.NPY_FLOAT:
            eval_into(<const float*>cnp.PyArray_DATA(<cnp.ndarray>x), s, contiguous_strides(s), mean, var, w, b,
                      <double>eps, <float*>cnp.PyArray_DATA(<cnp.ndarray>y), contiguous_strides(s), call_threads())
        else:
            eval_into(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x), s, contiguous_strides(s), mean, var, w, b,
                      <double>eps, <double*>cnp.PyArray_DATA(<cnp.ndarray>y), contiguous_strides(s), call_threads())
        return y
    finally:
        free(v)


def backward(dy, x, mean, invstd, weight, axis, out):
    """batch_norm_backward(dy, x, mean, invstd, weight, axis=axis) for a small common-case call:
    (dx, dweight, dbias), or None when the call is not one."""
    if forwarded(x):
        return threaded_build.backward(dy, x, mean, invstd, weight, axis, out)
    cdef Shape3 s
    cdef int t = small_batch(x, axis, &s)
    cdef double* v
    cdef const double* w
    cdef double* mean_d
    cdef double* invstd_d
    cdef double* dweight
    cdef double* dbias
    if (t == NOT_FLOAT or float_type(dy) != t or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>dy)
            or not cnp.PyArray_SAMESHAPE(<cnp.ndarray>dy, <cnp.ndarray>x)):
        return None
    v = <double*>checked_malloc(N_VECTORS * s.C * sizeof(double))
    mean_d, invstd_d, dweight, dbias = v + s.C, v + 2 * s.C, v + 3 * s.C, v + 4 * s.C
    try:
        if not (read_optional(weight, s.C, v, &w) and read_vector(mean, s.C, mean_d)
                and read_vector(invstd, s.C, invstd_d)):
            return None
        dx = output_for(out, x, t, dy)
        if dx is None:
            return None
        if t == cnp.NPY_FLOAT:
            backward_into(<const float*>cnp.PyArray_DATA(<cnp.ndarray>dy), contiguous_strides(s),
                          <const float*>cnp.PyArray_DATA(<cnp.ndarray>x), s, contiguous_strides(s), mean_d,
                          invstd_d, w, True, dweight, dbias, <float*>cnp.PyArray_DATA(<cnp.ndarray>dx),
                          contiguous_strides(s), call_threads())
        else:
            backward_into(<const double*>cnp.PyArray_DATA(<cnp.ndarray>dy), contiguous_strides(s),
                          <const double*>cnp.PyArray_DATA(<cnp.ndarray>x), s, contiguous_strides(s), mean_d,
                          invstd_d, w, True, dweight, dbias, <double*>cnp.PyArray_DATA(<cnp.ndarray>dx),
                          contiguous_strides(s), call_threads())
        return dx, channel_array(dweight, s.C, t), channel_array(dbias, s.C, t)
    finally:
        free(v)


cdef int trailing_count(object normalized_shape, int ndim, const cnp.npy_intp* dims) noexcept:
    """How many trailing dims of x normalized_shape names, when it is an int or a tuple of ints equal to them
    (at least one); else 0."""
    cdef int k, j
    if type(normalized_shape) is int:
        return 1 if normalized_shape == dims[ndim - 1] else 0
    if type(normalized_shape) is not tuple:
        return 0
    k = len(normalized_shape)
    if k == 0 or k > ndim:
        return 0
    for j in range(k):
        item = (<tuple>normalized_shape)[j]
        if type(item) is not int or item != dims[ndim - k + j]:
            return 0
    return k


cdef int layer_norm_rows(const floating* px, floating* py, Py_ssize_t n_rows, Py_ssize_t length,
                         const double* weight, const double* bias, double eps, double* mean, double* var,
                         double* invstd) except -1:
    # As bnext/layer_norm.py: short rows take batch_stats' path on the (1, rows, length) view + column_affine.
    cdef Shape3 s
    cdef Strides3 xs
    cdef Py_ssize_t r
    if length > LAYER_NORM_SHORT_ROW:
        return layer_norm_forward_into(px, n_rows, length, length, weight, bias, eps, mean, var, invstd, py,
                                       length, call_threads())
    s.n_outer, s.C, s.n_inner = 1, n_rows, length
    xs.outer, xs.channel, xs.inner = n_rows * length, length, 1
    stats_into(px, s, xs, mean, var, call_threads())
    for r in range(n_rows):
        invstd[r] = 1.0 / sqrt(var[r] + eps)
    return column_affine_into(px, n_rows, length, length, mean, invstd, weight, bias, py, length, call_threads())


cdef struct LayerRows:
    # A small C-contiguous x (ndim, dims) seen as n_rows rows of length values over its k trailing dims:
    # the statistics have the leading ndim - k dims, the weight the trailing k (param_dims).
    int ndim
    cnp.npy_intp* dims
    int k
    cnp.npy_intp* param_dims
    Py_ssize_t length
    Py_ssize_t n_rows


cdef int small_layer_rows(object x, object normalized_shape, LayerRows* rows) noexcept:
    """x's float type when x is a small C-contiguous array whose trailing dims normalized_shape names, with
    *rows set; else NOT_FLOAT."""
    cdef int t = float_type(x)
    cdef int j
    cdef Py_ssize_t size
    if t == NOT_FLOAT or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x):
        return NOT_FLOAT
    size = cnp.PyArray_SIZE(<cnp.ndarray>x)
    rows.ndim = cnp.PyArray_NDIM(<cnp.ndarray>x)
    rows.dims = cnp.PyArray_DIMS(<cnp.ndarray>x)
    rows.k = trailing_count(normalized_shape, rows.ndim, rows.dims) if rows.ndim > 0 else 0
    if rows.k == 0 or not size_taken(size):
        return NOT_FLOAT
    rows.param_dims = rows.dims + rows.ndim - rows.k
    rows.length = 1
    for j in range(rows.ndim - rows.k, rows.ndim):
        rows.length *= rows.dims[j]
    rows.n_rows = size // rows.length
    return t


def layer_norm(x, normalized_shape, weight, bias, eps, out):
    """bnext.layer_norm(x, normalized_shape, weight, bias, eps=eps) for a small common-case call:
    (y, mean, invstd), or None when the call is not one."""
    if forwarded(x):
        return threaded_build.layer_norm(x, normalized_shape, weight, bias, eps, out)
    cdef LayerRows rows
    cdef int t = small_layer_rows(x, normalized_shape, &rows)
    cdef double* w
    cdef double* b
    cdef double* mean
    cdef double* var
    cdef double* invstd
    if t == NOT_FLOAT or not positive_finite(eps):
        return None
    w = <double*>checked_malloc((2 * rows.length + 3 * rows.n_rows) * sizeof(double))
    b = w + rows.length
    mean = b + rows.length
    var = mean + rows.n_rows
    invstd = var + rows.n_rows
    try:
        if not (read_or_fill(weight, rows.k, rows.param_dims, rows.length, 1.0, w)
                and read_or_fill(bias, rows.k, rows.param_dims, rows.length, 0.0, b)):
            return None
        y = output_for(out, x, t, None)
        if y is None:
            return None
        if t == cnp.NPY_FLOAT:
            layer_norm_rows(<const float*>cnp.PyArray_DATA(<cnp.ndarray>x), <float*>cnp.PyArray_DATA(<cnp.ndarray>y),
                            rows.n_rows, rows.length, w, b, <double>eps, mean, var, invstd)
        else:
            layer_norm_rows(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x),
                            <double*>cnp.PyArray_DATA(<cnp.ndarray>y), rows.n_rows, rows.length, w, b, <double>eps,
                            mean, var, invstd)
        return (y, stat_array(mean, rows.ndim - rows.k, rows.dims, t),
                stat_array(invstd, rows.ndim - rows.k, rows.dims, t))
    finally:
        free(w)


cdef struct Groups:
    # A small C-contiguous (N, C, *) x in G groups of channels, size values in all.
    Py_ssize_t N
    Py_ssize_t C
    Py_ssize_t G
    Py_ssize_t size


cdef int small_groups(object x, object num_groups, Groups* g) noexcept:
    """x's float type when x is a small C-contiguous (N, C, *) batch and num_groups an int dividing C, with
    *g set; else NOT_FLOAT."""
    cdef int t = float_type(x)
    if t == NOT_FLOAT or cnp.PyArray_NDIM(<cnp.ndarray>x) < 2 or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x):
        return NOT_FLOAT
    g.size = cnp.PyArray_SIZE(<cnp.ndarray>x)
    g.N = cnp.PyArray_DIMS(<cnp.ndarray>x)[0]
    g.C = cnp.PyArray_DIMS(<cnp.ndarray>x)[1]
    if not size_taken(g.size) or type(num_groups) is not int or not 1 <= num_groups <= g.C:
        return NOT_FLOAT
    g.G = num_groups
    return NOT_FLOAT if g.C % g.G else t


def group_norm(x, num_groups, weight, bias, eps, out):
    """bnext.group_norm(x, num_groups, weight, bias, eps=eps) for a small common-case call:
    (y, mean, invstd), or None when the call is not one."""
    if forwarded(x):
        return threaded_build.group_norm(x, num_groups, weight, bias, eps, out)
    cdef Groups g
    cdef int t = small_groups(x, num_groups, &g)
    cdef Py_ssize_t size = g.size, N = g.N, C = g.C, G = g.G, n_rows, length
    cdef cnp.npy_intp stat_dims[2]
    cdef double* v
    if t == NOT_FLOAT or not positive_finite(eps):
        return None
    n_rows = N * G
    length = size // n_rows
    # weight, bias (C values each), then mean, var, invstd (a value per (sample, group) row)
    v = <double*>checked_malloc((2 * C + 3 * n_rows) * sizeof(double))
    try:
        if not (read_or_fill(weight, 1, cnp.PyArray_DIMS(<cnp.ndarray>x) + 1, C, 1.0, v)
                and read_or_fill(bias, 1, cnp.PyArray_DIMS(<cnp.ndarray>x) + 1, C, 0.0, v + C)):
            return None
        y = output_for(out, x, t, None)
        if y is None:
            return None
        if t == cnp.NPY_FLOAT:
            group_norm_forward_into(<const float*>cnp.PyArray_DATA(<cnp.ndarray>x), n_rows, length, length,
                                    size // (N * C), C, v, v + C, <double>eps, v + 2 * C, v + 2 * C + n_rows,
                                    v + 2 * C + 2 * n_rows, <float*>cnp.PyArray_DATA(<cnp.ndarray>y), length, call_threads())
        else:
            group_norm_forward_into(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x), n_rows, length, length,
                                    size // (N * C), C, v, v + C, <double>eps, v + 2 * C, v + 2 * C + n_rows,
                                    v + 2 * C + 2 * n_rows, <double*>cnp.PyArray_DATA(<cnp.ndarray>y), length, call_threads())
        stat_dims[0] = N
        stat_dims[1] = G
        return y, stat_array(v + 2 * C, 2, stat_dims, t), stat_array(v + 2 * C + 2 * n_rows, 2, stat_dims, t)
    finally:
        free(v)


def layer_norm_backward(dy, x, mean, invstd, weight, normalized_shape, out):
    """bnext.layer_norm_backward(dy, x, mean, invstd, weight, normalized_shape=...) for a small common-case
    call: (dx, dweight, dbias), or None when the call is not one. mean and invstd of shape
    x.shape[:-len(normalized_shape)] (as layer_norm returns them)."""
    if forwarded(x):
        return threaded_build.layer_norm_backward(dy, x, mean, invstd, weight, normalized_shape, out)
    cdef LayerRows rows
    cdef int t = small_layer_rows(x, normalized_shape, &rows)
    cdef double* w
    cdef double* dweight
    cdef double* dbias
    cdef double* mean_d
    cdef double* invstd_d
    if (t == NOT_FLOAT or float_type(dy) != t or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>dy)
            or not cnp.PyArray_SAMESHAPE(<cnp.ndarray>dy, <cnp.ndarray>x)):
        return None
    w = <double*>checked_malloc((3 * rows.length + 2 * rows.n_rows) * sizeof(double))
    dweight = w + rows.length
    dbias = dweight + rows.length
    mean_d = dbias + rows.length
    invstd_d = mean_d + rows.n_rows
    try:
        if not (read_or_fill(weight, rows.k, rows.param_dims, rows.length, 1.0, w)
                and read_values(mean, rows.ndim - rows.k, rows.dims, rows.n_rows, mean_d)
                and read_values(invstd, rows.ndim - rows.k, rows.dims, rows.n_rows, invstd_d)):
            return None
        dx = output_for(out, x, t, dy)
        if dx is None:
            return None
        if t == cnp.NPY_FLOAT:
            layer_norm_gradient_into(<const float*>cnp.PyArray_DATA(<cnp.ndarray>dy), rows.length,
                                     <const float*>cnp.PyArray_DATA(<cnp.ndarray>x), rows.length, rows.n_rows,
                                     rows.length, mean_d, invstd_d, w, <float*>cnp.PyArray_DATA(<cnp.ndarray>dx),
                                     rows.length, dweight, dbias, call_threads())
        else:
            layer_norm_gradient_into(<const double*>cnp.PyArray_DATA(<cnp.ndarray>dy), rows.length,
                                     <const double*>cnp.PyArray_DATA(<cnp.ndarray>x), rows.length, rows.n_rows,
                                     rows.length, mean_d, invstd_d, w, <double*>cnp.PyArray_DATA(<cnp.ndarray>dx),
                                     rows.length, dweight, dbias, call_threads())
        return dx, stat_array(dweight, rows.k, rows.param_dims, t), stat_array(dbias, rows.k, rows.param_dims, t)
    finally:
        free(w)


def group_norm_backward(dy, x, mean, invstd, weight, num_groups, bint batch_stats, out):
    """bnext.group_norm_backward (batch_stats True) or instance_norm_backward (num_groups = C) for a small
    common-case call: (dx, dweight, dbias), or None when the call is not one. mean and invstd of shape
    (N, num_groups)."""
    if forwarded(x):
        return threaded_build.group_norm_backward(dy, x, mean, invstd, weight, num_groups, batch_stats, out)
    cdef Groups g
    cdef int t = small_groups(x, num_groups, &g)
    cdef Py_ssize_t size = g.size, N = g.N, C = g.C, G = g.G, n_rows, spatial, i, c
    cdef cnp.npy_intp stat_dims[2]
    cdef Shape3 s
    cdef Strides3 rows
    cdef double* v
    cdef double* w
    cdef double* group_mean
    cdef double* group_invstd
    cdef double* dweight
    cdef double* dbias
    cdef double* row_mean
    cdef double* row_invstd
    cdef double* sum_dy
    cdef double* sum_dy_xmu
    cdef double* dy_scale
    cdef double* coef_1
    cdef double* coef_x_hat
    if (t == NOT_FLOAT or float_type(dy) != t or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>dy)
            or not cnp.PyArray_SAMESHAPE(<cnp.ndarray>dy, <cnp.ndarray>x)):
        return None
    n_rows = N * C  # one row per (n, c): spatial values
    spatial = size // n_rows
    stat_dims[0] = N
    stat_dims[1] = G
    # the (n, g) statistics, the C-vectors, then seven vectors of a value per (n, c) row
    v = <double*>checked_malloc((2 * N * G + 3 * C + 7 * n_rows) * sizeof(double))
    group_mean, group_invstd = v, v + N * G
    w, dweight, dbias = v + 2 * N * G, v + 2 * N * G + C, v + 2 * N * G + 2 * C
    row_mean = v + 2 * N * G + 3 * C
    row_invstd, sum_dy, sum_dy_xmu = row_mean + n_rows, row_mean + 2 * n_rows, row_mean + 3 * n_rows
    dy_scale, coef_1, coef_x_hat = row_mean + 4 * n_rows, row_mean + 5 * n_rows, row_mean + 6 * n_rows
    try:
        if not (read_or_fill(weight, 1, cnp.PyArray_DIMS(<cnp.ndarray>x) + 1, C, 1.0, w)
                and read_values(mean, 2, stat_dims, N * G, group_mean)
                and read_values(invstd, 2, stat_dims, N * G, group_invstd)):
            return None
        for i in range(N):
            for c in range(C):
                row_mean[i * C + c] = group_mean[i * G + c // (C // G)]
                row_invstd[i * C + c] = group_invstd[i * G + c // (C // G)]
        # As bnext/group_norm.py: gradient_sums over the (1, N * C, spatial) view, the coefficients, then dx.
        s.n_outer, s.C, s.n_inner = 1, n_rows, spatial
        rows.outer, rows.channel, rows.inner = size, spatial, 1
        dx = output_for(out, x, t, dy)
        if dx is None:
            return None
        if t == cnp.NPY_FLOAT:
            gradient_sums_into(<const float*>cnp.PyArray_DATA(<cnp.ndarray>dy), rows,
                               <const float*>cnp.PyArray_DATA(<cnp.ndarray>x), s, rows, row_mean, sum_dy,
                               sum_dy_xmu, call_threads())
        else:
            gradient_sums_into(<const double*>cnp.PyArray_DATA(<cnp.ndarray>dy), rows,
                               <const double*>cnp.PyArray_DATA(<cnp.ndarray>x), s, rows, row_mean, sum_dy,
                               sum_dy_xmu, call_threads())
        group_norm_coefficients_into(sum_dy, sum_dy_xmu, group_invstd, w, C, G, N, <double>(size // (N * G)),
                                     batch_stats, dweight, dbias, dy_scale, coef_1, coef_x_hat)
        if t == cnp.NPY_FLOAT:
            row_input_gradient_into(<const float*>cnp.PyArray_DATA(<cnp.ndarray>dy), spatial,
                                    <const float*>cnp.PyArray_DATA(<cnp.ndarray>x), spatial, n_rows, spatial,
                                    row_mean, row_invstd, row_invstd, dy_scale, coef_1, coef_x_hat,
                                    <float*>cnp.PyArray_DATA(<cnp.ndarray>dx), spatial, call_threads())
        else:
            row_input_gradient_into(<const double*>cnp.PyArray_DATA(<cnp.ndarray>dy), spatial,
                                    <const double*>cnp.PyArray_DATA(<cnp.ndarray>x), spatial, n_rows, spatial,
                                    row_mean, row_invstd, row_invstd, dy_scale, coef_1, coef_x_hat,
                                    <double*>cnp.PyArray_DATA(<cnp.ndarray>dx), spatial, call_threads())
        return dx, channel_array(dweight, C, t), channel_array(dbias, C, t)
    finally:
        free(v)


def instance_norm(x, weight, bias, eps, running_mean, running_var, momentum, use_input_stats, out):
    """bnext.instance_norm(x, weight, bias, eps=..., running_mean=..., running_var=..., momentum=...,
    use_input_stats=..., out=out) for a small common-case call: (y, mean, invstd), or None when the call is
    not one."""
    if forwarded(x):
        return threaded_build.instance_norm(x, weight, bias, eps, running_mean, running_var, momentum,
                                            use_input_stats, out)
    cdef Groups g
    cdef int t = NOT_FLOAT
    cdef Py_ssize_t n_rows, spatial
    cdef cnp.npy_intp stat_dims[2]
    cdef double* w
    cdef double* b
    cdef double* mean
    cdef double* var
    cdef double* invstd
    if float_type(x) != NOT_FLOAT and cnp.PyArray_NDIM(<cnp.ndarray>x) >= 2:
        t = small_groups(x, cnp.PyArray_DIMS(<cnp.ndarray>x)[1], &g)  # a group per channel
    if (t == NOT_FLOAT or (use_input_stats is not True and use_input_stats is not False) or not positive_finite(eps)
            or type(momentum) is not float or not isfinite(<double>momentum)):
        return None
    if not running_buffer(running_mean, g.C) or not running_buffer(running_var, g.C):
        return None
    if use_input_stats is False:
        return instance_norm_given(x, t, &g, weight, bias, <double>eps, running_mean, running_var, out)
    n_rows = g.N * g.C  # one row per (n, c): spatial values
    spatial = g.size // n_rows
    if spatial < 2:
        return None
    stat_dims[0] = g.N
    stat_dims[1] = g.C
    w = <double*>checked_malloc((2 * g.C + 3 * n_rows) * sizeof(double))
    b = w + g.C
    mean, var, invstd = b + g.C, b + g.C + n_rows, b + g.C + 2 * n_rows
    try:
        if not (read_or_fill(weight, 1, stat_dims + 1, g.C, 1.0, w)
                and read_or_fill(bias, 1, stat_dims + 1, g.C, 0.0, b)):
            return None
        y = output_for(out, x, t, None)
        if y is None:
            return None
        # As bnext/instance_norm.py: group norm's fused rows with a group per channel, then the running update.
        if t == cnp.NPY_FLOAT:
            group_norm_forward_into(<const float*>cnp.PyArray_DATA(<cnp.ndarray>x), n_rows, spatial, spatial,
                                    spatial, g.C, w, b, <double>eps, mean, var, invstd,
                                    <float*>cnp.PyArray_DATA(<cnp.ndarray>y), spatial, call_threads())
        else:
            group_norm_forward_into(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x), n_rows, spatial, spatial,
                                    spatial, g.C, w, b, <double>eps, mean, var, invstd,
                                    <double*>cnp.PyArray_DATA(<cnp.ndarray>y), spatial, call_threads())
        update_buffer_over_rows(running_mean, mean, g.N, 1.0, <double>momentum)
        update_buffer_over_rows(running_var, var, g.N, <double>spatial / <double>(spatial - 1), <double>momentum)
        return y, stat_array(mean, 2, stat_dims, t), stat_array(invstd, 2, stat_dims, t)
    finally:
        free(w)


cdef object instance_norm_given(object x, int t, const Groups* g, object weight, object bias, double eps,
                                object running_mean, object running_var, object out):
    """instance_norm with use_input_stats=False: x normalized with the running statistics, as
    bnext/instance_norm.py does it (each (n, c) row a channel of batch norm's normalize, scale = invstd *
    weight in double); None when a buffer is missing (the checked path raises)."""
    cdef Py_ssize_t C = g.C, n_rows = g.N * g.C, i, c, k
    cdef Shape3 s
    cdef cnp.npy_intp stat_dims[2]
    cdef double* w
    cdef double* b
    cdef double* rm
    cdef double* rv
    cdef double* mean
    cdef double* invstd
    cdef double* scale
    cdef double* shift
    if running_mean is None or running_var is None:
        return None
    stat_dims[0] = g.N
    stat_dims[1] = C
    w = <double*>checked_malloc((4 * C + 4 * n_rows) * sizeof(double))
    b, rm, rv = w + C, w + 2 * C, w + 3 * C
    mean, invstd, scale, shift = rv + C, rv + C + n_rows, rv + C + 2 * n_rows, rv + C + 3 * n_rows
    try:
        if not (read_or_fill(weight, 1, stat_dims + 1, C, 1.0, w) and read_or_fill(bias, 1, stat_dims + 1, C, 0.0, b)
                and read_vector(running_mean, C, rm) and read_vector(running_var, C, rv)):
            return None
        y = output_for(out, x, t, None)
        if y is None:
            return None
        for i in range(g.N):
            for c in range(C):
                k = i * C + c
                mean[k] = rm[c]
                invstd[k] = 1.0 / sqrt(rv[c] + eps)
                scale[k] = invstd[k] * w[c]
                shift[k] = b[c]
        s.n_outer, s.C, s.n_inner = 1, n_rows, g.size // n_rows
        if t == cnp.NPY_FLOAT:
            normalize_into(<const float*>cnp.PyArray_DATA(<cnp.ndarray>x), s, contiguous_strides(s), mean, scale,
                           shift, <float*>cnp.PyArray_DATA(<cnp.ndarray>y), contiguous_strides(s), call_threads())
        else:
            normalize_into(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x), s, contiguous_strides(s), mean, scale,
                           shift, <double*>cnp.PyArray_DATA(<cnp.ndarray>y), contiguous_strides(s), call_threads())
        return y, stat_array(mean, 2, stat_dims, t), stat_array(invstd, 2, stat_dims, t)
    finally:
        free(w)


cdef void update_buffer_over_rows(object buffer, const double* rows, Py_ssize_t n_rows, double factor,
                                  double momentum) noexcept:
    cdef cnp.ndarray a
    if buffer is None:
        return
    a = <cnp.ndarray>buffer
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT:
        update_running_rows_into(<float*>cnp.PyArray_DATA(a), cnp.PyArray_STRIDES(a)[0] // sizeof(float),
                                 cnp.PyArray_DIMS(a)[0], rows, n_rows, factor, momentum)
    else:
        update_running_rows_into(<double*>cnp.PyArray_DATA(a), cnp.PyArray_STRIDES(a)[0] // sizeof(double),
                                 cnp.PyArray_DIMS(a)[0], rows, n_rows, factor, momentum)
