# How many threads a kernel call uses. Work items never depend on it (results are bitwise the same for any
# count); it only decides whether waking the OpenMP team is worth it.

cdef enum:
    # Below this many values a kernel runs on the calling thread: its parallel regions are entered with
    # use_threads_if false, so no other thread is woken (waking the team cost more than the split saved for
    # small inputs). The OpenMP runtime still sets up a one-thread team per region.
    PARALLEL_MIN_VALUES = 32768


cdef inline int kernel_threads(Py_ssize_t n_values, int n_threads) noexcept nogil:
    return n_threads if n_values >= PARALLEL_MIN_VALUES else 1
