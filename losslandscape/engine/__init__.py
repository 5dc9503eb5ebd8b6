"""The grid run: the grid, building a run in named steps, what evaluates a point, the loop over the
points.
"""

from losslandscape.engine.grid import Grid, parse_axis
from losslandscape.engine.run_setup import PointSettings, RunSettings, prepare_point, prepare_run
from losslandscape.engine.surface_engine import run_grid

__all__ = [
    # grid
    'Grid', 'parse_axis',
    # run_setup
    'RunSettings', 'PointSettings', 'prepare_run', 'prepare_point',
    # surface_engine
    'run_grid',
]
