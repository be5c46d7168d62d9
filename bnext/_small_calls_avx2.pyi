# The avx2 build of the small-call entries: the same source and interface as the baseline build.
from ._small_calls import train as train
from ._small_calls import eval as eval
from ._small_calls import backward as backward
from ._small_calls import layer_norm as layer_norm
from ._small_calls import group_norm as group_norm
from ._small_calls import layer_norm_backward as layer_norm_backward
from ._small_calls import group_norm_backward as group_norm_backward
from ._small_calls import instance_norm as instance_norm
from ._small_calls import use_threaded as use_threaded
