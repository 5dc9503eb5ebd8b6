"""Data sets (built-in, custom factories), the batch sources that feed a grid point, and importing the
user's own code.
"""

from losslandscape.data.batch_sources import CachedBatches, ResidentBatches, StreamedBatches, batch_source
from losslandscape.data.datasets import CachedDataset, load_cifar10, load_dataset, load_digits
from losslandscape.data.user_code import import_factory, import_user_module

__all__ = [
    # datasets
    'CachedDataset', 'load_dataset', 'load_digits', 'load_cifar10',
    # batch_sources
    'batch_source', 'CachedBatches', 'ResidentBatches', 'StreamedBatches',
    # user_code
    'import_factory', 'import_user_module',
]
