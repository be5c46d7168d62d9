# Accumulation core shared by every kernel: per-block moments and Chan's merge.
#
# A block is a small rectangle of one channel's data (a few rows of the batch, or a chunk of one long row).
# Its moments come from one pass of sums of deviations from the block's first value (shifted sums, bounded
# error, exact for constants). Blocks are then merged with Chan's formula in a fixed order, so the result
# never depends on which thread computed which block.

from cython cimport floating

cdef enum:
    # Elements per block: two passes over it must hit L1 (4096 float64 = 32 KiB).
    BLOCK = 4096


cdef struct Moments:
    double count
    double mean
    double m2


cdef struct Block:
    Py_ssize_t row_start
    Py_ssize_t n_rows
    Py_ssize_t inner_start
    Py_ssize_t n_inner


cdef struct BlockPlan:
    # How one channel's (n_outer x n_inner) slice is cut into blocks. Depends on the shape only, never on the
    # thread count: this is what makes every reduction order thread-count independent.
    Py_ssize_t n_outer
    Py_ssize_t n_inner
    Py_ssize_t rows_per_block
    Py_ssize_t chunks_per_row
    Py_ssize_t chunk
    Py_ssize_t per_channel


cdef inline BlockPlan make_plan(Py_ssize_t n_outer, Py_ssize_t n_inner) noexcept nogil:
    cdef BlockPlan plan
    plan.n_outer = n_outer
    plan.n_inner = n_inner
    if n_inner >= BLOCK:
        # Long rows: cut each row into equal chunks of at most BLOCK elements.
        plan.rows_per_block = 1
        plan.chunks_per_row = (n_inner + BLOCK - 1) // BLOCK
        plan.chunk = (n_inner + plan.chunks_per_row - 1) // plan.chunks_per_row
        plan.per_channel = n_outer * plan.chunks_per_row
    else:
        # Short rows: group whole rows until the block holds about BLOCK elements.
        plan.rows_per_block = BLOCK // n_inner
        plan.chunks_per_row = 1
        plan.chunk = n_inner
        plan.per_channel = (n_outer + plan.rows_per_block - 1) // plan.rows_per_block
    return plan


cdef inline Block plan_block(const BlockPlan* plan, Py_ssize_t j) noexcept nogil:
    """The j-th block of a channel, in the fixed merge order (batch-major, then inner chunks)."""
    cdef Block b
    b.row_start = (j // plan.chunks_per_row) * plan.rows_per_block
    b.n_rows = min(plan.rows_per_block, plan.n_outer - b.row_start)
    b.inner_start = (j % plan.chunks_per_row) * plan.chunk
    b.n_inner = min(plan.chunk, plan.n_inner - b.inner_start)
    return b


# Work items enumerate (row group, channel, chunk) in memory order for NCHW-like data, so consecutive items
# read neighbouring memory; each item still knows its channel and its block index in that channel's order.

cdef inline Py_ssize_t item_channel(const BlockPlan* plan, Py_ssize_t n_channels, Py_ssize_t item) noexcept nogil:
    return (item // plan.chunks_per_row) % n_channels


cdef inline Py_ssize_t item_block(const BlockPlan* plan, Py_ssize_t n_channels, Py_ssize_t item) noexcept nogil:
    return (item // (plan.chunks_per_row * n_channels)) * plan.chunks_per_row + item % plan.chunks_per_row


cdef inline void chan_merge(double* count, double* mean, double* m2,
                            double count_b, double mean_b, double m2_b) noexcept nogil:
    """Merge the moments (count_b, mean_b, m2_b) of a block into the running (count, mean, m2).

    Chan, Golub and LeVeque's pairwise update: the mean moves by a weighted delta and M2 gains the block's
    M2 plus the between-group term. An empty running state takes the block as it is, so a first block
    with Inf/NaN is carried over unchanged instead of meeting 0 * inf.
    """
    cdef double total, delta
    if count_b == 0:
        return
    if count[0] == 0:
        count[0] = count_b
        mean[0] = mean_b
        m2[0] = m2_b
        return
    total = count[0] + count_b
    delta = mean_b - mean[0]
    mean[0] = mean[0] + delta * (count_b / total)
    m2[0] = m2[0] + m2_b + delta * delta * (count[0] / total) * count_b
    count[0] = total


cdef inline Moments merge_blocks(const Moments* parts, Py_ssize_t n) noexcept nogil:
    """Chan-merge n block moments in index order."""
    cdef Moments acc
    cdef Py_ssize_t j
    acc.count = 0.0
    acc.mean = 0.0
    acc.m2 = 0.0
    for j in range(n):
        chan_merge(&acc.count, &acc.mean, &acc.m2, parts[j].count, parts[j].mean, parts[j].m2)
    return acc


cdef enum:
    # Independent accumulators per reduction: a fixed association that the compiler turns into SIMD lanes
    # without -ffast-math (2 AVX-512 or 4 AVX2 registers of doubles, enough to hide the add latency).
    LANES = 16
    HALF_LANES = 8


cdef inline double fold_lanes(const double* acc) noexcept nogil:
    # Pairwise, in a fixed order.
    cdef double half[HALF_LANES]
    cdef int k, width = HALF_LANES
    for k in range(width):
        half[k] = acc[k] + acc[k + width]
    while width > 1:
        width //= 2
        for k in range(width):
            half[k] = half[k] + half[k + width]
    return half[0]


cdef inline double lane_total(const double* p, Py_ssize_t n) noexcept nogil:
    """sum(p[:n]) in LANES fixed lanes, folded pairwise: one association in every build, in a loop the compiler
    vectorizes (an ordered sum is a chain of dependent additions: 20% of the statistics of 14x14 maps)."""
    cdef double acc[LANES]
    cdef Py_ssize_t i, v, n_vec = n - n % LANES
    cdef int k
    for k in range(LANES):
        acc[k] = 0.0
    for v in range(n_vec // LANES):
        i = v * LANES
        for k in range(LANES):
            acc[k] += p[i + k]
    for i in range(n_vec, n):
        acc[i - n_vec] += p[i]
    return fold_lanes(acc)


cdef extern from *:
    """
    /* acc_d[k] += d, acc_d2[k] += d * d for d = p[i + k] - shift, k < 16, over the first n_vec (a multiple of
       16) values: lane k adds positions k, k + 16, ... in order. GCC's vector types hold the 16 lanes in two
       zmm (AVX-512), four ymm (AVX2) or eight xmm (SSE2) per sum, whatever the build; written as array
       loops, the same lanes were vectorized or left half scalar depending on where GCC inlined them (a
       1.6x swing on the same kernel between two modules). Elementwise, without contraction: the same bits
       as the scalar lanes. */
    #if defined(__GNUC__)
    #if defined(__AVX512F__)
    #define BNEXT_VW 8  /* doubles per vector: the build's register width (wider ones were lowered badly) */
    #elif defined(__AVX__)
    #define BNEXT_VW 4
    #else
    #define BNEXT_VW 2
    #endif
    #define BNEXT_NV (16 / BNEXT_VW)
    typedef double bnext_vd __attribute__((vector_size(BNEXT_VW * 8)));
    typedef float bnext_vf __attribute__((vector_size(BNEXT_VW * 4)));
    #define BNEXT_SHIFTED_LANES(NAME, T, LOAD)                                                         \
    static inline void NAME(const T* p, Py_ssize_t n_vec, double shift, double* acc_d, double* acc_d2) { \
        bnext_vd sum1[BNEXT_NV], sum2[BNEXT_NV], s, a;                                                  \
        Py_ssize_t i;                                                                                   \
        int j;                                                                                          \
        for (j = 0; j < BNEXT_VW; j++) s[j] = shift;                                                    \
        __builtin_memcpy(sum1, acc_d, sizeof sum1);                                                     \
        __builtin_memcpy(sum2, acc_d2, sizeof sum2);                                                    \
        for (i = 0; i < n_vec; i += 16) {                                                               \
            for (j = 0; j < BNEXT_NV; j++) {                                                            \
                LOAD(a, p + i + j * BNEXT_VW);                                                          \
                a -= s;                                                                                 \
                sum1[j] += a;                                                                           \
                sum2[j] += a * a;                                                                       \
            }                                                                                           \
        }                                                                                               \
        __builtin_memcpy(acc_d, sum1, sizeof sum1);                                                     \
        __builtin_memcpy(acc_d2, sum2, sizeof sum2);                                                    \
    }
    /* Loads as macros: a function returning a wide vector draws -Wpsabi in builds without that width. The
       float -> double conversion is the one instruction of each x86 level: GCC lowers __builtin_convertvector
       of 8 floats (AVX-512) or 4 (AVX2) to two half conversions and an insert per vector, which made the
       loop 1.3-1.6x slower in cache. */
    #if defined(__AVX512F__)
    #include <immintrin.h>
    #define bnext_load_f32(dst, q) ((dst) = (bnext_vd)_mm512_cvtps_pd(_mm256_loadu_ps(q)))
    #elif defined(__AVX__)
    #include <immintrin.h>
    #define bnext_load_f32(dst, q) ((dst) = (bnext_vd)_mm256_cvtps_pd(_mm_loadu_ps(q)))
    #elif defined(__SSE2__)
    #include <emmintrin.h>
    #define bnext_load_f32(dst, q) \
        ((dst) = (bnext_vd)_mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i*)(q)))))
    #else
    #define bnext_load_f32(dst, q) \
        do { bnext_vf f_; __builtin_memcpy(&f_, (q), sizeof f_); (dst) = __builtin_convertvector(f_, bnext_vd); } while (0)
    #endif
    #define bnext_load_f64(dst, q) __builtin_memcpy(&(dst), (q), sizeof(dst))
    #else
    #define BNEXT_SHIFTED_LANES(NAME, T, LOAD)                                                         \
    static inline void NAME(const T* p, Py_ssize_t n_vec, double shift, double* acc_d, double* acc_d2) { \
        Py_ssize_t i; int k; double d;                                                                  \
        for (i = 0; i < n_vec; i += 16)                                                                 \
            for (k = 0; k < 16; k++) { d = (double)p[i + k] - shift; acc_d[k] += d; acc_d2[k] += d * d; } \
    }
    #endif
    BNEXT_SHIFTED_LANES(bnext_shifted_lanes_f32, float, bnext_load_f32)
    BNEXT_SHIFTED_LANES(bnext_shifted_lanes_f64, double, bnext_load_f64)
    """
    void shifted_lanes_f32 "bnext_shifted_lanes_f32"(const float* p, Py_ssize_t n_vec, double shift,
                                                      double* acc_d, double* acc_d2) noexcept nogil
    void shifted_lanes_f64 "bnext_shifted_lanes_f64"(const double* p, Py_ssize_t n_vec, double shift,
                                                      double* acc_d, double* acc_d2) noexcept nogil


cdef inline void run_shifted_sums(const floating* p, Py_ssize_t n, Py_ssize_t stride, double shift,
                                  double* sum_d, double* sum_d2) noexcept nogil:
    """Add sum(d) and sum(d * d), d = p[i] - shift, over one strided run, in double."""
    cdef double acc_d[LANES]
    cdef double acc_d2[LANES]
    cdef double d, one_d = 0.0, one_d2 = 0.0
    cdef Py_ssize_t i, n_vec = n - n % LANES
    cdef int k
    if stride != 1:  # (strided: one accumulator; the lanes are for contiguous runs)
        for i in range(n):
            d = p[i * stride] - shift
            one_d += d
            one_d2 += d * d
        sum_d[0] += one_d
        sum_d2[0] += one_d2
        return
    for k in range(LANES):
        acc_d[k] = 0.0
        acc_d2[k] = 0.0
    if floating is float:
        shifted_lanes_f32(p, n_vec, shift, acc_d, acc_d2)
    else:
        shifted_lanes_f64(p, n_vec, shift, acc_d, acc_d2)
    for i in range(n_vec, n):
        d = p[i] - shift
        acc_d[i - n_vec] += d
        acc_d2[i - n_vec] += d * d
    sum_d[0] += fold_lanes(acc_d)
    sum_d2[0] += fold_lanes(acc_d2)


cdef inline void shifted_to_moments(double count, double shift, double sum_d, double sum_d2,
                                    double* mean, double* m2) noexcept nogil:
    """(count, mean, M2) from sums of d = x - shift, where shift is one of the values.

    M2 = sum(d^2) - sum(d)^2 / count. Because shift is a data point, M2 >= (mean - shift)^2, so the
    cancellation costs at most a factor count in relative error (~1e-12 for a block in double) - and a
    constant block gives mean == shift and M2 == 0 exactly.
    """
    cdef double offset = sum_d / count
    mean[0] = shift + offset
    m2[0] = sum_d2 - sum_d * offset
    if m2[0] < 0.0:  # rounding; NaN stays NaN
        m2[0] = 0.0


cdef inline Moments block_moments(const floating* p, Py_ssize_t n_rows, Py_ssize_t row_stride,
                                  Py_ssize_t n_inner, Py_ssize_t inner_stride) noexcept nogil:
    """Moments of an (n_rows x n_inner) strided block in one pass: sums of deviations from its first value."""
    cdef Moments m
    cdef Py_ssize_t r
    cdef double sum_d = 0.0, sum_d2 = 0.0, shift = p[0]
    m.count = <double>(n_rows * n_inner)
    for r in range(n_rows):
        run_shifted_sums(p + r * row_stride, n_inner, inner_stride, shift, &sum_d, &sum_d2)
    shifted_to_moments(m.count, shift, sum_d, sum_d2, &m.mean, &m.m2)
    return m


cdef inline void run_gradient_sums(const floating* dy, Py_ssize_t dy_stride,
                                   const floating* x, Py_ssize_t x_stride, Py_ssize_t n,
                                   double center, double* sum_dy, double* sum_dy_xmu) noexcept nogil:
    """Add sum(dy) and sum(dy * (x - center)) over one strided run, accumulating in double."""
    cdef double acc_dy[LANES]
    cdef double acc_dy_xmu[LANES]
    cdef double g
    cdef Py_ssize_t i, v, n_vec = n - n % LANES
    cdef int k
    for k in range(LANES):
        acc_dy[k] = 0.0
        acc_dy_xmu[k] = 0.0
    if dy_stride == 1 and x_stride == 1:
        for v in range(n_vec // LANES):
            i = v * LANES
            for k in range(LANES):
                g = dy[i + k]
                acc_dy[k] += g
                acc_dy_xmu[k] += g * (x[i + k] - center)
        for i in range(n_vec, n):
            g = dy[i]
            acc_dy[i - n_vec] += g
            acc_dy_xmu[i - n_vec] += g * (x[i] - center)
    else:
        for i in range(n):
            g = dy[i * dy_stride]
            acc_dy[0] += g
            acc_dy_xmu[0] += g * (x[i * x_stride] - center)
    sum_dy[0] += fold_lanes(acc_dy)
    sum_dy_xmu[0] += fold_lanes(acc_dy_xmu)
