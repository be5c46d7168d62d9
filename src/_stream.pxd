# Streaming (non-temporal) stores for outputs much larger than the caches. A plain store first reads the
# line it writes (read for ownership), so a pass that reads x and writes y moves three array sizes through
# memory; a streaming store writes whole lines without reading them, and the pass moves two. Measured here
# on an affine pass over 25 MB: 1.55 ms with plain stores, 1.07 ms streamed. Streamed lines also bypass the
# caches, so only outputs too large to stay cached until they are read again are streamed.
#
# Values are computed into a small staging buffer (the loop the compiler vectorizes) and copied out with
# the widest streaming store the build has: 64 bytes with AVX-512, 32 with AVX, 16 with SSE2. Other
# targets get plain stores: the same values, only slower.
#
# Only contiguous runs along the last axis stream (batch norm's NCHW rows, layer norm's rows, group and
# instance norm's channel runs). Channels-last passes, whose pieces hold many short per-lane segments,
# were built streamed too and measured erratic: 20% faster or 2x slower on 32x56x56x64 depending on where
# the arrays lay, so they keep plain stores.

from cython cimport floating

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__AVX__) || defined(__SSE2__) || defined(_M_X64)
    #include <immintrin.h>
    #define BNEXT_STREAMING 1
    #else
    #define BNEXT_STREAMING 0
    #endif

    /* dst[0:n_bytes] = src[0:n_bytes]: plain stores up to dst's first vector boundary and after its last one,
       streaming stores of whole vectors between. Bytes, so one copy serves float32 and float64 alike. */
    static inline void bnext_stream_bytes(void* dst, const void* src, size_t n_bytes) {
        char* d = (char*)dst;
        const char* s = (const char*)src;
    #if BNEXT_STREAMING
    #if defined(__AVX512F__)
        const size_t width = 64;
    #elif defined(__AVX__)
        const size_t width = 32;
    #else
        const size_t width = 16;
    #endif
        size_t head = (width - ((uintptr_t)d & (width - 1))) & (width - 1);
        if (head > n_bytes) head = n_bytes;
        memcpy(d, s, head);
        d += head;
        s += head;
        n_bytes -= head;
        for (; n_bytes >= width; d += width, s += width, n_bytes -= width) {
    #if defined(__AVX512F__)
            _mm512_stream_si512((__m512i*)d, _mm512_loadu_si512((const void*)s));
    #elif defined(__AVX__)
            _mm256_stream_si256((__m256i*)d, _mm256_loadu_si256((const __m256i*)s));
    #else
            _mm_stream_si128((__m128i*)d, _mm_loadu_si128((const __m128i*)s));
    #endif
        }
    #endif
        memcpy(d, s, n_bytes);
    }

    /* Streaming stores are weakly ordered: fence them before the values can be read by another thread. */
    static inline void bnext_stream_fence(void) {
    #if BNEXT_STREAMING
        _mm_sfence();
    #endif
    }
    """
    void bnext_stream_bytes(void* dst, const void* src, size_t n_bytes) noexcept nogil
    void stream_fence "bnext_stream_fence"() noexcept nogil


cdef enum:
    # Outputs of at least this many bytes are streamed. Measured on this project's machine (32 MiB L3):
    # below 8 MiB plain stores are as fast or faster, from 16 MiB streaming wins.
    STREAM_MIN_BYTES = 16 * 1024 * 1024
    # ... and only in contiguous runs of at least this many bytes: a run's first and last cache lines are
    # shared with its neighbours and written with plain stores, and for short runs (7x7 maps: 196 bytes)
    # those partial lines made the pass 2x slower than plain stores; runs of 784 bytes broke even.
    STREAM_MIN_RUN_BYTES = 1024
    # Values staged per streaming copy: 2 KiB (float32) or 4 KiB (float64) of stack, always in L1.
    STAGE = 512


cdef inline bint stream_output(Py_ssize_t n_values, Py_ssize_t run_length, Py_ssize_t itemsize) noexcept nogil:
    """Whether a pass writing n_values in contiguous runs of run_length values streams them."""
    return n_values * itemsize >= STREAM_MIN_BYTES and run_length * itemsize >= STREAM_MIN_RUN_BYTES


cdef inline Py_ssize_t values_to_line_start(const floating* p) noexcept nogil:
    """How many values from p to the next 64-byte boundary (0 if p is on one, or never on one)."""
    cdef size_t misaligned = <size_t>p % 64
    if misaligned == 0 or misaligned % sizeof(floating) != 0:
        return 0
    return <Py_ssize_t>((64 - misaligned) // sizeof(floating))


cdef inline Py_ssize_t piece_length(const floating* y, Py_ssize_t i0, Py_ssize_t n) noexcept nogil:
    """How many values of a streamed run y[0:n] to stage next, from i0.

    The first piece ends where y reaches a 64-byte boundary, so every later piece streams whole cache
    lines: a line written partly by plain stores has to be read first (measured 15% slower when the
    pieces were not aligned).
    """
    cdef Py_ssize_t m = values_to_line_start(y + i0)
    return min(m if m > 0 else STAGE, n - i0)


cdef inline void stream_values(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    bnext_stream_bytes(dst, src, n * sizeof(floating))
