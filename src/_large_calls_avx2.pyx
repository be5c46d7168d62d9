# The plain-call entries for larger inputs, built for AVX2 + FMA CPUs with OpenMP (the small-call build forwards
# them here). The code is shared (_plain_calls.pxi).
cdef bint THREADED = True
include "_plain_calls.pxi"
