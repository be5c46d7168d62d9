"""What this build and this CPU offer: OpenMP (or a single-threaded stand-in) and the SIMD level."""

cdef extern from *:
    """
    #if BNEXT_OPENMP
    #include <omp.h>
    static int bnext_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int bnext_max_threads(void) { return 1; }
    #endif

    #if defined(__APPLE__) && (defined(__x86_64__) || defined(__i386__))
    #include <sys/types.h>
    #include <sys/sysctl.h>
    /* macOS names each instruction set in sysctl as an int, 1 when the CPU has it and the OS enables it;
       a name this macOS does not know counts as absent. */
    static int bnext_sysctl_flag(const char *name) {
        int value = 0;
        size_t size = sizeof(value);
        return sysctlbyname(name, &value, &size, NULL, 0) == 0 && value == 1;
    }
    #endif

    /* 2: AVX-512 (F, BW, DQ, VL), 1: AVX2 + FMA, 0: neither (or not an x86 CPU / compiler we can ask).
       Either answer includes the OS's consent to the registers. On macOS, ask the kernel: Apple's
       toolchain may not provide libgcc's __cpu_model behind __builtin_cpu_supports (an ImportError, as
       extensions link with -undefined dynamic_lookup), and macOS turns AVX-512 state on only at first
       use, so an XGETBV check would miss it. Elsewhere libgcc checks XGETBV itself. */
    static int bnext_simd_level(void) {
    #if defined(__APPLE__) && (defined(__x86_64__) || defined(__i386__))
        if (bnext_sysctl_flag("hw.optional.avx512f") && bnext_sysctl_flag("hw.optional.avx512bw")
                && bnext_sysctl_flag("hw.optional.avx512dq") && bnext_sysctl_flag("hw.optional.avx512vl"))
            return 2;
        if (bnext_sysctl_flag("hw.optional.avx2_0") && bnext_sysctl_flag("hw.optional.fma"))
            return 1;
    #elif defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
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
