"""What this build and this CPU offer: OpenMP (or a single-threaded stand-in) and the SIMD level."""

cdef extern from *:
    """
    #if BNEXT_OPENMP
    #include <omp.h>
    static int bnext_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int bnext_max_threads(void) { return 1; }
    #endif

    /* 2: AVX-512 (F, BW, DQ, VL), 1: AVX2 + FMA, 0: neither (or not an x86 CPU / compiler we can ask).
       libgcc's answer includes the OS check (XGETBV) that the registers are saved on context switches. */
    static int bnext_simd_level(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
            return 2;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            return 1;
    #endif
        return 0;
    }
    """
    int bnext_max_threads() nogil
    int bnext_simd_level() nogil
    int BNEXT_OPENMP

cdef extern from *:
    """
    #if defined(__clang__)
    #define BNEXT_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define BNEXT_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
    #define BNEXT_COMPILER "msvc"
    #else
    #define BNEXT_COMPILER "unknown"
    #endif
    """
    const char* BNEXT_COMPILER


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(BNEXT_OPENMP)


def max_threads():
    """The OpenMP runtime's current default team size (OMP_NUM_THREADS, or the usable cores)."""
    return bnext_max_threads()


def cpu_simd_level():
    """2 for AVX-512 (F/BW/DQ/VL), 1 for AVX2 + FMA, 0 otherwise."""
    return bnext_simd_level()


def compiler():
    """The compiler that built bnext, as it names itself."""
    return BNEXT_COMPILER.decode()
