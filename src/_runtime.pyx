"""What the OpenMP runtime says, or a single-threaded stand-in when bnext was built without it."""

cdef extern from *:
    """
    #if BNEXT_OPENMP
    #include <omp.h>
    static int bnext_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int bnext_max_threads(void) { return 1; }
    #endif
    """
    int bnext_max_threads() nogil
    int BNEXT_OPENMP


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(BNEXT_OPENMP)


def max_threads():
    """The OpenMP runtime's current default team size (OMP_NUM_THREADS, or the usable cores)."""
    return bnext_max_threads()
