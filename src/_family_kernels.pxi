"""Kernels of batch norm's siblings (layer, group and instance norm) over 2-D row views (rows, length).

Only what the batch-norm kernels cannot do lives here: the fused forwards of layer and group norm (each row
- a sample, or a (sample, group) pair - gets its statistics and is normalized while it is in cache), an
affine indexed along the row (layer norm's weight over normalized_shape) and a dx whose dy is scaled per
row (group norm's per-channel weight, which may be 0, so it cannot be divided out of batch norm's dx
formula). The rest reuses batch_norm's kernels on free reshapes: statistics of very short layer-norm rows,
gradient sums, and group/instance norm with given statistics (normalize with per-(n, c) vectors).

Every array is a C-ordered 2-D view: row stride free, unit stride along the row (the Python layer copies
anything else to C order first). Work items depend on the shape only, never on the thread count, and
every reduction is summed in a fixed order, so results are bitwise identical for any n_threads.
"""

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport sqrt
from libc.stdlib cimport free
from _entry cimport checked_malloc, optional_data

from _moments cimport (BLOCK, HALF_LANES, LANES, Block, BlockPlan, Moments, block_moments, chan_merge,
                       fold_lanes, make_plan, plan_block, run_shifted_sums, shifted_to_moments)
from _affine cimport affine_run, split_mean_value
from _stream cimport STAGE, piece_length, stream_fence, stream_output, stream_values
from _parallel cimport kernel_threads
from _prefetch cimport PREFETCH_MAX_BYTES, prefetch_bytes


cdef struct RowItems:
    # Elementwise work items over (rows, length): whole rows grouped to about BLOCK values, or long rows cut
    # into chunks of at most BLOCK values.
    Py_ssize_t rows_per_item
    Py_ssize_t chunks_per_row
    Py_ssize_t chunk
    Py_ssize_t n_items


cdef inline RowItems row_items(Py_ssize_t n_rows, Py_ssize_t length) noexcept nogil:
    cdef RowItems it
    if length >= BLOCK:
        it.rows_per_item = 1
        it.chunks_per_row = (length + BLOCK - 1) // BLOCK
        it.chunk = (length + it.chunks_per_row - 1) // it.chunks_per_row
        it.n_items = n_rows * it.chunks_per_row
    else:
        it.rows_per_item = max(1, BLOCK // max(1, length))
        it.chunks_per_row = 1
        it.chunk = length
        it.n_items = (n_rows + it.rows_per_item - 1) // it.rows_per_item
    return it


# Layer-norm affine with given row statistics (used for rows too short for the fused kernel, whose
# statistics come from batch_stats' short-row lanes): y[r, i] = ((x - mean_hi) - mean_lo) * invstd * weight[i]
# + bias[i]. Memory passes: read x, write y.

def column_affine(const floating[:, ::1] x, const double[::1] mean, const double[::1] invstd,
                  const double[::1] weight, const double[::1] bias, floating[:, ::1] y_out, int n_threads):
    """y_out = (x - mean[r]) * invstd[r] * weight[i] + bias[i]; y_out may be x itself."""
    column_affine_into(&x[0, 0], x.shape[0], x.shape[1], x.strides[0] // sizeof(floating), &mean[0], &invstd[0],
                       &weight[0], &bias[0], &y_out[0, 0], y_out.strides[0] // sizeof(floating), n_threads)


cdef int column_affine_into(const floating* px, Py_ssize_t n_rows, Py_ssize_t length, Py_ssize_t xs,
                            const double* mean, const double* invstd, const double* weight, const double* bias,
                            floating* py, Py_ssize_t ys, int n_threads) except -1:
    cdef floating* vectors = <floating*>checked_malloc(2 * length * sizeof(floating))
    cdef floating* weight_f = vectors
    cdef floating* bias_f = vectors + length
    cdef RowItems it = row_items(n_rows, length)
    cdef Py_ssize_t item, r, r0, r1, i0, n, i
    n_threads = kernel_threads(n_rows * length, n_threads)
    try:
        with nogil:
            for i in range(length):
                weight_f[i] = <floating>weight[i]
                bias_f[i] = <floating>bias[i]
            for item in prange(it.n_items, num_threads=n_threads, schedule="static",
                               use_threads_if=n_threads > 1):
                r0 = (item // it.chunks_per_row) * it.rows_per_item
                r1 = min(r0 + it.rows_per_item, n_rows)
                i0 = (item % it.chunks_per_row) * it.chunk
                n = min(it.chunk, length - i0)
                for r in range(r0, r1):
                    column_affine_run(px + r * xs + i0, py + r * ys + i0, n, mean[r], <floating>invstd[r],
                                      weight_f + i0, bias_f + i0, False)
    finally:
        free(vectors)
    return 0


# Layer-norm affine of one row: y[i] = ((x - mean_hi) - mean_lo) * invstd * weight[i] + bias[i].

cdef inline void column_affine_values(const floating* x, floating* y, Py_ssize_t n, floating hi, floating lo,
                                      floating invstd, const floating* weight, const floating* bias) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = (((x[i] - hi) - lo) * invstd) * weight[i] + bias[i]


cdef inline void column_affine_run(const floating* x, floating* y, Py_ssize_t n, double mean, floating invstd,
                                   const floating* weight, const floating* bias, bint stream) noexcept nogil:
    """column_affine_values over one row; streamed if asked (as affine_run, _affine.pxd)."""
    cdef floating staged[STAGE]
    cdef floating hi, lo
    cdef Py_ssize_t i0 = 0, m
    split_mean_value(mean, &hi, &lo)
    if stream:
        while i0 < n:
            m = piece_length(y, i0, n)
            column_affine_values(x + i0, staged, m, hi, lo, invstd, weight + i0, bias + i0)
            stream_values(y + i0, staged, m)
            i0 += m
    else:
        column_affine_values(x, y, n, hi, lo, invstd, weight, bias)


cdef enum:
    # Layer norm over rows of at most this many values takes batch_stats' short-row path + column_affine
    # instead of the fused row kernel. Since the fused kernel takes short rows in groups (rows_stats), it
    # is as fast or faster from 2 values on (1M rows of 2 / 4 values: 24.4 / 25.6 ms against 26.5 / 28.8 ms,
    # 458752 rows of 16: 6.0 against 12.7 ms, 1 thread); rows of one value still take half the time on the
    # short path (11.0 against 22.4 ms). bnext/layer_norm.py and the small-call entry both choose by it.
    LAYER_NORM_SHORT_ROW = 1

SHORT_LAYER_ROW = LAYER_NORM_SHORT_ROW


cdef enum:
    # How the fused forwards (layer and group norm) take their rows:
    # - rows of at most ROW_GROUP_BYTES // 2 in groups of about ROW_GROUP_BYTES, which stay in L1 from the
    #   statistics (rows_stats) to the normalize. Row by row, each row's statistics ended in a chain of
    #   dependent divisions and a square root that held up the next row (1 thread: group norm of (256, 1024)
    #   with 32 groups, rows of 32 values, 0.26 -> 0.11 ms; layer norm over rows of 56 values 6.0 -> 3.2 ms);
    # - rows of at most PREFETCH_MAX_BYTES one at a time, the next one prefetched meanwhile;
    # - longer rows in blocks of about PASS_BYTES: the statistics pass reads the block as one stream, and the
    #   normalize pass finds it in L2. Row by row, each row's read waited for the previous row's normalize
    #   (the hardware prefetcher had stopped meanwhile): group norm of 32x64x56x56 with 32 groups (25 KiB
    #   rows) 2.0 -> 1.65 ms. Rows of 3 KiB were slower in such blocks (128x512x7x7: 1.2 vs 0.9 ms).
    ROW_GROUP_BYTES = 8192
    PASS_BYTES = 256 * 1024


cdef inline Py_ssize_t rows_per_pass(Py_ssize_t row_bytes) noexcept nogil:
    if row_bytes <= ROW_GROUP_BYTES // 2:
        return ROW_GROUP_BYTES // row_bytes
    return 1 if row_bytes <= PREFETCH_MAX_BYTES else max(1, PASS_BYTES // row_bytes)


cdef inline void prefetch_next_rows(const floating* px, Py_ssize_t xs, Py_ssize_t length, Py_ssize_t r1,
                                    Py_ssize_t R, Py_ssize_t n_rows) noexcept nogil:
    """Ask for the next pass's rows [r1, r1 + R) (prefetch_bytes: none of a row longer than
    PREFETCH_MAX_BYTES, whose pass the hardware prefetcher streams)."""
    cdef Py_ssize_t r
    for r in range(r1, min(r1 + R, n_rows)):
        prefetch_bytes(px + r * xs, length * sizeof(floating))


# ---------------------------------------------------------------------------------------------------------
# Fused layer-norm forward: each row (a sample) is contiguous, so a thread takes a group of whole rows
# (rows_per_pass: rows of up to 4 KiB in groups of about 8 KiB, one row of up to 8 KiB, or about 256 KiB of
# longer rows), computes their statistics and normalizes them right away, while they are in cache. Memory
# passes: read x, write y. Rows of one value use batch_stats + column_affine (LAYER_NORM_SHORT_ROW).

cdef inline Moments row_moments(const floating* x, Py_ssize_t length) noexcept nogil:
    """A row's moments: its BlockPlan chunks (as batch_stats cuts a row), Chan-merged in order."""
    cdef BlockPlan plan = make_plan(1, length)
    cdef Moments acc, part
    cdef Block b
    cdef Py_ssize_t j
    acc.count = 0.0
    acc.mean = 0.0
    acc.m2 = 0.0
    for j in range(plan.per_channel):
        b = plan_block(&plan, j)
        part = block_moments(x + b.inner_start, 1, 0, b.n_inner, 1)
        chan_merge(&acc.count, &acc.mean, &acc.m2, part.count, part.mean, part.m2)
    return acc


cdef inline void store_row_stats(Moments m, double eps, double* mean_out, double* var_out,
                                 double* invstd_out) noexcept nogil:
    mean_out[0] = m.mean
    var_out[0] = m.m2 / m.count
    invstd_out[0] = 1.0 / sqrt(var_out[0] + eps)


cdef void rows_stats(const floating* px, Py_ssize_t xs, Py_ssize_t n_rows, Py_ssize_t length, double eps,
                     double* mean_out, double* var_out, double* invstd_out) noexcept nogil:
    """store_row_stats(row_moments(row)) for n_rows rows, the same operations in another order.

    Rows shorter than BLOCK are one block each: every row's shifted sums first (kept in the outputs), then
    their moments in one loop over the rows. Row by row, each row ended in a chain of dependent divisions
    and a root that stalled the next row's loads; here the rows' chains are independent and overlap.
    """
    cdef Py_ssize_t r
    cdef double count = <double>length
    cdef Moments m
    m.count = count
    if length >= BLOCK:
        for r in range(n_rows):
            store_row_stats(row_moments(px + r * xs, length), eps, &mean_out[r], &var_out[r], &invstd_out[r])
        return
    for r in range(n_rows):
        mean_out[r] = px[r * xs]  # the shift: the row's first value, as block_moments takes it
        var_out[r] = 0.0
        invstd_out[r] = 0.0
        run_shifted_sums(px + r * xs, length, 1, mean_out[r], &var_out[r], &invstd_out[r])
    for r in range(n_rows):
        shifted_to_moments(count, mean_out[r], var_out[r], invstd_out[r], &m.mean, &m.m2)
        store_row_stats(m, eps, &mean_out[r], &var_out[r], &invstd_out[r])


def layer_norm_forward(const floating[:, ::1] x, const double[::1] weight, const double[::1] bias, double eps,
                       double[::1] mean_out, double[::1] var_out, double[::1] invstd_out,
                       floating[:, ::1] y_out, int n_threads):
    """Per row: mean, biased var, invstd; y = (x - mean) * invstd * weight[i] + bias[i]. y_out may be x."""
    layer_norm_forward_into(&x[0, 0], x.shape[0], x.shape[1], x.strides[0] // sizeof(floating), &weight[0],
                            &bias[0], eps, &mean_out[0], &var_out[0], &invstd_out[0], &y_out[0, 0],
                            y_out.strides[0] // sizeof(floating), n_threads)


cdef int layer_norm_forward_into(const floating* px, Py_ssize_t n_rows, Py_ssize_t length, Py_ssize_t xs,
                                 const double* weight, const double* bias, double eps, double* mean_out,
                                 double* var_out, double* invstd_out, floating* py, Py_ssize_t ys,
                                 int n_threads) except -1:
    cdef floating* vectors = <floating*>checked_malloc(2 * length * sizeof(floating))
    cdef floating* weight_f = vectors
    cdef floating* bias_f = vectors + length
    cdef Py_ssize_t r, i, k, r0, r1
    cdef Py_ssize_t R = rows_per_pass(length * sizeof(floating)), n_blocks = (n_rows + R - 1) // R
    cdef bint stream = stream_output(n_rows * length, length, sizeof(floating))
    n_threads = kernel_threads(n_rows * length, n_threads)
    try:
        with nogil:
            for i in range(length):
                weight_f[i] = <floating>weight[i]
                bias_f[i] = <floating>bias[i]
            with parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
                for k in prange(n_blocks, schedule="static"):
                    r0 = k * R
                    r1 = min(r0 + R, n_rows)
                    rows_stats(px + r0 * xs, xs, r1 - r0, length, eps, &mean_out[r0], &var_out[r0],
                               &invstd_out[r0])
                    prefetch_next_rows(px, xs, length, r1, R, n_rows)
                    for r in range(r0, r1):
                        column_affine_run(px + r * xs, py + r * ys, length, mean_out[r], <floating>invstd_out[r],
                                          weight_f, bias_f, stream)
                if stream:
                    stream_fence()
    finally:
        free(vectors)
    return 0


# ---------------------------------------------------------------------------------------------------------
# Fused group-norm forward: a row is one (sample, group) pair, C / G channels of `spatial` values each,
# contiguous in C-ordered (N, C, *) data. A thread takes a block of rows (rows_per_pass), computes their
# statistics, asks for the next block's rows (when short), and normalizes the block while it is in cache
# with a per-channel affine:
# y = ((x - mean_hi) - mean_lo) * (invstd * weight[c]) + bias[c]. Memory passes: read x, write y.

def group_norm_forward(const floating[:, ::1] x, Py_ssize_t spatial, const double[::1] weight,
                       const double[::1] bias, double eps, double[::1] mean_out, double[::1] var_out,
                       double[::1] invstd_out, floating[:, ::1] y_out, int n_threads):
    """x and y_out are (N * G, C / G * spatial); weight and bias have C values. y_out may be x."""
    group_norm_forward_into(&x[0, 0], x.shape[0], x.shape[1], x.strides[0] // sizeof(floating), spatial,
                            weight.shape[0], &weight[0], &bias[0], eps, &mean_out[0], &var_out[0], &invstd_out[0],
                            &y_out[0, 0], y_out.strides[0] // sizeof(floating), n_threads)


cdef int group_norm_forward_into(const floating* px, Py_ssize_t n_rows, Py_ssize_t length, Py_ssize_t xs,
                                 Py_ssize_t spatial, Py_ssize_t n_channels, const double* weight,
                                 const double* bias, double eps, double* mean_out, double* var_out,
                                 double* invstd_out, floating* py, Py_ssize_t ys, int n_threads) except -1:
    cdef Py_ssize_t per_group = length // spatial
    cdef Py_ssize_t groups = n_channels // per_group
    cdef floating* bias_f = <floating*>checked_malloc(n_channels * sizeof(floating))
    cdef Py_ssize_t r, c, first, k, r0, r1
    cdef Py_ssize_t R = rows_per_pass(length * sizeof(floating)), n_blocks = (n_rows + R - 1) // R
    cdef bint stream = stream_output(n_rows * length, spatial, sizeof(floating))
    n_threads = kernel_threads(n_rows * length, n_threads)
    try:
        with nogil:
            for c in range(n_channels):
                bias_f[c] = <floating>bias[c]
            with parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
                for k in prange(n_blocks, schedule="static"):
                    r0 = k * R
                    r1 = min(r0 + R, n_rows)
                    rows_stats(px + r0 * xs, xs, r1 - r0, length, eps, &mean_out[r0], &var_out[r0],
                               &invstd_out[r0])
                    prefetch_next_rows(px, xs, length, r1, R, n_rows)
                    for r in range(r0, r1):
                        first = (r % groups) * per_group
                        group_affine_row(px + r * xs, py + r * ys, per_group, spatial, mean_out[r],
                                         invstd_out[r], &weight[first], bias_f + first, stream)
                if stream:
                    stream_fence()
    finally:
        free(bias_f)
    return 0


cdef inline void group_affine_row(const floating* x, floating* y, Py_ssize_t per_group, Py_ssize_t spatial,
                                  double mean, double invstd, const double* weight,
                                  const floating* bias, bint stream) noexcept nogil:
    cdef floating hi, lo
    cdef Py_ssize_t j
    split_mean_value(mean, &hi, &lo)
    if spatial == 1:
        # One value per channel ((N, C) input): the channel loop is the vector loop.
        for j in range(per_group):
            y[j] = ((x[j] - hi) - lo) * <floating>(invstd * weight[j]) + bias[j]
        return
    for j in range(per_group):
        affine_run(x + j * spatial, 1, y + j * spatial, 1, spatial, hi, lo, <floating>(invstd * weight[j]),
                   bias[j], stream)


# ---------------------------------------------------------------------------------------------------------
# Layer-norm backward, fused per row: one read of the row's dy and x for its two sums (dy scaled by the
# elementwise weight), then dx written while the row is in L1, and the row's dy and dy * x_hat added into
# its row block's column partials. Memory passes: read dy and x, write dx; the column partials of each
# block of rows are summed per column in block order afterwards.

cdef inline Py_ssize_t column_rows_per_block(Py_ssize_t n_rows) noexcept nogil:
    # About 32 blocks (enough work items), but at most 64 rows a block: the partials (two doubles per column
    # and block) stay small next to the data.
    return min(64, max(1, (n_rows + 31) // 32))


def layer_norm_gradient(const floating[:, ::1] dy, const floating[:, ::1] x, const double[::1] mean,
                        const double[::1] invstd, const double[::1] weight, floating[:, ::1] dx_out,
                        double[::1] dweight_out, double[::1] dbias_out, int n_threads):
    """dx, and dweight[i] = sum_r dy * x_hat, dbias[i] = sum_r dy (accumulated in double).

    With g = weight * dy and m = length: dx = invstd * (g - sum(g) / m - x_hat * sum(g * x_hat) / m) per row.
    dx_out may be dy or x itself.
    """
    layer_norm_gradient_into(&dy[0, 0], dy.strides[0] // sizeof(floating), &x[0, 0],
                             x.strides[0] // sizeof(floating), x.shape[0], x.shape[1], &mean[0], &invstd[0], &weight[0], &dx_out[0, 0],
                             dx_out.strides[0] // sizeof(floating), &dweight_out[0], &dbias_out[0], n_threads)


cdef int layer_norm_gradient_into(const floating* pg, Py_ssize_t gs, const floating* px, Py_ssize_t xs,
                                  Py_ssize_t n_rows, Py_ssize_t length, const double* mean, const double* invstd,
                                  const double* weight, floating* pd, Py_ssize_t ds, double* dweight_out,
                                  double* dbias_out, int n_threads) except -1:
    cdef Py_ssize_t R = column_rows_per_block(n_rows)
    cdef Py_ssize_t n_blocks = (n_rows + R - 1) // R
    cdef double* parts = <double*>checked_malloc(2 * n_blocks * length * sizeof(double))
    cdef floating* weight_f = <floating*>checked_malloc(length * sizeof(floating))
    cdef Py_ssize_t k, i
    n_threads = kernel_threads(n_rows * length, n_threads)
    try:
        with nogil:
            for i in range(length):
                weight_f[i] = <floating>weight[i]
            for k in prange(n_blocks, num_threads=n_threads, schedule="static",
                            use_threads_if=n_threads > 1):
                layer_norm_gradient_block(pg, gs, px, xs, pd, ds, k * R, min(R, n_rows - k * R), length,
                                          mean, invstd, weight, weight_f,
                                          parts + 2 * k * length, parts + (2 * k + 1) * length)
            for k in prange((length + COLUMN_CHUNK - 1) // COLUMN_CHUNK, num_threads=n_threads,
                            schedule="static", use_threads_if=n_threads > 1):
                i = k * COLUMN_CHUNK
                sum_columns(parts + i, n_blocks, 2 * length, min(COLUMN_CHUNK, length - i), dbias_out + i)
                sum_columns(parts + length + i, n_blocks, 2 * length, min(COLUMN_CHUNK, length - i),
                            dweight_out + i)
    finally:
        free(parts)
        free(weight_f)
    return 0


cdef enum:
    # Columns summed at once by sum_columns (its local accumulators: 4 KiB).
    COLUMN_CHUNK = 512


cdef void sum_columns(const double* parts, Py_ssize_t n_blocks, Py_ssize_t block_stride, Py_ssize_t n,
                      double* out) noexcept nogil:
    """out[i] = the sum over blocks k, in block order, of parts[k * block_stride + i], for i < n <= COLUMN_CHUNK.

    Block by block over all n columns: a local accumulator array (which nothing aliases) lets the loop
    over columns vectorize; summing each column down its blocks was a strided scalar loop that took 40% of
    layer_norm_backward on (8, 768).
    """
    cdef double acc[COLUMN_CHUNK]
    cdef const double* p
    cdef Py_ssize_t i, k
    for i in range(n):
        acc[i] = 0.0
    for k in range(n_blocks):
        p = parts + k * block_stride
        for i in range(n):
            acc[i] += p[i]
    for i in range(n):
        out[i] = acc[i]


cdef void layer_norm_gradient_block(const floating* dy, Py_ssize_t gs, const floating* x, Py_ssize_t xs,
                                    floating* dx, Py_ssize_t ds, Py_ssize_t r0, Py_ssize_t n_rows,
                                    Py_ssize_t length, const double* mean, const double* invstd,
                                    const double* weight, const floating* weight_f,
                                    double* col_dy, double* col_dy_x_hat) noexcept nogil:
    cdef Py_ssize_t r, i
    cdef const floating* g
    cdef const floating* xr
    cdef floating* dxr
    cdef double sum_g, sum_g_xmu, center, inv, d
    cdef floating hi, lo, inv_f, coef_1, coef_x_hat
    for i in range(length):
        col_dy[i] = 0.0
        col_dy_x_hat[i] = 0.0
    for r in range(r0, r0 + n_rows):
        g = dy + r * gs
        xr = x + r * xs
        dxr = dx + r * ds
        center = mean[r]
        inv = invstd[r]
        sum_g = 0.0
        sum_g_xmu = 0.0
        weighted_row_sums(g, xr, weight, length, center, &sum_g, &sum_g_xmu)
        for i in range(length):
            d = (xr[i] - center) * inv
            col_dy[i] += g[i]
            col_dy_x_hat[i] += g[i] * d
        split_mean_value(center, &hi, &lo)
        inv_f = <floating>inv
        coef_1 = <floating>(-sum_g / length)
        coef_x_hat = <floating>(-sum_g_xmu * inv / length)
        for i in range(length):
            dxr[i] = inv_f * ((weight_f[i] * g[i] + coef_1) + coef_x_hat * (((xr[i] - hi) - lo) * inv_f))


cdef inline void weighted_row_sums(const floating* dy, const floating* x, const double* weight, Py_ssize_t n,
                                   double center, double* sum_g, double* sum_g_xmu) noexcept nogil:
    """Add sum(g) and sum(g * (x - center)), g = weight * dy, over one row, in double with fixed lanes."""
    cdef double acc_g[LANES]
    cdef double acc_gx[LANES]
    cdef double g
    cdef Py_ssize_t i, v, n_vec = n - n % LANES
    cdef int k
    for k in range(LANES):
        acc_g[k] = 0.0
        acc_gx[k] = 0.0
    for v in range(n_vec // LANES):
        i = v * LANES
        for k in range(HALF_LANES):
            g = weight[i + k] * dy[i + k]
            acc_g[k] += g
            acc_gx[k] += g * (x[i + k] - center)
        for k in range(HALF_LANES, LANES):
            g = weight[i + k] * dy[i + k]
            acc_g[k] += g
            acc_gx[k] += g * (x[i + k] - center)
    for i in range(n_vec, n):
        g = weight[i] * dy[i]
        acc_g[i - n_vec] += g
        acc_gx[i - n_vec] += g * (x[i] - center)
    sum_g[0] += fold_lanes(acc_g)
    sum_g_xmu[0] += fold_lanes(acc_gx)


# ---------------------------------------------------------------------------------------------------------
# Group/instance-norm dx: per row r (one (n, c) pair), dx = scale[r] * ((dy * dy_scale[r] + coef_1[r])
# + coef_x_hat[r] * x_hat), x_hat = ((x - mean_hi[r]) - mean_lo[r]) * invstd[r]. Every factor is O(1) or
# O(invstd), as in batch norm's dx. Memory passes: read dy and x, write dx.

def group_norm_coefficients(const double[::1] sum_dy, const double[::1] sum_dy_xmu, const double[::1] invstd,
                            const double[::1] weight, Py_ssize_t n_groups, double count, bint batch_stats,
                            double[::1] dweight_out, double[::1] dbias_out, double[::1] dy_scale_out,
                            double[::1] coef_1_out, double[::1] coef_x_hat_out):
    """Group norm's dweight, dbias and the per-(n, c) row coefficients of row_input_gradient.

    sum_dy and sum_dy_xmu hold each (n, c) row's sum(dy) and sum(dy * (x - mean)) (N * C values), invstd
    the (n, g) values (N * G), weight C values or None (1); count = values per group.
    """
    group_norm_coefficients_into(&sum_dy[0], &sum_dy_xmu[0], &invstd[0], optional_data(weight),
                                 dbias_out.shape[0], n_groups, sum_dy.shape[0] // dbias_out.shape[0], count,
                                 batch_stats, &dweight_out[0], &dbias_out[0], &dy_scale_out[0], &coef_1_out[0],
                                 &coef_x_hat_out[0])


cdef void group_norm_coefficients_into(const double* sum_dy, const double* sum_dy_xmu, const double* invstd,
                                       const double* weight, Py_ssize_t C, Py_ssize_t G, Py_ssize_t n,
                                       double count, bint batch_stats, double* dweight, double* dbias,
                                       double* dy_scale, double* coef_1, double* coef_x_hat) noexcept nogil:
    # dbias = sum over n of sum(dy), dweight = sum over n of sum(dy * (x - mean)) * invstd. With batch_stats,
    # dx = invstd * (w * dy - mean(w * dy) - x_hat * mean(w * dy * x_hat)) over each (n, g): coef_1 and
    # coef_x_hat are those two group means, negated; without, both are 0 (dx = invstd * w * dy). Every sum
    # runs in index order.
    cdef Py_ssize_t per = C // G, i, c, g, k
    cdef double w, s1, s2
    for c in range(C):
        dbias[c] = 0.0
        dweight[c] = 0.0
    for i in range(n):
        for c in range(C):
            k = i * C + c
            dbias[c] += sum_dy[k]
            dweight[c] += sum_dy_xmu[k] * invstd[i * G + c // per]
            dy_scale[k] = 1.0 if weight == NULL else weight[c]
        for g in range(G):
            s1 = 0.0
            s2 = 0.0
            if batch_stats:
                for c in range(g * per, (g + 1) * per):
                    w = 1.0 if weight == NULL else weight[c]
                    s1 += sum_dy[i * C + c] * w
                    s2 += sum_dy_xmu[i * C + c] * w
                s1 = -(s1 / count)
                s2 = -(s2 * invstd[i * G + g] / count)
            for c in range(g * per, (g + 1) * per):
                coef_1[i * C + c] = s1
                coef_x_hat[i * C + c] = s2


def row_input_gradient(const floating[:, ::1] dy, const floating[:, ::1] x, const double[::1] mean,
                       const double[::1] invstd, const double[::1] scale, const double[::1] dy_scale,
                       const double[::1] coef_1, const double[::1] coef_x_hat, floating[:, ::1] dx_out,
                       int n_threads):
    """dx_out = scale * ((dy * dy_scale + coef_1) + coef_x_hat * x_hat) per row; dx_out may be dy or x."""
    row_input_gradient_into(&dy[0, 0], dy.strides[0] // sizeof(floating), &x[0, 0],
                            x.strides[0] // sizeof(floating), x.shape[0], x.shape[1], &mean[0], &invstd[0], &scale[0], &dy_scale[0], &coef_1[0],
                            &coef_x_hat[0], &dx_out[0, 0], dx_out.strides[0] // sizeof(floating), n_threads)


cdef int row_input_gradient_into(const floating* pg, Py_ssize_t gs, const floating* px, Py_ssize_t xs,
                                 Py_ssize_t n_rows, Py_ssize_t length, const double* mean, const double* invstd,
                                 const double* scale, const double* dy_scale, const double* coef_1,
                                 const double* coef_x_hat, floating* pd, Py_ssize_t ds, int n_threads) except -1:
    cdef RowItems it = row_items(n_rows, length)
    cdef Py_ssize_t item, r, r0, r1, i0, n
    cdef bint stream = stream_output(n_rows * length, length, sizeof(floating))
    n_threads = kernel_threads(n_rows * length, n_threads)
    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        for item in prange(it.n_items, schedule="static"):
            r0 = (item // it.chunks_per_row) * it.rows_per_item
            r1 = min(r0 + it.rows_per_item, n_rows)
            i0 = (item % it.chunks_per_row) * it.chunk
            n = min(it.chunk, length - i0)
            for r in range(r0, r1):
                row_dx_run(pg + r * gs + i0, px + r * xs + i0, pd + r * ds + i0, n, mean[r],
                           <floating>invstd[r], <floating>scale[r], <floating>dy_scale[r],
                           <floating>coef_1[r], <floating>coef_x_hat[r], stream)
        if stream:
            stream_fence()
    return 0


cdef inline void row_dx_values(const floating* dy, const floating* x, floating* dx, Py_ssize_t n, floating hi,
                               floating lo, floating invstd, floating scale, floating dy_scale, floating coef_1,
                               floating coef_x_hat) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = scale * ((dy[i] * dy_scale + coef_1) + coef_x_hat * (((x[i] - hi) - lo) * invstd))


cdef inline void row_dx_run(const floating* dy, const floating* x, floating* dx, Py_ssize_t n, double mean,
                            floating invstd, floating scale, floating dy_scale, floating coef_1,
                            floating coef_x_hat, bint stream) noexcept nogil:
    """row_dx_values over one row; streamed if asked (as affine_run, _affine.pxd)."""
    cdef floating staged[STAGE]
    cdef floating hi, lo
    cdef Py_ssize_t i0 = 0, m
    split_mean_value(mean, &hi, &lo)
    if stream:
        while i0 < n:
            m = piece_length(dx, i0, n)
            row_dx_values(dy + i0, x + i0, staged, m, hi, lo, invstd, scale, dy_scale, coef_1, coef_x_hat)
            stream_values(dx + i0, staged, m)
            i0 += m
    else:
        row_dx_values(dy, x, dx, n, hi, lo, invstd, scale, dy_scale, coef_1, coef_x_hat)
