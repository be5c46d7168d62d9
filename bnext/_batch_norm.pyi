# Stub of the batch-norm kernels (src/_batch_norm_kernels.pxi). The same source is compiled three times
# (_batch_norm, _batch_norm_avx2, _batch_norm_avx512); the other two stubs re-export this one.
# x, y, dy, dx: (outer, C, inner) views, all float32 or all float64; per-channel vectors: float64, (C,).

from typing import Any

import numpy as np
from numpy.typing import NDArray

_Floats = NDArray[np.floating[Any]]  # float32 or float64, the same for every data argument of a call

def batch_stats(x: _Floats, mean_out: NDArray[np.float64], var_out: NDArray[np.float64],
                n_threads: int) -> None: ...
def train_forward(x: _Floats, weight: NDArray[np.float64] | None, bias: NDArray[np.float64] | None, eps: float,
                  mean_out: NDArray[np.float64], var_out: NDArray[np.float64],
                  invstd_out: NDArray[np.float64], y_out: _Floats, n_threads: int) -> None: ...
def eval_forward(x: _Floats, running_mean: NDArray[np.float64], running_var: NDArray[np.float64],
                 weight: NDArray[np.float64] | None, bias: NDArray[np.float64] | None, eps: float, y_out: _Floats,
                 n_threads: int) -> None: ...
def normalize(x: _Floats, mean: NDArray[np.float64], scale: NDArray[np.float64],
              shift: NDArray[np.float64], y_out: _Floats, n_threads: int) -> None: ...
def gradient_sums(dy: _Floats, x: _Floats, mean: NDArray[np.float64], sum_dy_out: NDArray[np.float64],
                  sum_dy_xmu_out: NDArray[np.float64], n_threads: int) -> None: ...
def input_gradient(dy: _Floats, x: _Floats, mean: NDArray[np.float64], invstd: NDArray[np.float64],
                   scale: NDArray[np.float64], coef_x_hat: NDArray[np.float64], coef_1: NDArray[np.float64],
                   dx_out: _Floats, n_threads: int) -> None: ...
def backward(dy: _Floats, x: _Floats, mean: NDArray[np.float64], invstd: NDArray[np.float64],
             weight: NDArray[np.float64] | None, batch_stats: bool, dweight_out: NDArray[np.float64],
             dbias_out: NDArray[np.float64], dx_out: _Floats, n_threads: int) -> None: ...
def update_running(buffer: _Floats, batch: NDArray[np.float64], factor: float, momentum: float) -> None: ...
def build_flags() -> str: ...
