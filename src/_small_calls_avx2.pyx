# The small-call entries built for AVX2 + FMA CPUs.
# The code is shared (_small_calls.pxi); bnext._dispatch imports the build matching the batch-norm one.
include "_small_calls.pxi"
