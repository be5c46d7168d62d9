# What the entry points of both kernel sources share: scratch memory whose failure is a MemoryError, and
# optional per-channel vectors handed to the cores as pointers.

from libc.stdlib cimport malloc


cdef inline void* checked_malloc(size_t n_bytes) except NULL:
    cdef void* p = malloc(n_bytes if n_bytes > 0 else 1)
    if p == NULL:
        raise MemoryError(f"bnext could not allocate {n_bytes} bytes of scratch space")
    return p


cdef inline const double* optional_data(const double[::1] v) noexcept:
    # An absent weight or bias (None): NULL, which the cores read as 1 or 0.
    if v is None:
        return NULL
    return &v[0]
