# The small-call entries built for baseline x86-64.
# The code is shared (_small_calls.pxi); bnext._dispatch imports the build matching the batch-norm one.
include "_small_calls.pxi"
