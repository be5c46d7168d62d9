# The small-call entries built for AVX-512 CPUs.
# The code is shared (_small_calls.pxi); bnext._dispatch imports the build matching the batch-norm one.
include "_small_calls.pxi"
