"""Build bnext's Cython kernels, with OpenMP when the compiler has it.

Environment switches:
- BNEXT_OPENMP=0/1: force OpenMP off, or require it (the build fails if the probe fails).
- BNEXT_DEBUG=1: turn Cython's boundscheck/wraparound back on and build without optimisation.
- BNEXT_SIMD_BUILDS=0: build only the baseline kernels (no AVX2 / AVX-512 variants).

The kernels are built for baseline x86-64 and, on x86-64 with GCC or Clang, again for AVX2 + FMA and for
AVX-512; bnext._dispatch picks the best one the CPU runs at import time. No -march=native anywhere.
"""

import os
import shlex
import sys
import sysconfig
import tempfile
import textwrap
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("BNEXT_DEBUG", "0") == "1"

# Compiler directives live here, not in per-file headers.
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


# Extra flags per SIMD level. -ffp-contract=off everywhere: no FMA contraction, so every build rounds
# exactly like the baseline one and results are bitwise identical whichever build runs.
LEVEL_FLAGS = {
    "": [],
    "_avx2": ["-mavx2", "-mfma"],
    "_avx512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"],
}
# Every module is built at each level from its src/<module><level>.pyx: the batch-norm kernels
# (src/_batch_norm_kernels.pxi), layer, group and instance norm's (src/_family_kernels.pxi), and the
# common-case calls with plain arguments (src/_plain_calls.pxi, which includes both kernel sources), without
# OpenMP for small inputs (_small_calls) and with it for the others (_large_calls).
MODULES = ("_batch_norm", "_family", "_small_calls", "_large_calls")
SIMD_FLAGS = {f"bnext.{module}{level}": flags for module in MODULES for level, flags in LEVEL_FLAGS.items()}
SERIAL_BUILDS = {f"bnext._small_calls{level}" for level in LEVEL_FLAGS}


def simd_builds_possible():
    # The machine the extensions are built for, which is not the build machine's when cross-compiling:
    # sysconfig honours _PYTHON_HOST_PLATFORM (set e.g. by cibuildwheel for macOS arm64 on an x86-64
    # runner); "universal2" gets no SIMD builds since they would not compile for its arm64 half.
    target = sysconfig.get_platform().rsplit("-", 1)[-1].lower()
    return os.environ.get("BNEXT_SIMD_BUILDS", "1") != "0" and target in ("x86_64", "amd64")


def openmp_flags(compiler_type):
    """Compile and link flags that turn OpenMP on for this compiler."""
    if compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


class BuildExtWithOpenMP(build_ext):
    """build_ext that probes OpenMP by compiling a tiny program before building the kernels."""

    def _openmp_works(self, compile_flags, link_flags):
        # compile() already sees CFLAGS and CPPFLAGS (distutils puts them in the compiler command), but
        # link_executable() runs the bare compiler without the LDFLAGS that the extensions' link gets: add
        # them, or a libomp found only through LDFLAGS=-L... fails the probe. MSVC builds ignore LDFLAGS.
        msvc = self.compiler.compiler_type == "msvc"
        ldflags = [] if msvc else shlex.split(os.environ.get("LDFLAGS", ""))
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as f:
                f.write(OPENMP_PROBE)
            try:
                objects = self.compiler.compile([source], output_dir=tmp, extra_postargs=compile_flags)
                self.compiler.link_executable(
                    objects, os.path.join(tmp, "probe"), extra_postargs=ldflags + link_flags
                )
            except Exception:  # any compiler/linker failure means "no OpenMP here"
                return False
        return True

    def build_extensions(self):
        wanted = os.environ.get("BNEXT_OPENMP", "auto")
        compile_flags, link_flags = openmp_flags(self.compiler.compiler_type)
        use_openmp = wanted != "0" and self._openmp_works(compile_flags, link_flags)
        if wanted == "1" and not use_openmp:
            raise RuntimeError("BNEXT_OPENMP=1 but the compiler cannot build an OpenMP program")
        if not use_openmp and wanted != "0":
            warnings.warn("OpenMP not available: bnext is built single-threaded", stacklevel=1)
        msvc = self.compiler.compiler_type == "msvc"
        # -fno-math-errno: sqrt never sets errno, so loops over rows that take square roots vectorize
        # (the square root is correctly rounded either way: the results do not change).
        optimise = ["/O2"] if msvc else ["-O0" if DEBUG else "-O3", "-ffp-contract=off", "-fno-math-errno"]
        if msvc or not simd_builds_possible():
            self.extensions = [e for e in self.extensions if not SIMD_FLAGS.get(e.name)]
        for ext in self.extensions:
            simd = [] if msvc else SIMD_FLAGS.get(ext.name, [])
            threaded = use_openmp and ext.name not in SERIAL_BUILDS
            flags = optimise + simd + (compile_flags if threaded else [])
            ext.extra_compile_args += flags
            # For bnext.show_config(): the flags as a string literal. setuptools runs gcc/clang without a
            # shell, so the quotes reach the compiler as written. As bare tokens stringized by the
            # preprocessor, macros among them were expanded (-fno-math-errno came out as
            # -fno-math-(*__errno_location ())); MSVC, whose quoting differs and whose flags hold no such
            # names, still gets tokens.
            if msvc:
                ext.define_macros.append(("BNEXT_BUILD_FLAGS_TOKENS", " ".join(flags)))
            else:
                ext.define_macros.append(("BNEXT_BUILD_FLAGS_STRING", '"' + " ".join(flags) + '"'))
            ext.extra_link_args += link_flags if threaded else []
            ext.define_macros.append(("BNEXT_OPENMP", "1" if threaded else "0"))
        super().build_extensions()


def extension(name, source):
    return Extension(
        name,
        [source],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
    )


setup(
    ext_modules=cythonize(
        [
            extension("bnext._runtime", "src/_runtime.pyx"),
            *(extension(name, "src/" + name.split(".")[1] + ".pyx") for name in SIMD_FLAGS),
        ],
        include_path=["src"],
        compiler_directives=DIRECTIVES,
    ),
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
