"""2D figures of a surface: contours, filled contours, heat map, 3D surface, eigenvalue-ratio maps,
optimizer trajectories, and the interactive HTML viewer.

Each figure has a function that takes a 2D surface (an hdf5_layout.Surface, what
losslandscape.surface returns, or the path of a surface file) and returns its matplotlib Figure
(the viewer: its plotly Figure), writing files only when given ``save=``: contour, heatmap,
surface_3d, eig_ratio_map, trajectory, trajectory_contour, html_viewer. The plot_* and
write_html_viewer functions below draw the same figures for plot_2D.py and the --plot options of
plot_surface.py, plot_hessian_eigen.py and plot_trajectory.py: they write them beside the surface
(or projection) file under the original code's names and return the paths. The helpers shared with
the 1D figures and h52vtp.py live in figures/common.py.

NaN (not computed) and inf (diverged) points are left out: holes in contours and the 3D surface,
grey cells (NaN) or the colour bar's end colour (inf) in the heat map.

Where the file holds the rise above the centre with its standard errors (train_loss_rise_stderr),
the contour figures and the viewer say the largest of them beside the contour spacing, and a
spacing finer than twice it gets a one-line warning on stderr: contours closer than the noise
of the samples are not all real.
"""
import dataclasses
import os
import sys

import numpy as np

from losslandscape.errors import UsageError
from losslandscape.figures.common import (
    EIG_RATIO,
    FLAGS,
    KEYWORDS,
    PRETTY_NAMES,
    as_surface,
    axis_titles,
    check_input_file,
    check_value_range,
    contour_levels,
    describe_gaps,
    finish,
    grid_mesh,
    has_values,
    heat_values,
    label_axes,
    largest_rise_stderr,
    load_surface,
    masked,
    new_figure,
    pca_axis_labels,
    require_finite_points,
    rise_precision_note,
    save_figure,
    saved,
    say_rise_precision,
    surface_values,
)
from losslandscape.io import file_safety
from losslandscape.io import hdf5_layout as layout

# ----------------------------------------------------------------------------- what a 2D figure draws


@dataclasses.dataclass
class Plane:
    """One value of a 2D surface, ready to draw: the Surface, the value's name and array (NaN
    where not computed), its mesh and the axis titles."""
    surface: layout.Surface
    surf_name: str
    values: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    titles: tuple

    @property
    def label(self):
        return PRETTY_NAMES.get(self.surf_name, self.surf_name)


def prepare_plane(surface, surf_name, dir_file, spell, name='surface'):
    """The Plane of ``surf_name`` on ``surface`` (a Surface or a 2D surface file), or UsageError:
    not 2D, no such value, a grid under 2 x 2, no finite point, a bad ``dir_file`` (the arguments
    named as ``spell`` spells them)."""
    surface = as_surface(surface, dims=2, spell=spell, name=name)
    values = surface_values(surface, surf_name)
    X, Y = grid_mesh(surface)
    require_finite_points(surface, surf_name, values)
    return Plane(surface, surf_name, values, X, Y, axis_titles(surface, dir_file, spell))


# ----------------------------------------------------------------------------- 2D surface figures

def contour(surface, surf_name='train_loss', *, vmin=0.1, vmax=10, vlevel=0.5, filled=False, dir_file='',
            save=None):
    """Contour lines of ``surf_name`` at vmin, vmin + vlevel, ... below vmax, labelled with their
    values; with ``filled``, filled contours with a colour bar instead.

    ``surface``: a Surface (what losslandscape.surface returns) or a 2D surface file. ``surf_name``:
    any value it holds or derives (train_loss, test_acc, train_err, eig_ratio, ...). ``dir_file``:
    a direction file for the axis titles (PCA directions: '1st PC: 84.23 %'); default the
    surface's own. ``save``: a path without extension, to write save.pdf and save.png. Returns the
    Figure."""
    levels = contour_levels(vmin, vmax, vlevel, KEYWORDS)
    plane = prepare_plane(surface, surf_name, dir_file, KEYWORDS)
    caption, warning = rise_precision_note(plane.surface, surf_name, vlevel, KEYWORDS)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    draw = _filled_contour_figure if filled else _contour_lines_figure
    return saved(draw(plane, levels, show=False, caption=caption), save)


def heatmap(surface, surf_name='train_loss', *, vmin=0.1, vmax=10, dir_file='', save=None):
    """``surf_name`` as coloured grid cells on a fixed vmin .. vmax scale with a colour bar:
    not-computed points grey, diverged ones the bar's end colour. Arguments as in contour."""
    check_value_range(vmin, vmax, KEYWORDS)
    plane = prepare_plane(surface, surf_name, dir_file, KEYWORDS)
    return saved(_heatmap_figure(plane.surface, plane.titles, plane.values, plane.surf_name, vmin, vmax,
                                 show=False), save)


def surface_3d(surface, surf_name='train_loss', *, zlim=None, dir_file='', save=None):
    """``surf_name`` as a shaded 3D surface with a colour bar; ``zlim``: values above it are drawn
    flat at zlim (default: no cap). Arguments as in contour."""
    plane = prepare_plane(surface, surf_name, dir_file, KEYWORDS)
    return saved(_surface_3d_figure(plane, zlim, show=False), save)


def _contour_lines_figure(plane, levels, show, caption=''):
    fig = new_figure(show)
    ax = fig.add_subplot()
    lines = ax.contour(plane.X, plane.Y, masked(plane.values), levels=levels, cmap='summer')
    ax.clabel(lines, inline=True, fontsize=8)
    label_axes(ax, plane.titles)
    ax.set_title(plane.label + (f'\n{caption}' if caption else ''), fontsize='medium' if caption else None)
    return fig


def _filled_contour_figure(plane, levels, show, caption=''):
    fig = new_figure(show)
    ax = fig.add_subplot()
    filled = ax.contourf(plane.X, plane.Y, masked(plane.values), levels=levels, cmap='summer', extend='both')
    fig.colorbar(filled, ax=ax, label=plane.label)
    label_axes(ax, plane.titles)
    if caption:
        ax.set_title(caption, fontsize='medium')
    return fig


def _heatmap_figure(surface, titles, Z, surf_name, vmin, vmax, show, cmap='viridis'):
    import matplotlib
    fig = new_figure(show)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps[cmap].with_extremes(bad='0.8')
    mesh = ax.pcolormesh(surface.xcoordinates, surface.ycoordinates, heat_values(Z, vmin, vmax),
                         shading='nearest', cmap=colours, vmin=vmin, vmax=vmax)
    fig.colorbar(mesh, ax=ax, extend='both', label=PRETTY_NAMES.get(surf_name, surf_name))
    label_axes(ax, titles)
    return fig


def _surface_3d_figure(plane, zlim, show):
    import mpl_toolkits.mplot3d  # noqa: F401  (registers the '3d' projection)
    shown = np.where(np.isfinite(plane.values), plane.values, np.nan)
    if zlim is not None:
        shown = np.minimum(shown, zlim)  # NaN stays NaN
    fig = new_figure(show)
    ax = fig.add_subplot(projection='3d')
    ny, nx = shown.shape
    finite = shown[np.isfinite(shown)]
    # rcount/ccount: full resolution up to 200 per axis (matplotlib's default would thin to 50).
    drawn = ax.plot_surface(plane.X, plane.Y, masked(shown), cmap='coolwarm', linewidth=0, antialiased=False,
                            vmin=finite.min(), vmax=finite.max(), rcount=min(ny, 200), ccount=min(nx, 200))
    if zlim is not None:
        ax.set_zlim(top=zlim)
    # pad: room between the colour bar and the y axis title, which runs diagonally below the bar.
    fig.colorbar(drawn, ax=ax, shrink=0.5, aspect=5, pad=0.12, label=plane.label)
    label_axes(ax, plane.titles, fontsize='small')
    return fig


def plot_2d_contour(surf_file, *, dir_file='', surf_name='train_loss', vmin=0.1, vmax=10, vlevel=0.5,
                    zlim=None, show=False):
    """Contour lines, filled contours, heat map and 3D surface of ``surf_name`` (contour, heatmap,
    surface_3d), written as surf_file + '_<surf_name>_2dcontour', '_2dcontourf', '_2dheat' and
    '_3dsurface' (.pdf and .png); returns the files. ``dir_file``: as in contour."""
    levels = contour_levels(vmin, vmax, vlevel)
    # A bad --dir_file is refused here, before any file is written.
    plane = prepare_plane(surf_file, surf_name, dir_file, FLAGS, name='surf_file')
    gap_note = describe_gaps(surf_name, plane.values)
    if gap_note:
        print(gap_note)
    caption = say_rise_precision(plane.surface, surf_name, vlevel)
    figures = {'_2dcontour': _contour_lines_figure(plane, levels, show, caption),
               '_2dcontourf': _filled_contour_figure(plane, levels, show, caption),
               '_2dheat': _heatmap_figure(plane.surface, plane.titles, plane.values, surf_name, vmin, vmax, show),
               '_3dsurface': _surface_3d_figure(plane, zlim, show)}
    base = f'{surf_file}_{surf_name}'
    written = [path for suffix, fig in figures.items() for path in save_figure(fig, base + suffix)]
    finish(show)
    return written


# ----------------------------------------------------------------------------- Hessian maps

def eig_ratio_map(surface, *, signed=False, dir_file='', save=None):
    """Heat map of |min_eig / max_eig| (scale 0 .. 0.5), the paper's measure of non-convexity, on a
    2D Hessian surface; with ``signed`` the ratio itself (scale: its own range). Arguments as in
    contour. Returns the Figure."""
    return saved(_eig_ratio_map(surface, signed, dir_file, KEYWORDS, show=False), save)


def _eig_ratio_map(surface, signed, dir_file, spell, show, name='surface'):
    surface = as_surface(surface, dims=2, spell=spell, name=name)
    if not has_values(surface, EIG_RATIO):
        raise UsageError(f'surface file {surface.path!r} has no {layout.MIN_EIG!r} and {layout.MAX_EIG!r}; '
                         'compute them with plot_hessian_eigen.py (losslandscape.hessian_eigen from Python) first')
    grid_mesh(surface)
    with np.errstate(divide='ignore', invalid='ignore'):
        ratio = surface_values(surface, layout.MIN_EIG) / surface_values(surface, layout.MAX_EIG)
    require_finite_points(surface, EIG_RATIO, ratio)
    titles = axis_titles(surface, dir_file, spell)
    if not signed:
        return _heatmap_figure(surface, titles, np.abs(ratio), EIG_RATIO, 0.0, 0.5, show)
    finite = ratio[np.isfinite(ratio)]
    low, high = (finite.min(), finite.max()) if finite.min() < finite.max() else (finite.min() - 1, finite.max() + 1)
    return _heatmap_figure(surface, titles, ratio, 'eig_signed_ratio', low, high, show)


def plot_2d_eig_ratio(surf_file, *, dir_file='', show=False):
    """Heat maps of |min_eig / max_eig| and of the signed ratio (eig_ratio_map), written as
    surf_file + '_min_eig_max_eig_abs_ratio_heat_sns' and '_ratio_heat_sns'; returns the files."""
    surface = load_surface(surf_file, dims=2)
    base = f'{surf_file}_{layout.MIN_EIG}_{layout.MAX_EIG}'
    figures = {'_abs_ratio_heat_sns': _eig_ratio_map(surface, False, dir_file, FLAGS, show),
               '_ratio_heat_sns': _eig_ratio_map(surface, True, dir_file, FLAGS, show)}
    written = [path for suffix, fig in figures.items() for path in save_figure(fig, base + suffix)]
    finish(show)
    return written


# ----------------------------------------------------------------------------- trajectories

def read_trajectory(proj_file, spell=FLAGS):
    """(x, y, per-checkpoint train loss or None) from a projection file, validated."""
    check_input_file(proj_file, 'proj_file', spell)
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


def trajectory(proj_file, *, dir_file=None, save=None):
    """The optimizer's path (a projection file of plot_trajectory.py) in the plane of its
    directions, coloured by each checkpoint's training loss when the file has it. ``dir_file``: its
    PCA direction file, for axis titles with the explained variance. Returns the Figure."""
    return saved(_trajectory(proj_file, dir_file, KEYWORDS, show=False), save)


def _trajectory(proj_file, dir_file, spell, show):
    px, py, loss = read_trajectory(proj_file, spell)
    labels = pca_axis_labels(dir_file, spell) or ('1st direction', '2nd direction')
    fig = new_figure(show)
    ax = fig.add_subplot()
    _draw_path(fig, ax, px, py, loss, path_end_labels(proj_file))
    ax.set_xlabel(labels[0], fontsize='xx-large')
    ax.set_ylabel(labels[1], fontsize='xx-large')
    ax.tick_params(labelsize='x-large')
    return fig


def plot_trajectory(proj_file, dir_file=None, *, show=False):
    """The optimizer path projected on the direction plane (trajectory); writes proj_file + '.pdf'/'.png'."""
    written = save_figure(_trajectory(proj_file, dir_file, FLAGS, show), proj_file)
    finish(show)
    return written


def trajectory_contour(surface, proj_file, *, surf_name='train_loss', vmin=0.1, vmax=10, vlevel=0.5, dir_file='',
                       save=None):
    """Contours of ``surf_name`` (as contour's, plus dotted rings at 10 .. 1e8) with the projected
    optimizer path of ``proj_file`` on top. Arguments as in contour. Returns the Figure."""
    levels = contour_levels(vmin, vmax, vlevel, KEYWORDS)
    plane = prepare_plane(surface, surf_name, dir_file, KEYWORDS)
    return saved(_trajectory_contour(plane, levels, proj_file, KEYWORDS, show=False), save)


def _trajectory_contour(plane, levels, proj_file, spell, show):
    px, py, loss = read_trajectory(proj_file, spell)
    fig = new_figure(show)
    ax = fig.add_subplot()
    near = ax.contour(plane.X, plane.Y, masked(plane.values), levels=levels)
    # The original's second set of levels, 10 .. 1e8, shows the far-away high-loss rings.
    far = ax.contour(plane.X, plane.Y, masked(plane.values), levels=np.logspace(1, 8, num=8), linestyles='dotted')
    for lines in (near, far):
        ax.clabel(lines, inline=True, fontsize=6)
    _draw_path(fig, ax, px, py, loss, path_end_labels(proj_file))
    label_axes(ax, plane.titles)
    return fig


def plot_contour_trajectory(surf_file, dir_file, proj_file, *, surf_name='train_loss', vmin=0.1, vmax=10,
                            vlevel=0.5, show=False):
    """Contours of ``surf_name`` with the projected optimizer path on top (trajectory_contour),
    written as proj_file + '_<surf_name>_2dcontour_proj' (.pdf and .png); returns the files.

    ``dir_file`` (PCA directions, for the axis labels) defaults to the surface's own."""
    levels = contour_levels(vmin, vmax, vlevel)
    plane = prepare_plane(surf_file, surf_name, dir_file, FLAGS, name='surf_file')
    written = save_figure(_trajectory_contour(plane, levels, proj_file, FLAGS, show),
                          f'{proj_file}_{surf_name}_2dcontour_proj')
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
    """The viewer of html_viewer as one self-contained HTML file (plotly.js embedded, works
    offline). Default name: surf_file + '_<surf_name>_viewer.html'. Returns its path."""
    fig = _html_viewer(surf_file, surf_name, dir_file, proj_file, FLAGS, name='surf_file')
    return _write_html(fig, out_path or f'{surf_file}_{surf_name}_viewer.html')


def html_viewer(surface, surf_name='train_loss', *, dir_file='', proj_file=None, save=None):
    """The interactive viewer of ``surf_name`` as a plotly Figure: a rotatable 3D surface beside
    its contour map, plus the projected trajectory of ``proj_file`` when given. Not-computed and
    diverged points are holes. ``surface``, ``dir_file``: as in contour. ``save``: the path of a
    self-contained HTML file to write (plotly.js embedded, works offline). Returns the Figure
    (a notebook shows it; it needs plotly, the 'viewer' extra)."""
    fig = _html_viewer(surface, surf_name, dir_file, proj_file, KEYWORDS)
    if save:
        _write_html(fig, os.fspath(save))
    return fig


def _write_html(fig, out_path):
    file_safety.make_parent_folder(out_path)
    try:
        fig.write_html(out_path, include_plotlyjs=True, full_html=True)
    except OSError as err:
        raise UsageError(f'cannot write {out_path!r} ({err.strerror or err})') from None
    print(f'wrote {out_path}')
    return out_path


def _html_viewer(surface, surf_name, dir_file, proj_file, spell, name='surface'):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    plane = prepare_plane(surface, surf_name, dir_file, spell, name)
    surface, titles = plane.surface, plane.titles
    # plotly draws NaN as a hole; inf would break the colour scale.
    Z = np.where(np.isfinite(plane.values), plane.values, np.nan)
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
        _add_html_trajectory(fig, surface, Z, proj_file, surf_name, spell)
    # The scene's axis titles are drawn inside its panel, where a direction label such as
    # 'x: filter-normalized direction' does not fit: the scene says 'x' / 'y' (or '1st PC'), and
    # the full labels stand below it, in the hover and on the contour panel's axes.
    short_titles = [_short_axis_title(text) for text in titles]
    scene_left, scene_right = fig.layout.scene.domain.x
    fig.add_annotation(text='<br>'.join(titles), showarrow=False, xref='paper', yref='paper',
                       x=(scene_left + scene_right) / 2, y=-0.06, xanchor='center', yanchor='top',
                       font=dict(size=12))
    stderr = largest_rise_stderr(surface, surf_name)
    caption = '' if stderr is None else f'<br><sup>largest standard error of the rise above the centre: {stderr:.2g}</sup>'
    fig.update_layout(title=os.path.basename(surface.path) + caption, autosize=True, height=VIEWER_HEIGHT,
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


def _add_html_trajectory(fig, surface, Z, proj_file, surf_name, spell):
    import plotly.graph_objects as go
    from scipy.interpolate import RegularGridInterpolator

    px, py, loss = read_trajectory(proj_file, spell)
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
