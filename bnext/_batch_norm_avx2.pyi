# The avx2 build of the batch-norm kernels: the same source and interface as the baseline build.
from ._batch_norm import backward as backward
from ._batch_norm import batch_stats as batch_stats
from ._batch_norm import gradient_sums as gradient_sums
from ._batch_norm import input_gradient as input_gradient
from ._batch_norm import normalize as normalize
from ._batch_norm import build_flags as build_flags
from ._batch_norm import train_forward as train_forward
from ._batch_norm import eval_forward as eval_forward
from ._batch_norm import update_running as update_running
from ._batch_norm import update_running_over_rows as update_running_over_rows
