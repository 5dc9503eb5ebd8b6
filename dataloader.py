"""dataloader, for code written against the original: data sets and the batches that feed a grid point.

Its names are re-exported from losslandscape.data.datasets, losslandscape.data.batch_sources, losslandscape.data.user_code (pip does not install this file;
``import losslandscape`` works from any folder).
"""
from losslandscape.data.batch_sources import *  # noqa: F401,F403
from losslandscape.data.datasets import *  # noqa: F401,F403
from losslandscape.data.user_code import *  # noqa: F401,F403
