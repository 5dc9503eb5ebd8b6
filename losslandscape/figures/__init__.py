"""The figures of surfaces, curves, trajectories and spectra, and what they share (reading
surfaces, derived values, labels, saving).

From Python (a notebook): each function takes a surface (the hdf5_layout.Surface that
losslandscape.surface returns, or a surface file) and returns its matplotlib Figure (html_viewer:
its plotly Figure), writing files only when given ``save=``. The plot_* functions write the
scripts' files under the original code's names and return their paths.
"""

from losslandscape.figures.common import load_surface, save_figure
from losslandscape.figures.curve_figures import (
    eig_ratio_curve,
    loss_curve,
    overlaid_loss_curves,
    path_comparison,
    plot_1d_compare,
    plot_1d_eig_ratio,
    plot_1d_loss_err,
    plot_1d_loss_err_repeat,
    value_curve,
)
from losslandscape.figures.spectrum_figures import spectrum_density
from losslandscape.figures.surface_figures import (
    contour,
    eig_ratio_map,
    heatmap,
    html_viewer,
    plot_2d_contour,
    plot_2d_eig_ratio,
    plot_contour_trajectory,
    surface_3d,
    trajectory,
    trajectory_contour,
    write_html_viewer,
)

__all__ = [
    # figures of a 1D surface, returned (curve_figures)
    'loss_curve', 'value_curve', 'eig_ratio_curve', 'overlaid_loss_curves', 'path_comparison',
    # figures of a 2D surface, returned (surface_figures)
    'contour', 'heatmap', 'surface_3d', 'eig_ratio_map', 'html_viewer',
    # trajectories, returned (surface_figures)
    'trajectory', 'trajectory_contour',
    # the Hessian's spectral density, returned (spectrum_figures)
    'spectrum_density',
    # the scripts' files, written beside the surface (curve_figures, surface_figures)
    'plot_1d_loss_err', 'plot_1d_loss_err_repeat', 'plot_1d_compare', 'plot_1d_eig_ratio',
    'plot_2d_contour', 'plot_2d_eig_ratio', 'plot_contour_trajectory', 'write_html_viewer',
    # reading and saving (common)
    'load_surface', 'save_figure',
]
