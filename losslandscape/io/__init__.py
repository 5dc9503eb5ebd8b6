"""The HDF5 files handed from compute to plot (every key and layout), atomic writes and locks, the
surface file during a run.
"""

from losslandscape.io.file_safety import FileLock, atomic_path
from losslandscape.io.hdf5_layout import (
    Surface,
    read_curve_file,
    read_direction_file,
    read_projection_file,
    read_sharpness_file,
    read_spectrum_file,
    read_surface,
    write_direction_file,
)
from losslandscape.io.surface_store import SurfaceWriter

__all__ = [
    # hdf5_layout
    'Surface', 'read_surface', 'read_direction_file', 'write_direction_file', 'read_projection_file',
    'read_spectrum_file', 'read_curve_file', 'read_sharpness_file',
    # file_safety
    'atomic_path', 'FileLock',
    # surface_store
    'SurfaceWriter',
]
