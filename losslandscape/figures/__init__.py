"""1D and 2D figures of surfaces and curves, and what they share (reading surfaces, derived values,
labels, saving).
"""

from losslandscape.figures.common import load_surface
from losslandscape.figures.curve_figures import (
    plot_1d_compare,
    plot_1d_eig_ratio,
    plot_1d_loss_err,
    plot_1d_loss_err_repeat,
)
from losslandscape.figures.surface_figures import (
    plot_2d_contour,
    plot_2d_eig_ratio,
    plot_contour_trajectory,
    write_html_viewer,
)

__all__ = [
    # curve_figures
    'plot_1d_loss_err', 'plot_1d_loss_err_repeat', 'plot_1d_compare', 'plot_1d_eig_ratio',
    # surface_figures
    'plot_2d_contour', 'plot_2d_eig_ratio', 'plot_contour_trajectory', 'write_html_viewer',
    # common
    'load_surface',
]
