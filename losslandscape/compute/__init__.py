"""How a point is computed: the compute configuration (layout, batch size, BatchNorm folding), its
timing and cache, the folded and multi-point evaluators, process-wide runtime settings.
"""

from losslandscape.compute.bn_folding import BatchNormFolding
from losslandscape.compute.choosing import choose, choose_point_batch_size
from losslandscape.compute.configuration import PLAIN, ComputeConfig, recorded_parts
from losslandscape.compute.point_batching import evaluate_stacked
from losslandscape.compute.runtime import keep_freed_memory, native_bf16

__all__ = [
    # configuration
    'ComputeConfig', 'PLAIN', 'recorded_parts',
    # choosing
    'choose', 'choose_point_batch_size',
    # bn_folding
    'BatchNormFolding',
    # point_batching
    'evaluate_stacked',
    # runtime
    'keep_freed_memory', 'native_bf16',
]
