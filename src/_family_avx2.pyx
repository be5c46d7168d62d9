# The kernels of layer, group and instance norm built for AVX2 + FMA CPUs (compiled with -mavx2 -mfma).
# The code is shared (_family_kernels.pxi); bnext._dispatch imports the build matching the batch-norm one.
include "_family_kernels.pxi"
