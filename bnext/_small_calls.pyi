# Stub of the small-call entries (src/_small_calls.pxi, compiled three times: _small_calls, _small_calls_avx2,
# _small_calls_avx512; the other two stubs re-export this one): each returns None when the call is not a small
# common-case one, and the caller takes the checked Python path.

from typing import Any

import numpy as np
from numpy.typing import NDArray

_Floats = NDArray[np.floating[Any]]

def train(x: object, weight: object, bias: object, axis: object, eps: object, running_mean: object,
          running_var: object, momentum: object, out: object) -> tuple[_Floats, _Floats, _Floats] | None: ...
def eval(x: object, running_mean: object, running_var: object, weight: object, bias: object, axis: object,
         eps: object, out: object) -> _Floats | None: ...
def backward(dy: object, x: object, mean: object, invstd: object, weight: object, axis: object,
             out: object) -> tuple[_Floats, _Floats, _Floats] | None: ...
def layer_norm(x: object, normalized_shape: object, weight: object, bias: object, eps: object,
               out: object) -> tuple[_Floats, _Floats, _Floats] | None: ...
def group_norm(x: object, num_groups: object, weight: object, bias: object, eps: object,
               out: object) -> tuple[_Floats, _Floats, _Floats] | None: ...
def layer_norm_backward(dy: object, x: object, mean: object, invstd: object, weight: object,
                        normalized_shape: object, out: object) -> tuple[_Floats, _Floats, _Floats] | None: ...
def group_norm_backward(dy: object, x: object, mean: object, invstd: object, weight: object, num_groups: object,
                        batch_stats: bool, out: object) -> tuple[_Floats, _Floats, _Floats] | None: ...
def instance_norm(x: object, weight: object, bias: object, eps: object, running_mean: object, running_var: object,
                  momentum: object, use_input_stats: object,
                  out: object) -> tuple[_Floats, _Floats, _Floats] | None: ...
