# The plain-call entries for inputs under PARALLEL_MIN_VALUES values, built for AVX2 + FMA CPUs without OpenMP.
# The code is shared (_plain_calls.pxi); bnext._dispatch imports the build matching the batch-norm one.
cdef bint THREADED = False
include "_plain_calls.pxi"
