"""Directions in weight space: which entries they cover, making and normalising them, moving a model
along them, direction files (tensors, or a seed-form recipe), where a run keeps them (--dir_mode),
trajectories projected on them.
"""

from losslandscape.directions.direction_files import (
    DirectionSpec,
    name_direction_file,
    name_surface_file,
    setup_direction_file,
)
from losslandscape.directions.moving import move, set_states, set_weights
from losslandscape.directions.normalization import (
    make_random_direction,
    normalize_direction,
    normalize_directions,
    target_direction,
)
from losslandscape.directions.projection import pca_directions, project_trajectory, setup_PCA_directions
from losslandscape.directions.seeded import SeededDirections
from losslandscape.directions.sources import DIR_MODES, open_directions
from losslandscape.directions.subsets import get_base, get_states, get_weights, selected_entries

__all__ = [
    # subsets
    'get_weights', 'get_states', 'get_base', 'selected_entries',
    # normalization
    'normalize_direction', 'normalize_directions', 'make_random_direction', 'target_direction',
    # moving
    'move', 'set_weights', 'set_states',
    # direction_files
    'DirectionSpec', 'name_direction_file', 'name_surface_file', 'setup_direction_file',
    # where a run's directions live (--dir_mode), seed form
    'DIR_MODES', 'open_directions', 'SeededDirections',
    # projection
    'pca_directions', 'setup_PCA_directions', 'project_trajectory',
]
