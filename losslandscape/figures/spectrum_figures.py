"""The Hessian's spectral density of a spectrum file (hessian_spectrum.py --density), as a figure.

spectrum_density returns the matplotlib Figure (writing PDF + PNG only when given ``save=``);
hessian_spectrum.py draws the same figure beside its spectrum file.
"""
import collections.abc
import os

import numpy as np

from losslandscape.errors import UsageError
from losslandscape.figures.common import KEYWORDS, check_input_file, new_figure, saved
from losslandscape.io import hdf5_layout as layout

DENSITY_TITLE = 'Hessian spectral density'


def spectrum_density(spectrum, *, title=None, save=None):
    """The smoothed spectral density of the Hessian on a log density axis.

    ``spectrum``: a spectrum file written by hessian_spectrum.py --density, or its data (the
    mapping hdf5_layout.read_spectrum_file returns first, holding density_grid and density).
    ``title``: default 'Hessian spectral density' with the parameter and start counts the file
    records. ``save``: a path without extension, to write save.pdf and save.png. Returns the Figure."""
    grid, density, attrs = _read_density(spectrum)
    if title is None:
        title = density_title(attrs.get('num_params'), (attrs.get(layout.DENSITY_SETTINGS) or {}).get('starts'))
    return saved(density_figure(grid, density, title, show=False), save)


def density_title(num_params, starts):
    """'Hessian spectral density (N parameters, S SLQ starts)', the counts that are known."""
    counts = [f'{num_params} parameters' if num_params is not None else '',
              f'{starts} SLQ starts' if starts is not None else '']
    counts = ', '.join(filter(None, counts))
    return f'{DENSITY_TITLE} ({counts})' if counts else DENSITY_TITLE


def _read_density(spectrum):
    """(grid, density, decoded attributes) of a spectrum file or of its data mapping."""
    if isinstance(spectrum, (str, os.PathLike)):
        path = os.fspath(spectrum)
        check_input_file(path, 'spectrum', KEYWORDS)
        data, attrs = layout.read_spectrum_file(path)
        where = f'spectrum file {path!r}'
    elif isinstance(spectrum, collections.abc.Mapping):
        data, attrs, where = spectrum, {}, 'spectrum='
    else:
        raise UsageError(f'spectrum= must be a spectrum file or its data (hdf5_layout.read_spectrum_file), '
                         f'not {type(spectrum).__name__}')
    if layout.DENSITY not in data or layout.DENSITY_GRID not in data:
        raise UsageError(f'{where} has no {layout.DENSITY!r}; compute it with hessian_spectrum.py --density')
    grid = np.asarray(data[layout.DENSITY_GRID], dtype=np.float64).ravel()
    density = np.asarray(data[layout.DENSITY], dtype=np.float64).ravel()
    if grid.size < 2 or grid.size != density.size:
        raise UsageError(f'{where} holds {grid.size} grid points and {density.size} density values; '
                         'expected the same number, 2 at least')
    return grid, density, attrs


def density_figure(grid, density, title, show=False):
    """The density on ``grid`` (log axis, floored 12 orders below its peak so zeros can be drawn)."""
    fig = new_figure(show, figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    floor = max(density.max() * 1e-12, 1e-300)
    ax.semilogy(grid, np.maximum(density, floor), color='tab:blue', lw=1.2)
    ax.set_xlabel('Eigenvalue')
    ax.set_ylabel('Density (log scale)')
    ax.set_ylim(bottom=max(floor, density.max() * 1e-8))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return fig
