"""net_plotter, for code written against the original: directions: making, normalising, naming their files, moving a model along them.

Its names are re-exported from losslandscape.directions.subsets, losslandscape.directions.normalization, losslandscape.directions.moving, losslandscape.directions.direction_files (pip does not install this file;
``import losslandscape`` works from any folder).
"""
from losslandscape.directions.direction_files import *  # noqa: F401,F403
from losslandscape.directions.moving import *  # noqa: F401,F403
from losslandscape.directions.normalization import *  # noqa: F401,F403
from losslandscape.directions.subsets import *  # noqa: F401,F403
