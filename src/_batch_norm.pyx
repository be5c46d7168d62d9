# The batch-norm kernels built for baseline x86-64 / any CPU.
# The code is shared (_batch_norm_kernels.pxi); bnext._dispatch imports the best build this CPU runs.
include "_batch_norm_kernels.pxi"
