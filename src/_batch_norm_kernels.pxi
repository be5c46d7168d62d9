"""Batch-norm kernels over strided 3-D views (outer, C, inner).

The Python layer has checked everything and hands over (outer, C, inner) views of every array: outer is the
product of the axes before the channel axis, inner of those after it. Each kernel picks its traversal from the
shape alone, never from the thread count:
- channel-major (inner > 1, or C == 1): each channel is cut into blocks by a BlockPlan (_moments.pxd).
  Threads share out work items that walk memory in order: (row, channel, chunk) for long rows, (row
  group, channel chunk) for short rows, where each row adds into its channel's block sums.
- channel-minor (inner == 1, C > 1, e.g. channels-last): blocks are groups of whole rows of C channels,
  so the innermost loop runs over channels with independent per-channel accumulators.
Reductions write one partial per block and merge them per channel in block order: the result is bitwise the
same for any number of threads. Memory passes: statistics read x once; normalize reads x and writes y;
gradient_sums reads dy and x; input_gradient reads dy and x and writes dx. (Normalizing each channel right
after its statistics, while it is in L2, was measured slower here: it walks NCHW memory channel by channel.)
"""

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport sqrt
from _affine cimport affine_run, split_mean_value
from _stream cimport STAGE, piece_length, stream_fence, stream_output, stream_values
from _parallel cimport kernel_threads
from _prefetch cimport CACHE_LINE, prefetch_bytes
from libc.stdlib cimport free
from _entry cimport checked_malloc, optional_data

from _moments cimport (BLOCK, Block, BlockPlan, Moments, block_moments, chan_merge, make_plan,
                       item_block, item_channel, lane_total, merge_blocks, plan_block, run_gradient_sums,
                       run_shifted_sums, shifted_to_moments)


cdef extern from *:
    """
    #if defined(BNEXT_BUILD_FLAGS_STRING)
    #define BNEXT_BUILD_FLAGS BNEXT_BUILD_FLAGS_STRING
    #elif defined(BNEXT_BUILD_FLAGS_TOKENS)
    #define BNEXT_STRINGIZE(tokens) #tokens
    #define BNEXT_EXPAND_AND_STRINGIZE(macro) BNEXT_STRINGIZE(macro)
    #define BNEXT_BUILD_FLAGS BNEXT_EXPAND_AND_STRINGIZE(BNEXT_BUILD_FLAGS_TOKENS)
    #else
    #define BNEXT_BUILD_FLAGS "unknown"
    #endif
    """
    const char* BNEXT_BUILD_FLAGS


def build_flags():
    """The extra compiler flags this build of the kernels was made with."""
    return BNEXT_BUILD_FLAGS.decode()


cdef inline bint channel_minor(Py_ssize_t C, Py_ssize_t n_inner) noexcept nogil:
    return n_inner == 1 and C > 1


cdef inline Py_ssize_t minor_rows_per_block(Py_ssize_t C) noexcept nogil:
    # About 4 * BLOCK elements per block, and at least 256 rows: every block ends with a Chan merge per
    # channel (a division each), which must stay small next to the block's own pass (measured: 64-row
    # blocks spent about half of the statistics time of 64 channels on it). The shifted sums' error bound
    # (count * eps of double) stays far below float32 rounding.
    return max(256, 4 * BLOCK // C)


cdef inline Py_ssize_t minor_chunk(Py_ssize_t C) noexcept nogil:
    # Channels per channels-last work item: a work item is (block of rows, chunk of channels), so that wide
    # rows (e.g. (256, 1024): one block of rows) still give every thread work. LANE_CHUNK is the width the
    # lane kernels take at once; the chunks do not change any channel's summation order.
    return min(C, LANE_CHUNK)


cdef enum:
    # Channels per work item when rows shorter than BLOCK are walked in memory order.
    CHANNEL_CHUNK = 64
    # Rows this short (7x7, 14x14 maps) accumulate element-wise across rows into per-position lanes, folded
    # once per block, instead of paying a fold per row; SHORT_CHUNK channels per work item bound the lanes.
    SHORT_ROW = 256
    SHORT_CHUNK = 8


cdef enum:
    # Channels-last data with at most PACKED_MAX_C channels and packed rows (e.g. NHWC RGB images) is walked
    # as one flat run per block with TILE lanes, lane k holding channel k % C: loops over 3 channels do not
    # vectorize, loops over TILE lanes do.
    PACKED_MAX_C = 16
    TILE = 64


cdef inline bint packed_rows(Py_ssize_t C, Py_ssize_t row_stride, Py_ssize_t channel_stride) noexcept nogil:
    return C <= PACKED_MAX_C and channel_stride == 1 and row_stride == C


cdef inline Py_ssize_t tile_width(Py_ssize_t C) noexcept nogil:
    # The most lanes (a multiple of C) that fit in TILE.
    return C * (TILE // C)


cdef inline Py_ssize_t channel_chunk(Py_ssize_t n_inner) noexcept nogil:
    return SHORT_CHUNK if n_inner <= SHORT_ROW else CHANNEL_CHUNK


cdef inline Py_ssize_t channels_per_item(Py_ssize_t n_inner) noexcept nogil:
    # Elementwise kernels over rows shorter than BLOCK take, per work item, this many channels of one batch row
    # (about BLOCK values) in one loop. A work item per (row, channel) paid a division and a call per row:
    # normalize of 128x512x7x7 0.57-0.64 -> 0.50-0.53 ms, 64x256x14x14 0.50-0.57 -> 0.45-0.52 ms (1 thread).
    return max(1, BLOCK // n_inner)


cdef struct ItemPosition:
    Py_ssize_t n
    Py_ssize_t c
    Py_ssize_t i0


cdef inline ItemPosition item_position(const BlockPlan* plan, Py_ssize_t C, Py_ssize_t item) noexcept nogil:
    """Row, channel and first inner index of an elementwise work item over rows of at least BLOCK values:
    (row, channel, chunk) in memory order."""
    cdef ItemPosition p
    p.c = (item // plan.chunks_per_row) % C
    p.n = item // (plan.chunks_per_row * C)
    p.i0 = (item % plan.chunks_per_row) * plan.chunk
    return p


cdef struct Shape3:
    # The sizes of an (outer, C, inner) view.
    Py_ssize_t n_outer
    Py_ssize_t C
    Py_ssize_t n_inner


cdef struct Strides3:
    # One array's strides in that view, in elements. The kernels' cores take a pointer with these rather
    # than a typed memoryview, so the plain-call entries (_plain_calls.pxi) can run them on an ndarray's
    # data without building memoryviews (a few hundred ns each).
    Py_ssize_t outer
    Py_ssize_t channel
    Py_ssize_t inner


cdef inline Shape3 shape_of(const floating[:, :, :] v) noexcept nogil:
    cdef Shape3 s
    s.n_outer = v.shape[0]
    s.C = v.shape[1]
    s.n_inner = v.shape[2]
    return s


cdef inline Strides3 strides_of(const floating[:, :, :] v) noexcept nogil:
    cdef Strides3 t
    t.outer = v.strides[0] // sizeof(floating)
    t.channel = v.strides[1] // sizeof(floating)
    t.inner = v.strides[2] // sizeof(floating)
    return t


# ---------------------------------------------------------------------------------------------------------
# Elementwise runs shared by both traversals (and affine_run, from _affine.pxd).

cdef inline void dx_values(const floating* dy, const floating* x, floating* dx, Py_ssize_t n, floating hi,
                           floating lo, floating invstd, floating scale, floating coef_x_hat,
                           floating coef_1) noexcept nogil:
    # dx = scale * (dy + coef_1 + coef_x_hat * x_hat): every factor stays O(1) or O(invstd), so nothing
    # underflows in float32 even for data near 1e30 (a fused coef * (x - mean) coefficient would).
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = scale * ((dy[i] + coef_1) + coef_x_hat * (((x[i] - hi) - lo) * invstd))


cdef void dx_streamed(const floating* dy, const floating* x, floating* dx, Py_ssize_t n, floating hi, floating lo,
                      floating invstd, floating scale, floating coef_x_hat, floating coef_1) noexcept nogil:
    """dx_values over one contiguous run, streamed (as affine_streamed, _affine.pxd, does y)."""
    cdef floating staged[STAGE]
    cdef Py_ssize_t i0 = 0, m
    while i0 < n:
        m = piece_length(dx, i0, n)
        dx_values(dy + i0, x + i0, staged, m, hi, lo, invstd, scale, coef_x_hat, coef_1)
        stream_values(dx + i0, staged, m)
        i0 += m


cdef inline void dx_run(const floating* dy, Py_ssize_t dys, const floating* x, Py_ssize_t xs,
                        floating* dx, Py_ssize_t dxs, Py_ssize_t n, floating hi, floating lo, floating invstd,
                        floating scale, floating coef_x_hat, floating coef_1, bint stream) noexcept nogil:
    """dx_values over one strided run; contiguous runs stream dx if asked (dx_streamed, which keeps the stage
    out of this dispatch so that it inlines into loops over short rows, as affine_run does)."""
    cdef Py_ssize_t i
    if dys == 1 and xs == 1 and dxs == 1 and stream:
        dx_streamed(dy, x, dx, n, hi, lo, invstd, scale, coef_x_hat, coef_1)
    elif dys == 1 and xs == 1 and dxs == 1:
        dx_values(dy, x, dx, n, hi, lo, invstd, scale, coef_x_hat, coef_1)
    else:
        for i in range(n):
            dx[i * dxs] = scale * ((dy[i * dys] + coef_1) + coef_x_hat * (((x[i * xs] - hi) - lo) * invstd))


cdef inline double ordered_sum(const double* p, Py_ssize_t stride, Py_ssize_t n) noexcept nogil:
    cdef double s = 0.0
    cdef Py_ssize_t k
    for k in range(n):
        s += p[k * stride]
    return s


cdef enum:
    # Lanes accumulated or normalized at once: the local arrays (at most 6 x 4 KiB) stay in L1 and on a
    # small thread stack (musl gives threads 128 KiB).
    LANE_CHUNK = 512


cdef void lane_sums(const floating* x, Py_ssize_t n_rows, Py_ssize_t so, Py_ssize_t width,
                    const double* shift, double* sum_d, double* sum_d2) noexcept nogil:
    """sum_d[k] = sum over rows of d, sum_d2[k] of d * d, d = x[r * so + k] - shift[k], for k < width.

    Rows of contiguous lanes (channels of channels-last data, or the (channel, position) pairs of a chunk
    of short NCHW rows) are read in memory order; each lane adds its rows in row order. The accumulators
    are local arrays, so the compiler knows they alias nothing and vectorizes the loop over lanes.
    """
    cdef double acc_d[LANE_CHUNK]
    cdef double acc_d2[LANE_CHUNK]
    cdef double sh[LANE_CHUNK]
    cdef const floating* row
    cdef double d, a, a2
    cdef Py_ssize_t k0, n, r, k
    k0 = 0
    while k0 < width:
        n = min(LANE_CHUNK, width - k0)
        for k in range(n):
            acc_d[k] = 0.0
            acc_d2[k] = 0.0
            sh[k] = shift[k0 + k]
        r = 0
        while r < n_rows:
            row = x + r * so + k0
            # Rows of a short-row block lie far apart (a whole sample's channels between them): the
            # hardware prefetcher does not follow runs of a few KiB, so the next ones are requested by
            # hand (measured: statistics of 128x512x7x7 1.4-1.9 ms without, 0.4 ms with).
            for k in range(4, 8):
                if r + k < n_rows:
                    prefetch_bytes(row + k * so, n * sizeof(floating))
            if r + 3 < n_rows:
                # Four rows per visit of the accumulators, added one after the other: the same order of
                # additions as row by row, with a quarter of the loads and stores of the accumulator arrays.
                for k in range(n):
                    a = acc_d[k]
                    a2 = acc_d2[k]
                    d = row[k] - sh[k]
                    a = a + d
                    a2 = a2 + d * d
                    d = row[so + k] - sh[k]
                    a = a + d
                    a2 = a2 + d * d
                    d = row[2 * so + k] - sh[k]
                    a = a + d
                    a2 = a2 + d * d
                    d = row[3 * so + k] - sh[k]
                    acc_d[k] = a + d
                    acc_d2[k] = a2 + d * d
                r += 4
            else:
                for k in range(n):
                    d = row[k] - sh[k]
                    acc_d[k] += d
                    acc_d2[k] += d * d
                r += 1
        for k in range(n):
            sum_d[k0 + k] = acc_d[k]
            sum_d2[k0 + k] = acc_d2[k]
        k0 += n


cdef void split_mean(const double* mean, Py_ssize_t C, floating* hi, floating* lo) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        split_mean_value(mean[c], &hi[c], &lo[c])


cdef void to_floating(const double* src, Py_ssize_t C, floating* dst) noexcept nogil:
    # src NULL: zeros.
    cdef Py_ssize_t c
    for c in range(C):
        dst[c] = 0 if src == NULL else <floating>src[c]


# ---------------------------------------------------------------------------------------------------------
# Statistics.

def batch_stats(const floating[:, :, :] x, double[::1] mean_out, double[::1] var_out, int n_threads):
    """Per-channel mean and biased variance of x, accumulated in double."""
    stats_into(&x[0, 0, 0], shape_of(x), strides_of(x), &mean_out[0], &var_out[0], n_threads)


def train_forward(const floating[:, :, :] x, const double[::1] weight, const double[::1] bias, double eps,
                  double[::1] mean_out, double[::1] var_out, double[::1] invstd_out, floating[:, :, :] y_out,
                  int n_threads):
    """batch_stats, invstd = 1 / sqrt(var + eps), then normalize with scale = invstd * weight, shift = bias.

    One entry point for the training forward, so a call pays for one argument conversion and no NumPy
    arithmetic between the passes. weight and bias may be None (1 and 0).
    """
    train_into(&x[0, 0, 0], shape_of(x), strides_of(x), optional_data(weight),
               optional_data(bias), eps, &mean_out[0], &var_out[0], &invstd_out[0], &y_out[0, 0, 0],
               strides_of(y_out), n_threads)


def eval_forward(const floating[:, :, :] x, const double[::1] running_mean, const double[::1] running_var,
                 const double[::1] weight, const double[::1] bias, double eps, floating[:, :, :] y_out,
                 int n_threads):
    """normalize with scale = weight / sqrt(running_var + eps), shift = bias (weight, bias may be None)."""
    eval_into(&x[0, 0, 0], shape_of(x), strides_of(x), &running_mean[0], &running_var[0],
              optional_data(weight), optional_data(bias), eps, &y_out[0, 0, 0],
              strides_of(y_out), n_threads)


cdef int train_into(const floating* px, Shape3 shape, Strides3 xs, const double* weight, const double* bias,
                    double eps, double* mean_out, double* var_out, double* invstd_out, floating* py, Strides3 ys,
                    int n_threads) except -1:
    # weight and bias may be NULL (1 and 0).
    cdef Py_ssize_t c
    cdef double* scale = <double*>checked_malloc(shape.C * sizeof(double))
    try:
        stats_into(px, shape, xs, mean_out, var_out, n_threads)
        for c in range(shape.C):
            invstd_out[c] = 1.0 / sqrt(var_out[c] + eps)
            scale[c] = invstd_out[c] if weight == NULL else invstd_out[c] * weight[c]
        normalize_into(px, shape, xs, mean_out, scale, bias, py, ys, n_threads)
    finally:
        free(scale)
    return 0


cdef int eval_into(const floating* px, Shape3 shape, Strides3 xs, const double* running_mean,
                   const double* running_var, const double* weight, const double* bias, double eps, floating* py,
                   Strides3 ys, int n_threads) except -1:
    # weight and bias may be NULL (1 and 0).
    cdef Py_ssize_t c
    cdef double* scale = <double*>checked_malloc(shape.C * sizeof(double))
    try:
        for c in range(shape.C):
            scale[c] = 1.0 / sqrt(running_var[c] + eps)
            if weight != NULL:
                scale[c] = scale[c] * weight[c]
        normalize_into(px, shape, xs, running_mean, scale, bias, py, ys, n_threads)
    finally:
        free(scale)
    return 0


cdef int stats_into(const floating* px, Shape3 shape, Strides3 xs, double* mean_out, double* var_out,
                    int n_threads) except -1:
    cdef Py_ssize_t n_outer = shape.n_outer, C = shape.C, n_inner = shape.n_inner
    cdef Py_ssize_t so = xs.outer, sc = xs.channel, si = xs.inner
    cdef BlockPlan plan
    cdef Moments* parts
    cdef Moments merged
    cdef double* minor_mean
    cdef double* minor_m2
    cdef Block b
    cdef Py_ssize_t per, item, c, c0, g, j, R, n_blocks, chunk, n_chunks, k, r0
    n_threads = kernel_threads(n_outer * C * n_inner, n_threads)
    if channel_minor(C, n_inner):
        R = minor_rows_per_block(C)
        n_blocks = (n_outer + R - 1) // R
        chunk = minor_chunk(C)
        n_chunks = (C + chunk - 1) // chunk
        minor_mean = <double*>checked_malloc(n_blocks * C * sizeof(double))
        minor_m2 = <double*>checked_malloc(n_blocks * C * sizeof(double))
        try:
            with nogil:
                for item in prange(n_blocks * n_chunks, num_threads=n_threads, schedule="static",
                                   use_threads_if=n_threads > 1):
                    k = item // n_chunks
                    r0 = k * R
                    c0 = (item % n_chunks) * chunk
                    minor_block_moments(px + r0 * so + c0 * sc, min(R, n_outer - r0), so, min(chunk, C - c0), sc,
                                        minor_mean + k * C + c0, minor_m2 + k * C + c0)
                for k in prange((C + CHANNEL_CHUNK - 1) // CHANNEL_CHUNK, num_threads=n_threads,
                                schedule="static", use_threads_if=n_threads > 1):
                    minor_merge(minor_mean, minor_m2, k * CHANNEL_CHUNK, min(CHANNEL_CHUNK, C - k * CHANNEL_CHUNK),
                                C, n_blocks, R, n_outer)
                for c in range(C):
                    mean_out[c] = minor_mean[c]
                    var_out[c] = minor_m2[c] / n_outer
        finally:
            free(minor_mean)
            free(minor_m2)
        return 0
    plan = make_plan(n_outer, n_inner)
    per = plan.per_channel
    parts = <Moments*>checked_malloc(C * per * sizeof(Moments))
    try:
        with nogil:
            if plan.rows_per_block == 1:
                for item in prange(C * per, num_threads=n_threads, schedule="static",
                                   use_threads_if=n_threads > 1):
                    c = item_channel(&plan, C, item)
                    j = item_block(&plan, C, item)
                    b = plan_block(&plan, j)
                    parts[c * per + j] = block_moments(px + c * sc + b.row_start * so + b.inner_start * si,
                                                       b.n_rows, so, b.n_inner, si)
            else:
                chunk = channel_chunk(n_inner)
                n_chunks = (C + chunk - 1) // chunk
                for item in prange(per * n_chunks, num_threads=n_threads, schedule="static",
                                   use_threads_if=n_threads > 1):
                    g = item // n_chunks
                    c0 = (item % n_chunks) * chunk
                    b = plan_block(&plan, g)
                    grouped_moments(px + c0 * sc + b.row_start * so, b.n_rows, so, min(chunk, C - c0),
                                    sc, n_inner, si, parts + c0 * per + g, per)
            for c in prange(C, num_threads=n_threads, schedule="static",
                            use_threads_if=n_threads > 1):
                merged = merge_blocks(parts + c * per, per)
                mean_out[c] = merged.mean
                var_out[c] = merged.m2 / merged.count
    finally:
        free(parts)
    return 0


cdef inline void grouped_moments(const floating* x, Py_ssize_t n_rows, Py_ssize_t so, Py_ssize_t n_channels,
                                 Py_ssize_t sc, Py_ssize_t n_inner, Py_ssize_t si, Moments* out,
                                 Py_ssize_t out_stride) noexcept nogil:
    """The moments of one row group of up to CHANNEL_CHUNK channels, walking rows in memory order.

    Each channel adds its rows' sums in the same order as block_moments would; rows of at most SHORT_ROW
    values go through short_rows_sums instead.
    """
    cdef double sums[2 * CHANNEL_CHUNK]
    cdef Py_ssize_t r, c
    cdef Moments* m
    if n_inner <= SHORT_ROW:
        short_rows_sums(x, n_rows, so, n_channels, sc, n_inner, si, sums)
    else:
        for c in range(2 * n_channels):
            sums[c] = 0.0
        for r in range(n_rows):
            for c in range(n_channels):
                run_shifted_sums(x + r * so + c * sc, n_inner, si, x[c * sc], &sums[2 * c], &sums[2 * c + 1])
    for c in range(n_channels):
        m = out + c * out_stride
        m.count = <double>(n_rows * n_inner)
        shifted_to_moments(m.count, x[c * sc], sums[2 * c], sums[2 * c + 1], &m.mean, &m.m2)


cdef void short_rows_sums(const floating* x, Py_ssize_t n_rows, Py_ssize_t so, Py_ssize_t n_channels,
                                 Py_ssize_t sc, Py_ssize_t n_inner, Py_ssize_t si, double* sums) noexcept nogil:
    """sums[2c], sums[2c + 1] = sum(d), sum(d * d) of channel c's block, d = x - its first value.

    Position i of every row adds into lane i (an element-wise loop the compiler vectorizes); the lanes are
    folded once at the end (lane_total).
    """
    cdef double lanes_d[SHORT_CHUNK * SHORT_ROW]
    cdef double lanes_d2[SHORT_CHUNK * SHORT_ROW]
    cdef double* lane_d
    cdef double* lane_d2
    cdef const floating* row
    cdef double d, shift
    cdef Py_ssize_t r, c, i
    if si == 1 and sc == n_inner:
        # The chunk's rows are contiguous runs of n_channels * n_inner lanes.
        for c in range(n_channels):
            for i in range(n_inner):
                lanes_d2[c * n_inner + i] = x[c * sc]  # the shifts, overwritten by lane_sums' results
        lane_sums(x, n_rows, so, n_channels * n_inner, lanes_d2, lanes_d, lanes_d2)
        for c in range(n_channels):
            sums[2 * c] = lane_total(lanes_d + c * n_inner, n_inner)
            sums[2 * c + 1] = lane_total(lanes_d2 + c * n_inner, n_inner)
        return
    for i in range(n_channels * n_inner):
        lanes_d[i] = 0.0
        lanes_d2[i] = 0.0
    for r in range(n_rows):
        for c in range(n_channels):
            row = x + r * so + c * sc
            shift = x[c * sc]
            lane_d = lanes_d + c * n_inner
            lane_d2 = lanes_d2 + c * n_inner
            if si == 1:
                for i in range(n_inner):
                    d = row[i] - shift
                    lane_d[i] += d
                    lane_d2[i] += d * d
            else:
                for i in range(n_inner):
                    d = row[i * si] - shift
                    lane_d[i] += d
                    lane_d2[i] += d * d
    for c in range(n_channels):
        sums[2 * c] = lane_total(lanes_d + c * n_inner, n_inner)
        sums[2 * c + 1] = lane_total(lanes_d2 + c * n_inner, n_inner)


cdef void minor_block_moments(const floating* x, Py_ssize_t n_rows, Py_ssize_t so, Py_ssize_t C,
                                     Py_ssize_t sc, double* mean, double* m2) noexcept nogil:
    # One pass over n_rows rows of C channels, shifted by the block's first row; the loops over c are
    # independent per channel. mean and m2 hold the sums of d and d*d until the end.
    cdef Py_ssize_t r, c
    cdef const floating* row
    cdef double d
    if packed_rows(C, so, sc):
        packed_block_moments(x, n_rows * C, C, mean, m2)
        return
    if sc == 1:  # unit stride: rows of contiguous lanes
        for c in range(C):
            m2[c] = x[c]  # the shifts, overwritten by lane_sums' results
        lane_sums(x, n_rows, so, C, m2, mean, m2)
    else:
        for c in range(C):
            mean[c] = 0.0
            m2[c] = 0.0
        for r in range(n_rows):
            row = x + r * so
            for c in range(C):
                d = row[c * sc] - <double>x[c * sc]
                mean[c] += d
                m2[c] += d * d
    for c in range(C):
        shifted_to_moments(<double>n_rows, x[c * sc], mean[c], m2[c], &mean[c], &m2[c])


cdef void packed_block_moments(const floating* x, Py_ssize_t n, Py_ssize_t C, double* mean,
                               double* m2) noexcept nogil:
    """minor_block_moments for n packed values of C channels, shifted by the first row, in tile lanes."""
    cdef double lane_d[TILE]
    cdef double lane_d2[TILE]
    cdef double shift[TILE]
    cdef Py_ssize_t width = tile_width(C), n_full = n - n % width, i, v, k, c
    cdef const floating* p
    cdef double d, sum_d, sum_d2
    for k in range(width):
        lane_d[k] = 0.0
        lane_d2[k] = 0.0
        shift[k] = x[k % C]
    for v in range(n_full // width):
        p = x + v * width
        for k in range(width):
            d = p[k] - shift[k]
            lane_d[k] += d
            lane_d2[k] += d * d
    for i in range(n_full, n):
        d = x[i] - shift[i - n_full]
        lane_d[i - n_full] += d
        lane_d2[i - n_full] += d * d
    for c in range(C):
        sum_d = 0.0
        sum_d2 = 0.0
        k = c
        while k < width:  # channel c's lanes, in order
            sum_d += lane_d[k]
            sum_d2 += lane_d2[k]
            k += C
        shifted_to_moments(<double>(n // C), shift[c], sum_d, sum_d2, &mean[c], &m2[c])


cdef void minor_merge(double* mean, double* m2, Py_ssize_t c0, Py_ssize_t n_channels, Py_ssize_t C,
                             Py_ssize_t n_blocks, Py_ssize_t rows_per_block, Py_ssize_t n_outer) noexcept nogil:
    """Chan-merge channels c0.. c0+n_channels over the blocks (block k at mean[k * C]) into block 0's slots.

    Blocks outer, channels inner: the partials are read in memory order; each channel still merges its
    blocks in block order.
    """
    cdef Py_ssize_t k, c
    cdef double count = <double>min(rows_per_block, n_outer), merged_count
    for k in range(1, n_blocks):
        merged_count = count
        for c in range(c0, c0 + n_channels):
            merged_count = count
            chan_merge(&merged_count, &mean[c], &m2[c], <double>min(rows_per_block, n_outer - k * rows_per_block),
                       mean[k * C + c], m2[k * C + c])
        count = merged_count


def update_running(floating[:] buffer, const double[::1] batch, double factor, double momentum):
    """buffer = (1 - momentum) * buffer + momentum * (batch * factor), in double, stored in buffer's dtype."""
    update_running_into(&buffer[0], buffer.strides[0] // sizeof(floating), buffer.shape[0], &batch[0], factor,
                        momentum)


cdef void update_running_into(floating* buffer, Py_ssize_t stride, Py_ssize_t C, const double* batch,
                              double factor, double momentum) noexcept nogil:
    # PyTorch's running statistics (factor: m / (m - 1) for the unbiased variance). A float32 buffer may
    # round to inf (data near 1e30): the honest value.
    cdef Py_ssize_t c
    for c in range(C):
        buffer[c * stride] = <floating>((1.0 - momentum) * buffer[c * stride] + momentum * (batch[c] * factor))


def update_running_over_rows(floating[:] buffer, const double[:, ::1] rows, double factor, double momentum):
    """update_running with batch = the mean over rows of rows * factor (instance norm: a row per sample)."""
    update_running_rows_into(&buffer[0], buffer.strides[0] // sizeof(floating), buffer.shape[0], &rows[0, 0],
                             rows.shape[0], factor, momentum)


cdef void update_running_rows_into(floating* buffer, Py_ssize_t stride, Py_ssize_t C, const double* rows,
                                   Py_ssize_t n_rows, double factor, double momentum) noexcept nogil:
    # Each column's mean, its rows added in order; then update_running_into's formula with factor 1.
    cdef Py_ssize_t c, r
    cdef double acc
    for c in range(C):
        acc = 0.0
        for r in range(n_rows):
            acc += rows[r * C + c] * factor
        acc = acc / <double>n_rows
        update_running_into(buffer + c * stride, stride, 1, &acc, 1.0, momentum)


# ---------------------------------------------------------------------------------------------------------
# Normalization: y = ((x - mean_hi) - mean_lo) * scale + shift per channel. Memory passes: read x, write y.

def normalize(const floating[:, :, :] x, const double[::1] mean, const double[::1] scale,
              const double[::1] shift, floating[:, :, :] y_out, int n_threads):
    """y_out = (x - mean) * scale + shift per channel; y_out may be x itself."""
    normalize_into(&x[0, 0, 0], shape_of(x), strides_of(x), &mean[0], &scale[0], &shift[0], &y_out[0, 0, 0],
                   strides_of(y_out), n_threads)


cdef int normalize_into(const floating* px, Shape3 shape, Strides3 xs, const double* mean, const double* scale,
                        const double* shift, floating* py, Strides3 ys, int n_threads) except -1:
    # shift may be NULL: zeros.
    cdef Py_ssize_t n_outer = shape.n_outer, C = shape.C, n_inner = shape.n_inner
    cdef Py_ssize_t so = xs.outer, sc = xs.channel, si = xs.inner
    cdef Py_ssize_t yo = ys.outer, yc = ys.channel, yi = ys.inner
    cdef floating* coef = <floating*>checked_malloc(4 * C * sizeof(floating))
    cdef floating* hi = coef
    cdef floating* lo = coef + C
    cdef floating* scale_f = coef + 2 * C
    cdef floating* shift_f = coef + 3 * C
    cdef BlockPlan plan
    cdef ItemPosition at
    cdef Py_ssize_t item, n, c, c0, i0, R, n_blocks, k, r0, chunk, n_chunks
    cdef bint stream = stream_output(n_outer * C * n_inner, n_inner, sizeof(floating))
    n_threads = kernel_threads(n_outer * C * n_inner, n_threads)
    try:
        with nogil:
            split_mean(mean, C, hi, lo)
            to_floating(scale, C, scale_f)
            to_floating(shift, C, shift_f)
            if channel_minor(C, n_inner):
                R = minor_rows_per_block(C)
                n_blocks = (n_outer + R - 1) // R
                chunk = minor_chunk(C)
                n_chunks = (C + chunk - 1) // chunk
                for item in prange(n_blocks * n_chunks, num_threads=n_threads, schedule="static",
                                   use_threads_if=n_threads > 1):
                    r0 = (item // n_chunks) * R
                    c = (item % n_chunks) * chunk
                    minor_affine(px + r0 * so + c * sc, so, sc, py + r0 * yo + c * yc, yo, yc,
                                 min(R, n_outer - r0), min(chunk, C - c), hi + c, lo + c, scale_f + c, shift_f + c)
            elif n_inner < BLOCK:
                # Short rows, elementwise in memory order: an item is a run of channels of one batch row.
                k = channels_per_item(n_inner)
                n_chunks = (C + k - 1) // k
                with parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
                    for item in prange(n_outer * n_chunks, schedule="static"):
                        n = item // n_chunks
                        c0 = (item - n * n_chunks) * k
                        for c in range(c0, min(c0 + k, C)):
                            affine_run(px + n * so + c * sc, si, py + n * yo + c * yc, yi, n_inner, hi[c], lo[c],
                                       scale_f[c], shift_f[c], stream)
                    if stream:
                        stream_fence()
            else:
                # Long rows, elementwise: walk (row, channel, chunk) in memory order.
                plan = make_plan(n_outer, n_inner)
                with parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
                    for item in prange(n_outer * C * plan.chunks_per_row, schedule="static"):
                        at = item_position(&plan, C, item)
                        n = at.n
                        c = at.c
                        i0 = at.i0
                        affine_run(px + n * so + c * sc + i0 * si, si, py + n * yo + c * yc + i0 * yi, yi,
                                   min(plan.chunk, n_inner - i0), hi[c], lo[c], scale_f[c], shift_f[c], stream)
                    if stream:
                        stream_fence()
    finally:
        free(coef)
    return 0


cdef void minor_affine(const floating* x, Py_ssize_t so, Py_ssize_t sc, floating* y, Py_ssize_t yo,
                       Py_ssize_t yc, Py_ssize_t n_rows, Py_ssize_t C, const floating* hi,
                       const floating* lo, const floating* scale, const floating* shift) noexcept nogil:
    cdef Py_ssize_t r, c
    cdef const floating* xr
    cdef floating* yr
    if packed_rows(C, so, sc) and packed_rows(C, yo, yc):
        packed_affine(x, y, n_rows * C, C, hi, lo, scale, shift)
        return
    if sc == 1 and yc == 1:
        lane_affine(x, so, y, yo, n_rows, C, hi, lo, scale, shift)
        return
    for r in range(n_rows):
        xr = x + r * so
        yr = y + r * yo
        for c in range(C):
            yr[c * yc] = ((xr[c * sc] - hi[c]) - lo[c]) * scale[c] + shift[c]


cdef void lane_affine(const floating* x, Py_ssize_t so, floating* y, Py_ssize_t yo, Py_ssize_t n_rows,
                      Py_ssize_t width, const floating* hi, const floating* lo, const floating* scale,
                      const floating* shift) noexcept nogil:
    """y[r, k] = ((x[r, k] - hi[k]) - lo[k]) * scale[k] + shift[k] over rows of contiguous lanes.

    The coefficients are copied to local arrays, LANE_CHUNK lanes at a time: y cannot alias them, so the
    compiler vectorizes the loop over lanes without reloading them after every store.
    """
    cdef floating h[LANE_CHUNK]
    cdef floating l[LANE_CHUNK]
    cdef floating a[LANE_CHUNK]
    cdef floating b[LANE_CHUNK]
    cdef const floating* xr
    cdef floating* yr
    cdef Py_ssize_t k0 = 0, n, r, k
    while k0 < width:
        n = min(LANE_CHUNK, width - k0)
        for k in range(n):
            h[k] = hi[k0 + k]
            l[k] = lo[k0 + k]
            a[k] = scale[k0 + k]
            b[k] = shift[k0 + k]
        for r in range(n_rows):
            xr = x + r * so + k0
            yr = y + r * yo + k0
            for k in range(n):
                yr[k] = ((xr[k] - h[k]) - l[k]) * a[k] + b[k]
        k0 += n


cdef void tile(const floating* per_channel, Py_ssize_t C, Py_ssize_t width, floating* lanes) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(width):
        lanes[k] = per_channel[k % C]


cdef void packed_affine(const floating* x, floating* y, Py_ssize_t n, Py_ssize_t C, const floating* hi,
                        const floating* lo, const floating* scale, const floating* shift) noexcept nogil:
    """minor_affine for n packed values of C channels, with the coefficients tiled to the lane width."""
    cdef floating hi_t[TILE]
    cdef floating lo_t[TILE]
    cdef floating scale_t[TILE]
    cdef floating shift_t[TILE]
    cdef Py_ssize_t width = tile_width(C), n_full = n - n % width, i, v, k
    tile(hi, C, width, hi_t)
    tile(lo, C, width, lo_t)
    tile(scale, C, width, scale_t)
    tile(shift, C, width, shift_t)
    for v in range(n_full // width):
        i = v * width
        for k in range(width):
            y[i + k] = ((x[i + k] - hi_t[k]) - lo_t[k]) * scale_t[k] + shift_t[k]
    for i in range(n_full, n):
        k = i - n_full
        y[i] = ((x[i] - hi_t[k]) - lo_t[k]) * scale_t[k] + shift_t[k]


# ---------------------------------------------------------------------------------------------------------
# Backward. Memory passes: read dy and x once for the two sums, then read dy, x and write dx.

def gradient_sums(const floating[:, :, :] dy, const floating[:, :, :] x, const double[::1] mean,
                  double[::1] sum_dy_out, double[::1] sum_dy_xmu_out, int n_threads):
    """Per channel: sum(dy) and sum(dy * (x - mean)), fused in one pass, accumulated in double."""
    gradient_sums_into(&dy[0, 0, 0], strides_of(dy), &x[0, 0, 0], shape_of(x), strides_of(x), &mean[0],
                       &sum_dy_out[0], &sum_dy_xmu_out[0], n_threads)


cdef int gradient_sums_into(const floating* pg, Strides3 gs, const floating* px, Shape3 shape, Strides3 xs,
                            const double* mean, double* sum_dy_out, double* sum_dy_xmu_out,
                            int n_threads) except -1:
    cdef Py_ssize_t n_outer = shape.n_outer, C = shape.C, n_inner = shape.n_inner
    cdef Py_ssize_t so = xs.outer, sc = xs.channel, si = xs.inner
    cdef Py_ssize_t go = gs.outer, gc = gs.channel, gi = gs.inner
    cdef BlockPlan plan
    cdef Block b
    cdef double* parts
    cdef Py_ssize_t per, item, c, c0, g, j, r, R, n_blocks, chunk, n_chunks, k, r0
    n_threads = kernel_threads(n_outer * C * n_inner, n_threads)
    if channel_minor(C, n_inner):
        R = minor_rows_per_block(C)
        n_blocks = (n_outer + R - 1) // R
        chunk = minor_chunk(C)
        n_chunks = (C + chunk - 1) // chunk
        parts = <double*>checked_malloc(2 * n_blocks * C * sizeof(double))
        try:
            with nogil:
                for item in prange(n_blocks * n_chunks, num_threads=n_threads, schedule="static",
                                   use_threads_if=n_threads > 1):
                    k = item // n_chunks
                    r0 = k * R
                    c0 = (item % n_chunks) * chunk
                    minor_gradient_sums(pg + r0 * go + c0 * gc, go, gc, px + r0 * so + c0 * sc, so, sc,
                                        min(R, n_outer - r0), min(chunk, C - c0), &mean[c0],
                                        parts + 2 * k * C + c0, parts + (2 * k + 1) * C + c0)
                for c in prange(C, num_threads=n_threads, schedule="static",
                                use_threads_if=n_threads > 1):
                    sum_dy_out[c] = ordered_sum(parts + c, 2 * C, n_blocks)
                    sum_dy_xmu_out[c] = ordered_sum(parts + C + c, 2 * C, n_blocks)
        finally:
            free(parts)
        return 0
    plan = make_plan(n_outer, n_inner)
    per = plan.per_channel
    # parts[2 * (c * per + j)] and parts[2 * (c * per + j) + 1]: block j's sum(dy) and sum(dy * (x - mean)).
    parts = <double*>checked_malloc(2 * C * per * sizeof(double))
    try:
        with nogil:
            if plan.rows_per_block == 1:
                for item in prange(C * per, num_threads=n_threads, schedule="static",
                                   use_threads_if=n_threads > 1):
                    c = item_channel(&plan, C, item)
                    j = item_block(&plan, C, item)
                    b = plan_block(&plan, j)
                    parts[2 * (c * per + j)] = 0.0
                    parts[2 * (c * per + j) + 1] = 0.0
                    run_gradient_sums(pg + c * gc + b.row_start * go + b.inner_start * gi, gi,
                                      px + c * sc + b.row_start * so + b.inner_start * si, si, b.n_inner,
                                      mean[c], parts + 2 * (c * per + j), parts + 2 * (c * per + j) + 1)
            else:
                chunk = channel_chunk(n_inner)
                n_chunks = (C + chunk - 1) // chunk
                for item in prange(per * n_chunks, num_threads=n_threads, schedule="static",
                                   use_threads_if=n_threads > 1):
                    g = item // n_chunks
                    c0 = (item % n_chunks) * chunk
                    b = plan_block(&plan, g)
                    grouped_gradient_sums(pg + c0 * gc + b.row_start * go, go, gc,
                                          px + c0 * sc + b.row_start * so, so, sc, b.n_rows,
                                          min(chunk, C - c0), n_inner, gi, si, &mean[c0],
                                          parts + 2 * (c0 * per + g), 2 * per)
            for c in prange(C, num_threads=n_threads, schedule="static",
                            use_threads_if=n_threads > 1):
                sum_dy_out[c] = ordered_sum(parts + 2 * c * per, 2, per)
                sum_dy_xmu_out[c] = ordered_sum(parts + 2 * c * per + 1, 2, per)
    finally:
        free(parts)
    return 0


cdef inline void grouped_gradient_sums(const floating* dy, Py_ssize_t go, Py_ssize_t gc, const floating* x,
                                       Py_ssize_t so, Py_ssize_t sc, Py_ssize_t n_rows, Py_ssize_t n_channels,
                                       Py_ssize_t n_inner, Py_ssize_t gi, Py_ssize_t si, const double* mean,
                                       double* out, Py_ssize_t out_stride) noexcept nogil:
    """The gradient sums of one row group of up to CHANNEL_CHUNK channels, rows in memory order."""
    cdef Py_ssize_t r, c
    if n_inner <= SHORT_ROW:
        short_rows_gradient_sums(dy, go, gc, x, so, sc, n_rows, n_channels, n_inner, gi, si, mean, out,
                                 out_stride)
        return
    for c in range(n_channels):
        out[c * out_stride] = 0.0
        out[c * out_stride + 1] = 0.0
    for r in range(n_rows):
        for c in range(n_channels):
            run_gradient_sums(dy + r * go + c * gc, gi, x + r * so + c * sc, si, n_inner, mean[c],
                              out + c * out_stride, out + c * out_stride + 1)


cdef void short_rows_gradient_sums(const floating* dy, Py_ssize_t go, Py_ssize_t gc, const floating* x,
                                   Py_ssize_t so, Py_ssize_t sc, Py_ssize_t n_rows, Py_ssize_t n_channels,
                                   Py_ssize_t n_inner, Py_ssize_t gi, Py_ssize_t si, const double* mean,
                                   double* out, Py_ssize_t out_stride) noexcept nogil:
    """grouped_gradient_sums for rows of at most SHORT_ROW values, with per-position lanes (short_rows_sums)."""
    cdef double lanes_g[SHORT_CHUNK * SHORT_ROW]
    cdef double lanes_gx[SHORT_CHUNK * SHORT_ROW]
    cdef double* lane_g
    cdef double* lane_gx
    cdef const floating* dy_row
    cdef const floating* x_row
    cdef double g, center
    cdef Py_ssize_t r, c, i
    if gi == 1 and si == 1 and gc == n_inner and sc == n_inner:
        # The chunk's rows are contiguous runs of n_channels * n_inner lanes (as in short_rows_sums).
        for c in range(n_channels):
            for i in range(n_inner):
                lanes_gx[c * n_inner + i] = mean[c]  # the centers, overwritten by the results
        lane_gradient_sums(dy, go, x, so, n_rows, n_channels * n_inner, lanes_gx, lanes_g, lanes_gx)
    else:
        for i in range(n_channels * n_inner):
            lanes_g[i] = 0.0
            lanes_gx[i] = 0.0
        for r in range(n_rows):
            for c in range(n_channels):
                dy_row = dy + r * go + c * gc
                x_row = x + r * so + c * sc
                center = mean[c]
                lane_g = lanes_g + c * n_inner
                lane_gx = lanes_gx + c * n_inner
                for i in range(n_inner):
                    g = dy_row[i * gi]
                    lane_g[i] += g
                    lane_gx[i] += g * (x_row[i * si] - center)
    for c in range(n_channels):
        out[c * out_stride] = lane_total(lanes_g + c * n_inner, n_inner)
        out[c * out_stride + 1] = lane_total(lanes_gx + c * n_inner, n_inner)


cdef void minor_gradient_sums(const floating* dy, Py_ssize_t go, Py_ssize_t gc,
                                     const floating* x, Py_ssize_t so, Py_ssize_t sc,
                                     Py_ssize_t n_rows, Py_ssize_t C, const double* mean,
                                     double* sum_dy, double* sum_dy_xmu) noexcept nogil:
    cdef Py_ssize_t r, c
    cdef double g
    if packed_rows(C, go, gc) and packed_rows(C, so, sc):
        packed_gradient_sums(dy, x, n_rows * C, C, mean, sum_dy, sum_dy_xmu)
        return
    if gc == 1 and sc == 1:
        lane_gradient_sums(dy, go, x, so, n_rows, C, mean, sum_dy, sum_dy_xmu)
        return
    for c in range(C):
        sum_dy[c] = 0.0
        sum_dy_xmu[c] = 0.0
    for r in range(n_rows):
        for c in range(C):
            g = dy[r * go + c * gc]
            sum_dy[c] += g
            sum_dy_xmu[c] += g * (x[r * so + c * sc] - mean[c])


cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define BNEXT_REGISTER_STRIPS 1
    #else
    #define BNEXT_REGISTER_STRIPS 0
    #endif
    """
    # Only the AVX-512 builds have the 32 vector registers a strip's accumulators need: with 16, they spill
    # and strips ran 1.5x (AVX2) to 3x (baseline) slower than rows.
    const bint REGISTER_STRIPS "BNEXT_REGISTER_STRIPS"


cdef enum:
    # Lanes whose gradient accumulators stay in registers while a block's rows stream past (2 x 64 doubles:
    # 16 AVX-512 registers), for rows at most STRIP_ROW_BYTES apart.
    STRIP = 64
    STRIP_ROW_BYTES = 2048
    # Rows ahead that a strip asks for by hand.
    STRIP_AHEAD = 8


cdef inline bint rows_apart(Py_ssize_t go, Py_ssize_t so, Py_ssize_t item_size) noexcept nogil:
    # Rows of dy or x more than STRIP_ROW_BYTES apart (strides in either direction).
    cdef Py_ssize_t g = go if go >= 0 else -go
    cdef Py_ssize_t s = so if so >= 0 else -so
    return max(g, s) * item_size > STRIP_ROW_BYTES


cdef inline Py_ssize_t lanes_before_line(const void* p, Py_ssize_t item_size) noexcept nogil:
    # Lanes from p up to the next cache-line boundary.
    return ((-<size_t>p) % CACHE_LINE) // item_size


cdef void lane_gradient_sums(const floating* dy, Py_ssize_t go, const floating* x, Py_ssize_t so,
                             Py_ssize_t n_rows, Py_ssize_t width, const double* mean, double* sum_dy,
                             double* sum_dy_xmu) noexcept nogil:
    """sum_dy[k] = sum over rows of dy, sum_dy_xmu[k] of dy * (x - mean[k]), over rows of contiguous lanes.

    Each lane adds its rows in row order. Rows close together (channels-last data) are taken in strips of
    STRIP lanes that go down all the rows, the accumulators in registers: row by row, with the accumulators
    in arrays that every row loads and stores, the loop ran at half the bandwidth from L3 for rows of 512
    bytes or more (64x256x14x14 NHWC: 1.3-2.0 ms -> 0.6-1.2 ms). Strips start on a cache line of dy (NumPy's
    large arrays start 16 bytes into one): strips straddling lines ran 1.7x slower (measured in C). Rows far
    apart (short NCHW rows, or rows of 4 KiB) stay row by row: strips there walk a page per row and were
    slower ((256, 1024): 40 -> 55 us).
    """
    cdef double acc_g[STRIP]
    cdef double acc_gx[STRIP]
    cdef double center[STRIP]
    cdef const floating* gr
    cdef const floating* xr
    cdef double g
    cdef Py_ssize_t head = lanes_before_line(dy, sizeof(floating))
    cdef Py_ssize_t k0, r, j, n_strips, end
    cdef int k
    if not REGISTER_STRIPS or rows_apart(go, so, sizeof(floating)) or width < STRIP:
        lane_gradient_rows(dy, go, x, so, n_rows, width, mean, sum_dy, sum_dy_xmu)
        return
    if width - head < 2 * STRIP:
        head = 0  # one or two strips: not worth a separate pass over the rows for the head
    n_strips = (width - head) // STRIP
    end = head + n_strips * STRIP
    lane_gradient_rows(dy, go, x, so, n_rows, head, mean, sum_dy, sum_dy_xmu)
    for j in range(n_strips):
        k0 = head + j * STRIP
        for k in range(STRIP):
            acc_g[k] = 0.0
            acc_gx[k] = 0.0
            center[k] = mean[k0 + k]
        for r in range(n_rows):
            gr = dy + r * go + k0
            xr = x + r * so + k0
            if r + STRIP_AHEAD < n_rows:
                prefetch_bytes(gr + STRIP_AHEAD * go, STRIP * sizeof(floating))
                prefetch_bytes(xr + STRIP_AHEAD * so, STRIP * sizeof(floating))
            for k in range(STRIP):
                g = gr[k]
                acc_g[k] += g
                acc_gx[k] += g * (xr[k] - center[k])
        for k in range(STRIP):
            sum_dy[k0 + k] = acc_g[k]
            sum_dy_xmu[k0 + k] = acc_gx[k]
    lane_gradient_rows(dy + end, go, x + end, so, n_rows, width - end, mean + end, sum_dy + end,
                       sum_dy_xmu + end)


cdef void lane_gradient_rows(const floating* dy, Py_ssize_t go, const floating* x, Py_ssize_t so,
                             Py_ssize_t n_rows, Py_ssize_t width, const double* mean, double* sum_dy,
                             double* sum_dy_xmu) noexcept nogil:
    """lane_gradient_sums row by row, LANE_CHUNK lanes at a time in local accumulators (as lane_sums).

    Rows far apart (short NCHW rows: a sample's channels between them) are added four per visit of the
    accumulators, others two: four were 1.2x faster on 64x256x14x14 and 128x512x7x7 NCHW and 1.2x slower on
    channels-last rows of 32 channels.
    """
    cdef Py_ssize_t visit = 4 if rows_apart(go, so, sizeof(floating)) else 2
    cdef double acc_g[LANE_CHUNK]
    cdef double acc_gx[LANE_CHUNK]
    cdef double center[LANE_CHUNK]
    cdef const floating* gr
    cdef const floating* xr
    cdef double g, a, ax
    cdef Py_ssize_t k0 = 0, n, r, k
    while k0 < width:
        n = min(LANE_CHUNK, width - k0)
        for k in range(n):
            acc_g[k] = 0.0
            acc_gx[k] = 0.0
            center[k] = mean[k0 + k]
        r = 0
        while r < n_rows:
            gr = dy + r * go + k0
            xr = x + r * so + k0
            for k in range(visit, 2 * visit):  # the next visit's rows, by hand (as in lane_sums)
                if r + k < n_rows:
                    prefetch_bytes(gr + k * go, n * sizeof(floating))
                    prefetch_bytes(xr + k * so, n * sizeof(floating))
            if visit == 4 and r + 3 < n_rows:
                for k in range(n):
                    g = gr[k]
                    a = acc_g[k] + g
                    ax = acc_gx[k] + g * (xr[k] - center[k])
                    g = gr[go + k]
                    a = a + g
                    ax = ax + g * (xr[so + k] - center[k])
                    g = gr[2 * go + k]
                    a = a + g
                    ax = ax + g * (xr[2 * so + k] - center[k])
                    g = gr[3 * go + k]
                    acc_g[k] = a + g
                    acc_gx[k] = ax + g * (xr[3 * so + k] - center[k])
                r += 4
            elif r + 1 < n_rows:
                for k in range(n):
                    g = gr[k]
                    a = acc_g[k] + g
                    ax = acc_gx[k] + g * (xr[k] - center[k])
                    g = gr[go + k]
                    acc_g[k] = a + g
                    acc_gx[k] = ax + g * (xr[so + k] - center[k])
                r += 2
            else:
                for k in range(n):
                    g = gr[k]
                    acc_g[k] += g
                    acc_gx[k] += g * (xr[k] - center[k])
                r += 1
        for k in range(n):
            sum_dy[k0 + k] = acc_g[k]
            sum_dy_xmu[k0 + k] = acc_gx[k]
        k0 += n


cdef void packed_gradient_sums(const floating* dy, const floating* x, Py_ssize_t n, Py_ssize_t C,
                               const double* mean, double* sum_dy, double* sum_dy_xmu) noexcept nogil:
    """minor_gradient_sums for n packed values of C channels, in tile lanes (as packed_block_moments)."""
    cdef double lane_g[TILE]
    cdef double lane_gx[TILE]
    cdef double center[TILE]
    cdef Py_ssize_t width = tile_width(C), n_full = n - n % width, i, v, k, c
    cdef double g
    for k in range(width):
        lane_g[k] = 0.0
        lane_gx[k] = 0.0
        center[k] = mean[k % C]
    for v in range(n_full // width):
        i = v * width
        for k in range(width):
            g = dy[i + k]
            lane_g[k] += g
            lane_gx[k] += g * (x[i + k] - center[k])
    for i in range(n_full, n):
        k = i - n_full
        g = dy[i]
        lane_g[k] += g
        lane_gx[k] += g * (x[i] - center[k])
    for c in range(C):
        sum_dy[c] = 0.0
        sum_dy_xmu[c] = 0.0
        k = c
        while k < width:
            sum_dy[c] += lane_g[k]
            sum_dy_xmu[c] += lane_gx[k]
            k += C


def input_gradient(const floating[:, :, :] dy, const floating[:, :, :] x, const double[::1] mean,
                   const double[::1] invstd, const double[::1] scale, const double[::1] coef_x_hat,
                   const double[::1] coef_1, floating[:, :, :] dx_out, int n_threads):
    """dx_out = scale * (dy + coef_1 + coef_x_hat * (x - mean) * invstd) per channel.

    dx_out may be dy or x itself.
    """
    input_gradient_into(&dy[0, 0, 0], strides_of(dy), &x[0, 0, 0], shape_of(x), strides_of(x), &mean[0],
                        &invstd[0], &scale[0], &coef_x_hat[0], &coef_1[0], &dx_out[0, 0, 0], strides_of(dx_out),
                        n_threads)


def backward(const floating[:, :, :] dy, const floating[:, :, :] x, const double[::1] mean,
             const double[::1] invstd, const double[::1] weight, bint batch_stats, double[::1] dweight_out,
             double[::1] dbias_out, floating[:, :, :] dx_out, int n_threads):
    """gradient_sums, then input_gradient with the coefficients they give (weight may be None: 1).

    dbias = sum(dy), dweight = sum(dy * (x - mean)) * invstd. With batch_stats (training mode) mean and
    invstd depend on x: dx = weight * invstd * (dy - dbias / m - x_hat * dweight / m); without (eval mode)
    they are constants: dx = dy * weight * invstd. dx_out may be dy or x itself.
    """
    backward_into(&dy[0, 0, 0], strides_of(dy), &x[0, 0, 0], shape_of(x), strides_of(x), &mean[0], &invstd[0],
                  optional_data(weight), batch_stats, &dweight_out[0], &dbias_out[0],
                  &dx_out[0, 0, 0], strides_of(dx_out), n_threads)


cdef int backward_into(const floating* pg, Strides3 gs, const floating* px, Shape3 shape, Strides3 xs,
                       const double* mean, const double* invstd, const double* weight, bint batch_stats,
                       double* dweight_out, double* dbias_out, floating* pd, Strides3 ds,
                       int n_threads) except -1:
    cdef Py_ssize_t C = shape.C, c
    cdef double m = <double>(shape.n_outer * shape.n_inner)
    cdef double* coef = <double*>checked_malloc(3 * C * sizeof(double))
    cdef double* scale = coef
    cdef double* coef_x_hat = coef + C
    cdef double* coef_1 = coef + 2 * C
    try:
        # dweight_out holds sum(dy * (x - mean)) until it is scaled by invstd.
        gradient_sums_into(pg, gs, px, shape, xs, mean, dbias_out, dweight_out, n_threads)
        for c in range(C):
            dweight_out[c] = dweight_out[c] * invstd[c]
            scale[c] = invstd[c] if weight == NULL else weight[c] * invstd[c]
            coef_x_hat[c] = -dweight_out[c] / m if batch_stats else 0.0
            coef_1[c] = -dbias_out[c] / m if batch_stats else 0.0
        input_gradient_into(pg, gs, px, shape, xs, mean, invstd, scale, coef_x_hat, coef_1, pd, ds, n_threads)
    finally:
        free(coef)
    return 0


cdef int input_gradient_into(const floating* pg, Strides3 gs, const floating* px, Shape3 shape, Strides3 xs,
                             const double* mean, const double* invstd, const double* scale,
                             const double* coef_x_hat, const double* coef_1, floating* pd, Strides3 ds,
                             int n_threads) except -1:
    cdef Py_ssize_t n_outer = shape.n_outer, C = shape.C, n_inner = shape.n_inner
    cdef Py_ssize_t so = xs.outer, sc = xs.channel, si = xs.inner
    cdef Py_ssize_t go = gs.outer, gc = gs.channel, gi = gs.inner
    cdef Py_ssize_t do = ds.outer, dc = ds.channel, di = ds.inner
    cdef floating* coef = <floating*>checked_malloc(6 * C * sizeof(floating))
    cdef floating* hi = coef
    cdef floating* lo = coef + C
    cdef floating* invstd_f = coef + 2 * C
    cdef floating* scale_f = coef + 3 * C
    cdef floating* coef_x_hat_f = coef + 4 * C
    cdef floating* coef_1_f = coef + 5 * C
    cdef BlockPlan plan
    cdef ItemPosition at
    cdef Py_ssize_t item, n, c, c0, i0, R, n_blocks, k, r0, chunk, n_chunks
    cdef bint stream = stream_output(n_outer * C * n_inner, n_inner, sizeof(floating))
    n_threads = kernel_threads(n_outer * C * n_inner, n_threads)
    try:
        with nogil:
            split_mean(mean, C, hi, lo)
            to_floating(invstd, C, invstd_f)
            to_floating(scale, C, scale_f)
            to_floating(coef_x_hat, C, coef_x_hat_f)
            to_floating(coef_1, C, coef_1_f)
            if channel_minor(C, n_inner):
                R = minor_rows_per_block(C)
                n_blocks = (n_outer + R - 1) // R
                chunk = minor_chunk(C)
                n_chunks = (C + chunk - 1) // chunk
                for item in prange(n_blocks * n_chunks, num_threads=n_threads, schedule="static",
                                   use_threads_if=n_threads > 1):
                    r0 = (item // n_chunks) * R
                    c = (item % n_chunks) * chunk
                    minor_dx(pg + r0 * go + c * gc, go, gc, px + r0 * so + c * sc, so, sc, pd + r0 * do + c * dc,
                             do, dc, min(R, n_outer - r0), min(chunk, C - c), hi + c, lo + c, invstd_f + c,
                             scale_f + c, coef_x_hat_f + c, coef_1_f + c)
            elif n_inner < BLOCK:
                # Short rows, elementwise in memory order, a run of channels of one batch row per item (as in
                # normalize_into).
                k = channels_per_item(n_inner)
                n_chunks = (C + k - 1) // k
                with parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
                    for item in prange(n_outer * n_chunks, schedule="static"):
                        n = item // n_chunks
                        c0 = (item - n * n_chunks) * k
                        for c in range(c0, min(c0 + k, C)):
                            dx_run(pg + n * go + c * gc, gi, px + n * so + c * sc, si, pd + n * do + c * dc, di,
                                   n_inner, hi[c], lo[c], invstd_f[c], scale_f[c], coef_x_hat_f[c], coef_1_f[c],
                                   stream)
                    if stream:
                        stream_fence()
            else:
                # Long rows, elementwise: walk (row, channel, chunk) in memory order.
                plan = make_plan(n_outer, n_inner)
                with parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
                    for item in prange(n_outer * C * plan.chunks_per_row, schedule="static"):
                        at = item_position(&plan, C, item)
                        n = at.n
                        c = at.c
                        i0 = at.i0
                        dx_run(pg + n * go + c * gc + i0 * gi, gi, px + n * so + c * sc + i0 * si, si,
                               pd + n * do + c * dc + i0 * di, di, min(plan.chunk, n_inner - i0),
                               hi[c], lo[c], invstd_f[c], scale_f[c], coef_x_hat_f[c], coef_1_f[c], stream)
                    if stream:
                        stream_fence()
    finally:
        free(coef)
    return 0


cdef void minor_dx(const floating* dy, Py_ssize_t go, Py_ssize_t gc, const floating* x, Py_ssize_t so,
                   Py_ssize_t sc, floating* dx, Py_ssize_t do, Py_ssize_t dc, Py_ssize_t n_rows,
                   Py_ssize_t C, const floating* hi, const floating* lo, const floating* invstd,
                   const floating* scale, const floating* coef_x_hat, const floating* coef_1) noexcept nogil:
    cdef Py_ssize_t r, c
    if packed_rows(C, go, gc) and packed_rows(C, so, sc) and packed_rows(C, do, dc):
        packed_dx(dy, x, dx, n_rows * C, C, hi, lo, invstd, scale, coef_x_hat, coef_1)
        return
    if gc == 1 and sc == 1 and dc == 1:
        lane_dx(dy, go, x, so, dx, do, n_rows, C, hi, lo, invstd, scale, coef_x_hat, coef_1)
        return
    for r in range(n_rows):
        for c in range(C):
            dx[r * do + c * dc] = scale[c] * ((dy[r * go + c * gc] + coef_1[c])
                                              + coef_x_hat[c] * (((x[r * so + c * sc] - hi[c]) - lo[c]) * invstd[c]))


cdef void lane_dx(const floating* dy, Py_ssize_t go, const floating* x, Py_ssize_t so, floating* dx,
                  Py_ssize_t do, Py_ssize_t n_rows, Py_ssize_t width, const floating* hi, const floating* lo,
                  const floating* invstd, const floating* scale, const floating* coef_x_hat,
                  const floating* coef_1) noexcept nogil:
    """minor_dx over rows of contiguous lanes, with the coefficients in local arrays (as lane_affine)."""
    cdef floating h[LANE_CHUNK]
    cdef floating l[LANE_CHUNK]
    cdef floating inv[LANE_CHUNK]
    cdef floating a[LANE_CHUNK]
    cdef floating cx[LANE_CHUNK]
    cdef floating c1[LANE_CHUNK]
    cdef const floating* gr
    cdef const floating* xr
    cdef floating* dr
    cdef Py_ssize_t k0 = 0, n, r, k
    while k0 < width:
        n = min(LANE_CHUNK, width - k0)
        for k in range(n):
            h[k] = hi[k0 + k]
            l[k] = lo[k0 + k]
            inv[k] = invstd[k0 + k]
            a[k] = scale[k0 + k]
            cx[k] = coef_x_hat[k0 + k]
            c1[k] = coef_1[k0 + k]
        for r in range(n_rows):
            gr = dy + r * go + k0
            xr = x + r * so + k0
            dr = dx + r * do + k0
            for k in range(n):
                dr[k] = a[k] * ((gr[k] + c1[k]) + cx[k] * (((xr[k] - h[k]) - l[k]) * inv[k]))
        k0 += n


cdef void packed_dx(const floating* dy, const floating* x, floating* dx, Py_ssize_t n, Py_ssize_t C,
                    const floating* hi, const floating* lo, const floating* invstd, const floating* scale,
                    const floating* coef_x_hat, const floating* coef_1) noexcept nogil:
    """minor_dx for n packed values of C channels, with the coefficients tiled to the lane width."""
    cdef floating hi_t[TILE]
    cdef floating lo_t[TILE]
    cdef floating invstd_t[TILE]
    cdef floating scale_t[TILE]
    cdef floating coef_x_hat_t[TILE]
    cdef floating coef_1_t[TILE]
    cdef Py_ssize_t width = tile_width(C), n_full = n - n % width, i, v, k
    tile(hi, C, width, hi_t)
    tile(lo, C, width, lo_t)
    tile(invstd, C, width, invstd_t)
    tile(scale, C, width, scale_t)
    tile(coef_x_hat, C, width, coef_x_hat_t)
    tile(coef_1, C, width, coef_1_t)
    for v in range(n_full // width):
        i = v * width
        for k in range(width):
            dx[i + k] = scale_t[k] * ((dy[i + k] + coef_1_t[k])
                                      + coef_x_hat_t[k] * (((x[i + k] - hi_t[k]) - lo_t[k]) * invstd_t[k]))
    for i in range(n_full, n):
        k = i - n_full
        dx[i] = scale_t[k] * ((dy[i] + coef_1_t[k]) + coef_x_hat_t[k] * (((x[i] - hi_t[k]) - lo_t[k]) * invstd_t[k]))
