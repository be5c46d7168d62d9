# The avx512 build of the row kernels: the same source and interface as the baseline build.
from ._family import column_affine as column_affine
from ._family import layer_norm_gradient as layer_norm_gradient
from ._family import row_input_gradient as row_input_gradient
from ._family import layer_norm_forward as layer_norm_forward
from ._family import group_norm_forward as group_norm_forward
from ._family import SHORT_LAYER_ROW as SHORT_LAYER_ROW
from ._family import group_norm_coefficients as group_norm_coefficients
