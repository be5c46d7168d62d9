# The batch-norm kernels built for AVX-512 CPUs (compiled with -mavx512f/bw/dq/vl).
# The code is shared (_batch_norm_kernels.pxi); bnext._dispatch imports the best build this CPU runs.
include "_batch_norm_kernels.pxi"
