# Stub of the layer/group/instance-norm row kernels (src/_family_kernels.pxi). The same source is compiled
# three times (_family, _family_avx2, _family_avx512); the other two stubs re-export this one.
# x, y, dy, dx: C-ordered (rows, length) arrays, all float32 or all float64; other vectors: float64.

from typing import Any

import numpy as np
from numpy.typing import NDArray

_Floats = NDArray[np.floating[Any]]  # float32 or float64, the same for every data argument of a call

SHORT_LAYER_ROW: int  # layer norm rows of at most this many values take batch_stats + column_affine

def column_affine(x: _Floats, mean: NDArray[np.float64], invstd: NDArray[np.float64],
                  weight: NDArray[np.float64], bias: NDArray[np.float64], y_out: _Floats,
                  n_threads: int) -> None: ...
def layer_norm_gradient(dy: _Floats, x: _Floats, mean: NDArray[np.float64], invstd: NDArray[np.float64],
                        weight: NDArray[np.float64], dx_out: _Floats, dweight_out: NDArray[np.float64],
                        dbias_out: NDArray[np.float64], n_threads: int) -> None: ...
def group_norm_coefficients(sum_dy: NDArray[np.float64], sum_dy_xmu: NDArray[np.float64],
                            invstd: NDArray[np.float64], weight: NDArray[np.float64] | None, n_groups: int,
                            count: float, batch_stats: bool, dweight_out: NDArray[np.float64],
                            dbias_out: NDArray[np.float64], dy_scale_out: NDArray[np.float64],
                            coef_1_out: NDArray[np.float64], coef_x_hat_out: NDArray[np.float64]) -> None: ...
def row_input_gradient(dy: _Floats, x: _Floats, mean: NDArray[np.float64], invstd: NDArray[np.float64],
                       scale: NDArray[np.float64], dy_scale: NDArray[np.float64], coef_1: NDArray[np.float64],
                       coef_x_hat: NDArray[np.float64], dx_out: _Floats, n_threads: int) -> None: ...
def layer_norm_forward(x: _Floats, weight: NDArray[np.float64], bias: NDArray[np.float64], eps: float,
                       mean_out: NDArray[np.float64], var_out: NDArray[np.float64],
                       invstd_out: NDArray[np.float64], y_out: _Floats, n_threads: int) -> None: ...
def group_norm_forward(x: _Floats, spatial: int, weight: NDArray[np.float64], bias: NDArray[np.float64],
                       eps: float, mean_out: NDArray[np.float64], var_out: NDArray[np.float64],
                       invstd_out: NDArray[np.float64], y_out: _Floats, n_threads: int) -> None: ...
