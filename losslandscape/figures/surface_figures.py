"""2D figures of a surface file: contours, heat map, 3D surface, optimizer trajectories, HTML viewer.

Drawn by plot_2D.py and by the --plot options of plot_surface.py, plot_hessian_eigen.py and
plot_trajectory.py; the helpers shared with the 1D figures and h52vtp.py live in figures/common.py.
"""
import os

import numpy as np

from losslandscape.cli.parsing import check_file_exists
from losslandscape.errors import UsageError
from losslandscape.figures.common import (
    EIG_RATIO,
    PRETTY_NAMES,
    axis_titles,
    contour_levels,
    describe_gaps,
    finish,
    grid_mesh,
    has_values,
    heat_values,
    label_axes,
    load_surface,
    masked,
    new_figure,
    pca_axis_labels,
    require_finite_points,
    save_figure,
    surface_values,
)
from losslandscape.io import hdf5_layout as layout

# ----------------------------------------------------------------------------- 2D surface plots

def plot_2d_contour(surf_file, *, dir_file='', surf_name='train_loss', vmin=0.1, vmax=10, vlevel=0.5,
                    zlim=None, show=False):
    """Contour lines, filled contours, heat map and 3D surface of ``surf_name``; returns the files.

    NaN (not computed) and inf (diverged) points are left out: holes in contours and the 3D
    surface, grey cells (NaN) or the colour bar's end colour (inf) in the heat map. ``dir_file``
    (PCA directions, for the axis titles) defaults to the surface's own (plot_common.axis_titles)."""
    levels = contour_levels(vmin, vmax, vlevel)
    surface = load_surface(surf_file, dims=2)
    Z = surface_values(surface, surf_name)
    X, Y = grid_mesh(surface)
    require_finite_points(surface, surf_name, Z)
    titles = axis_titles(surface, dir_file)   # a bad --dir_file is refused before any file is written
    gap_note = describe_gaps(surf_name, Z)
    if gap_note:
        print(gap_note)
    base = f'{surf_file}_{surf_name}'
    written = []
    written += _plot_contour_lines(titles, X, Y, Z, levels, surf_name, base + '_2dcontour', show)
    written += _plot_filled_contours(titles, X, Y, Z, levels, surf_name, base + '_2dcontourf', show)
    written += _plot_heatmap(surface, titles, Z, surf_name, vmin, vmax, base + '_2dheat', show)
    written += _plot_3d_surface(titles, X, Y, Z, surf_name, zlim, base + '_3dsurface', show)
    finish(show)
    return written


def _plot_contour_lines(titles, X, Y, Z, levels, surf_name, base, show):
    fig = new_figure(show)
    ax = fig.add_subplot()
    lines = ax.contour(X, Y, masked(Z), levels=levels, cmap='summer')
    ax.clabel(lines, inline=True, fontsize=8)
    label_axes(ax, titles)
    ax.set_title(PRETTY_NAMES.get(surf_name, surf_name))
    return save_figure(fig, base)


def _plot_filled_contours(titles, X, Y, Z, levels, surf_name, base, show):
    fig = new_figure(show)
    ax = fig.add_subplot()
    filled = ax.contourf(X, Y, masked(Z), levels=levels, cmap='summer', extend='both')
    fig.colorbar(filled, ax=ax, label=PRETTY_NAMES.get(surf_name, surf_name))
    label_axes(ax, titles)
    return save_figure(fig, base)


def _plot_heatmap(surface, titles, Z, surf_name, vmin, vmax, base, show, cmap='viridis'):
    import matplotlib
    fig = new_figure(show)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps[cmap].with_extremes(bad='0.8')
    mesh = ax.pcolormesh(surface.xcoordinates, surface.ycoordinates, heat_values(Z, vmin, vmax),
                         shading='nearest', cmap=colours, vmin=vmin, vmax=vmax)
    fig.colorbar(mesh, ax=ax, extend='both', label=PRETTY_NAMES.get(surf_name, surf_name))
    label_axes(ax, titles)
    return save_figure(fig, base)


def _plot_3d_surface(titles, X, Y, Z, surf_name, zlim, base, show):
    import mpl_toolkits.mplot3d  # noqa: F401  (registers the '3d' projection)
    shown = np.where(np.isfinite(Z), Z, np.nan)
    if zlim is not None:
        shown = np.minimum(shown, zlim)  # NaN stays NaN
    fig = new_figure(show)
    ax = fig.add_subplot(projection='3d')
    ny, nx = Z.shape
    finite = shown[np.isfinite(shown)]
    # rcount/ccount: full resolution up to 200 per axis (matplotlib's default would thin to 50).
    drawn = ax.plot_surface(X, Y, masked(shown), cmap='coolwarm', linewidth=0, antialiased=False,
                            vmin=finite.min(), vmax=finite.max(), rcount=min(ny, 200), ccount=min(nx, 200))
    if zlim is not None:
        ax.set_zlim(top=zlim)
    # pad: room between the colour bar and the y axis title, which runs diagonally below the bar.
    fig.colorbar(drawn, ax=ax, shrink=0.5, aspect=5, pad=0.12, label=PRETTY_NAMES.get(surf_name, surf_name))
    label_axes(ax, titles, fontsize='small')
    return save_figure(fig, base)


def plot_2d_eig_ratio(surf_file, *, dir_file='', show=False):
    """Heat maps of |min_eig / max_eig| (scale 0..0.5) and of the signed ratio; returns the files.
    ``dir_file``: as in plot_2d_contour."""
    surface = load_surface(surf_file, dims=2)
    if not has_values(surface, EIG_RATIO):
        raise UsageError(f'surface file {surf_file!r} has no {layout.MIN_EIG!r} and {layout.MAX_EIG!r}; '
                         'compute them with plot_hessian_eigen.py first')
    grid_mesh(surface)
    with np.errstate(divide='ignore', invalid='ignore'):
        signed = surface_values(surface, layout.MIN_EIG) / surface_values(surface, layout.MAX_EIG)
    require_finite_points(surface, EIG_RATIO, signed)
    titles = axis_titles(surface, dir_file)
    base = f'{surf_file}_{layout.MIN_EIG}_{layout.MAX_EIG}'
    written = _plot_heatmap(surface, titles, np.abs(signed), EIG_RATIO, 0.0, 0.5, base + '_abs_ratio_heat_sns',
                            show)
    finite = signed[np.isfinite(signed)]
    low, high = (finite.min(), finite.max()) if finite.min() < finite.max() else (finite.min() - 1, finite.max() + 1)
    written += _plot_heatmap(surface, titles, signed, 'eig_signed_ratio', low, high, base + '_ratio_heat_sns',
                             show)
    finish(show)
    return written


# ----------------------------------------------------------------------------- trajectories

def read_trajectory(proj_file):
    """(x, y, per-checkpoint train loss or None) from a projection file, validated."""
    check_file_exists(proj_file, '--proj_file')
    proj = layout.read_projection_file(proj_file)
    px = np.asarray(proj[layout.PROJ_XCOORD], dtype=np.float64).ravel()
    py = np.asarray(proj[layout.PROJ_YCOORD], dtype=np.float64).ravel()
    if px.size == 0 or px.size != py.size:
        raise UsageError(f'projection file {proj_file!r} holds {px.size} x and {py.size} y coordinates; '
                         'expected the same, non-zero number')
    loss = proj.get(layout.TRAIN_LOSS)
    loss = np.asarray(loss, dtype=np.float64).ravel() if loss is not None else None
    if loss is not None and loss.size != px.size:
        loss = None  # not one value per checkpoint: draw the path uncoloured
    return px, py, loss


def path_end_labels(proj_file):
    """The legend names of a path's two ends: a trajectory's first and last checkpoints, or the two
    end models of a curve (plot_surface.py writes a curve's projection with its curve file named)."""
    if layout.CURVE_FILE_ATTR in layout.read_projection_attrs(proj_file):
        return 'model_file (t = 0)', 'model_file2 (t = 1)'
    return 'first checkpoint', 'last checkpoint'


def _draw_path(fig, ax, px, py, loss, ends=('first checkpoint', 'last checkpoint')):
    ax.plot(px, py, '-', color='k', linewidth=1, alpha=0.7)
    if loss is not None:
        dots = ax.scatter(px, py, c=masked(loss), cmap='plasma', s=16, zorder=3)
        fig.colorbar(dots, ax=ax, label='checkpoint training loss')
    else:
        ax.plot(px, py, '.', color='tab:blue', zorder=3)
    ax.plot(px[:1], py[:1], 'o', mfc='none', mec='k', ms=8, label=ends[0])
    ax.plot(px[-1:], py[-1:], '*', color='k', ms=10, label=ends[1])
    ax.legend(loc='best', fontsize='small')


def plot_trajectory(proj_file, dir_file=None, *, show=False):
    """The optimizer path projected on the direction plane; writes proj_file + '.pdf'/'.png'."""
    px, py, loss = read_trajectory(proj_file)
    labels = pca_axis_labels(dir_file) or ('1st direction', '2nd direction')
    fig = new_figure(show)
    ax = fig.add_subplot()
    _draw_path(fig, ax, px, py, loss, path_end_labels(proj_file))
    ax.set_xlabel(labels[0], fontsize='xx-large')
    ax.set_ylabel(labels[1], fontsize='xx-large')
    ax.tick_params(labelsize='x-large')
    written = save_figure(fig, proj_file)
    finish(show)
    return written


def plot_contour_trajectory(surf_file, dir_file, proj_file, *, surf_name='train_loss', vmin=0.1, vmax=10,
                            vlevel=0.5, show=False):
    """Contours of ``surf_name`` with the projected optimizer path on top; returns the files.

    ``dir_file`` (PCA directions, for the axis labels) defaults to the surface's own."""
    levels = contour_levels(vmin, vmax, vlevel)
    surface = load_surface(surf_file, dims=2)
    Z = surface_values(surface, surf_name)
    X, Y = grid_mesh(surface)
    px, py, loss = read_trajectory(proj_file)
    titles = axis_titles(surface, dir_file)
    fig = new_figure(show)
    ax = fig.add_subplot()
    near = ax.contour(X, Y, masked(Z), levels=levels)
    # The original's second set of levels, 10 .. 1e8, shows the far-away high-loss rings.
    far = ax.contour(X, Y, masked(Z), levels=np.logspace(1, 8, num=8), linestyles='dotted')
    for lines in (near, far):
        ax.clabel(lines, inline=True, fontsize=6)
    _draw_path(fig, ax, px, py, loss, path_end_labels(proj_file))
    label_axes(ax, titles)
    written = save_figure(fig, f'{proj_file}_{surf_name}_2dcontour_proj')
    finish(show)
    return written


# ----------------------------------------------------------------------------- HTML viewer

# The viewer's layout. The figure is as wide as the browser window, so the panels are fractions
# of it while the margins are pixels: the colour bar (with its title turned on its side, so a long
# name such as 'Smallest Hessian eigenvalue' only runs along the bar) sits in the right margin,
# clear of the contour panel's axis titles, and the legend and the 3D panel's direction labels sit
# in the bottom margin. Checked in headless Chromium at 1000x800 and 1600x900: nothing overlaps.
VIEWER_HEIGHT = 700
VIEWER_MARGIN = dict(l=60, r=130, t=100, b=130)
VIEWER_PANEL_GAP = 0.12          # paper fraction between the 3D scene and the contour panel
# The scene gets the wider share: a 3D box needs room on both sides for its tick labels and the
# z-axis title beside it, while the contour panel's labels sit in the margins and the gap.
VIEWER_PANEL_WIDTHS = [0.55, 0.45]
VIEWER_COLORBAR_X = 1.03         # paper fraction: just right of the contour panel, in the margin
# The 3D scene clips what it draws at its panel's edges, and with plotly's default camera a half-
# window panel cut off the axis titles. The panel is taller than wide, and plotly sizes the box by
# the height, so the camera stands farther off (the box is drawn smaller). The z-axis tick labels
# and title stand left of the box, only an 'x' to its right: the camera looks at a point shifted
# along the screen's left (world +x, -y), which moves the box right, into the panel's middle. A
# fixed box shape keeps this framing for every surface (plotly's 'auto' switches between the
# data's proportions and a cube).
VIEWER_SCENE_ASPECT = dict(x=1, y=1, z=0.85)
VIEWER_CAMERA_SHIFT = 0.12     # how far (scene units) the look-at point moves left
VIEWER_CAMERA_CENTER = dict(x=VIEWER_CAMERA_SHIFT, y=-VIEWER_CAMERA_SHIFT, z=0)
VIEWER_CAMERA_EYE = dict(x=2.1 + VIEWER_CAMERA_SHIFT, y=2.1 - VIEWER_CAMERA_SHIFT, z=1.43)


def write_html_viewer(surf_file, *, dir_file='', surf_name='train_loss', proj_file=None, out_path=None):
    """One self-contained HTML file (plotly.js embedded, works offline): a rotatable 3D surface
    beside its contour map, plus the projected trajectory when ``proj_file`` is given.

    Not-computed and diverged points are holes. Default name: surf_file + '_<surf_name>_viewer.html'.
    ``dir_file``: as in plot_2d_contour."""
    fig = html_viewer_figure(surf_file, dir_file=dir_file, surf_name=surf_name, proj_file=proj_file)
    out_path = out_path or f'{surf_file}_{surf_name}_viewer.html'
    try:
        fig.write_html(out_path, include_plotlyjs=True, full_html=True)
    except OSError as err:
        raise UsageError(f'cannot write {out_path!r} ({err.strerror or err})') from None
    print(f'wrote {out_path}')
    return out_path


def html_viewer_figure(surf_file, *, dir_file='', surf_name='train_loss', proj_file=None):
    """The plotly figure write_html_viewer writes (arguments as there)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    surface = load_surface(surf_file, dims=2)
    Z = surface_values(surface, surf_name)
    grid_mesh(surface)
    require_finite_points(surface, surf_name, Z)
    titles = axis_titles(surface, dir_file)
    Z = np.where(np.isfinite(Z), Z, np.nan)  # plotly draws NaN as a hole; inf would break the scale
    x, y, title = surface.xcoordinates, surface.ycoordinates, PRETTY_NAMES.get(surf_name, surf_name)
    fig = make_subplots(rows=1, cols=2, specs=[[{'type': 'scene'}, {'type': 'xy'}]],
                        horizontal_spacing=VIEWER_PANEL_GAP, column_widths=VIEWER_PANEL_WIDTHS,
                        subplot_titles=(f'{title}: 3D surface (drag to rotate)', f'{title}: contours'))
    # Both panels share one colour scale, so one colour bar serves both.
    colorbar = dict(title=dict(text=title, side='right'), x=VIEWER_COLORBAR_X, xanchor='left', len=1.0)
    hover = f'{titles[0]}: %{{x:.4g}}<br>{titles[1]}: %{{y:.4g}}<br>{title}: %{{z:.4g}}<extra></extra>'
    fig.add_trace(go.Surface(x=x, y=y, z=Z, colorscale='Viridis', colorbar=colorbar, name=surf_name,
                             hovertemplate=hover), row=1, col=1)
    fig.add_trace(go.Contour(x=x, y=y, z=Z, colorscale='Viridis', showscale=False,
                             contours=dict(showlabels=True), name=surf_name, hovertemplate=hover), row=1, col=2)
    if proj_file:
        _add_html_trajectory(fig, surface, Z, proj_file, surf_name)
    # The scene's axis titles are drawn inside its panel, where a direction label such as
    # 'x: filter-normalized direction' does not fit: the scene says 'x' / 'y' (or '1st PC'), and
    # the full labels stand below it, in the hover and on the contour panel's axes.
    short_titles = [_short_axis_title(text) for text in titles]
    scene_left, scene_right = fig.layout.scene.domain.x
    fig.add_annotation(text='<br>'.join(titles), showarrow=False, xref='paper', yref='paper',
                       x=(scene_left + scene_right) / 2, y=-0.06, xanchor='center', yanchor='top',
                       font=dict(size=12))
    fig.update_layout(title=os.path.basename(surf_file), autosize=True, height=VIEWER_HEIGHT,
                      margin=VIEWER_MARGIN,
                      legend=dict(orientation='h', x=1.0, xanchor='right', y=-0.14, yanchor='top'),
                      scene=dict(xaxis_title=short_titles[0], yaxis_title=short_titles[1], zaxis_title=title,
                                 aspectmode='manual', aspectratio=VIEWER_SCENE_ASPECT,
                                 camera=dict(eye=VIEWER_CAMERA_EYE, center=VIEWER_CAMERA_CENTER)))
    fig.update_xaxes(title_text=titles[0], row=1, col=2)
    fig.update_yaxes(title_text=titles[1], row=1, col=2)
    return fig


def _short_axis_title(text):
    """'x' of 'x: filter-normalized direction', '1st PC' of '1st PC: 84.23 %' (axis_titles's forms)."""
    return text.split(':', 1)[0]


def _add_html_trajectory(fig, surface, Z, proj_file, surf_name):
    import plotly.graph_objects as go
    from scipy.interpolate import RegularGridInterpolator

    px, py, loss = read_trajectory(proj_file)
    fig.add_trace(go.Scatter(x=px, y=py, mode='lines+markers', name='trajectory',
                             line=dict(color='red'), marker=dict(size=4)), row=1, col=2)
    if loss is not None and surf_name == layout.TRAIN_LOSS:
        height = loss
    else:
        # Lift the path onto the drawn surface (NaN outside the grid or next to a hole).
        lookup = RegularGridInterpolator((surface.ycoordinates, surface.xcoordinates), Z,
                                         bounds_error=False, fill_value=np.nan)
        height = lookup(np.column_stack([py, px]))
    fig.add_trace(go.Scatter3d(x=px, y=py, z=height, mode='lines+markers', name='trajectory (3D)',
                               line=dict(color='red', width=4), marker=dict(size=2)), row=1, col=1)


# ----------------------------------------------------------------------------- command line
