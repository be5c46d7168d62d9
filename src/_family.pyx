# The kernels of layer, group and instance norm built for baseline x86-64 / any CPU.
# The code is shared (_family_kernels.pxi); bnext._dispatch imports the build matching the batch-norm one.
include "_family_kernels.pxi"
