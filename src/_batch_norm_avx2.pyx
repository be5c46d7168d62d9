# The batch-norm kernels built for AVX2 + FMA CPUs (compiled with -mavx2 -mfma).
# The code is shared (_batch_norm_kernels.pxi); bnext._dispatch imports the best build this CPU runs.
include "_batch_norm_kernels.pxi"
