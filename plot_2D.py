"""2D plots of a loss surface: contours, heat map, 3D surface, optimizer trajectories, HTML viewer.

Also home of the helpers the other plot scripts share (plot_1D.py, h52vtp.py): reading one named
surface with its not-computed points masked, derived surfaces (errors, eigenvalue ratio), axis
labels and saving a figure as PDF + PNG.
"""
import json
import os
import re

import numpy as np

import hdf5_layout as layout
from cli import ArgumentParser, UsageError, check_file_exists, run_main

# Surfaces derived from the stored ones (see surface_values).
TRAIN_ERR, TEST_ERR, EIG_RATIO = 'train_err', 'test_err', 'eig_ratio'
DERIVED_NAMES = (TRAIN_ERR, TEST_ERR, EIG_RATIO)
SURF_NAME_CHOICES = layout.SURFACE_NAMES + DERIVED_NAMES
PRETTY_NAMES = {
    layout.TRAIN_LOSS: 'Training loss', layout.TEST_LOSS: 'Test loss',
    layout.TRAIN_ACC: 'Training accuracy (%)', layout.TEST_ACC: 'Test accuracy (%)',
    TRAIN_ERR: 'Training error (%)', TEST_ERR: 'Test error (%)',
    layout.MAX_EIG: 'Largest Hessian eigenvalue', layout.MIN_EIG: 'Smallest Hessian eigenvalue',
    layout.TRACE: 'Hessian trace', layout.HVP_COUNT: 'Hessian-vector products',
    EIG_RATIO: '|min eig / max eig|', 'eig_signed_ratio': 'min eig / max eig',
}
# Checkpoint file name endings, to recognise the original code's interpolation direction files
# (named after both checkpoints, e.g. 'a/model_300.t7_model_10.t7_states.h5').
CHECKPOINT_NAME = re.compile(r'\.(t7|pth?|ckpt|tar)(?=[_.]|$)')
PNG_DPI, PDF_DPI = 150, 300


# ----------------------------------------------------------------------------- reading surfaces

def load_surface(path, *, dims):
    """Read a surface file and check it is ``dims``-dimensional (1 or 2), else UsageError."""
    check_file_exists(path, '--surf_file')
    surface = layout.read_surface(path)
    found = 1 if surface.ycoordinates is None else 2
    if found != dims:
        script = 'plot_1D.py' if found == 1 else 'plot_2D.py or h52vtp.py'
        raise UsageError(f'{path!r} holds a {found}D surface but this command needs a {dims}D one; '
                         f'plot it with {script}')
    return surface


def available_names(surface):
    """The surface names this file can plot: stored ones plus those derivable from them."""
    stored = set(surface.values)
    derived = {TRAIN_ERR} if layout.TRAIN_ACC in stored else set()
    derived |= {TEST_ERR} if layout.TEST_ACC in stored else set()
    derived |= {EIG_RATIO} if {layout.MIN_EIG, layout.MAX_EIG} <= stored else set()
    return sorted(stored | derived)


def has_values(surface, name):
    return name in available_names(surface)


def surface_values(surface, surf_name):
    """The float64 array of ``surf_name`` with NaN wherever the point was not computed yet.

    Computed values are returned as stored, NaN and +-inf (diverged points) included."""
    if not has_values(surface, surf_name):
        names = available_names(surface)
        holds = ('it can plot: ' + ', '.join(names)) if names else \
            f'it holds no value array of its grid shape {surface.shape}'
        raise UsageError(f'surface file {surface.path!r} has no {surf_name!r}; {holds}')
    if surf_name in (TRAIN_ERR, TEST_ERR):
        return 100.0 - surface_values(surface, surf_name.replace('_err', '_acc'))
    if surf_name == EIG_RATIO:
        with np.errstate(divide='ignore', invalid='ignore'):
            return np.abs(surface_values(surface, layout.MIN_EIG) / surface_values(surface, layout.MAX_EIG))
    return np.where(surface.done[surf_name], surface.values[surf_name], np.nan)


def describe_gaps(name, values):
    """One line saying how many points are not computed / not finite, or '' when none."""
    missing, bad = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    if not missing and not bad:
        return ''
    return (f'note: {name}: {missing} point(s) not computed or NaN, {bad} point(s) infinite '
            '(diverged); they are left out of the plot')


def require_finite_points(surface, name, values):
    if not np.isfinite(values).any():
        raise UsageError(f'surface file {surface.path!r} has no finite {name!r} value yet; '
                         'compute the surface first')


# ----------------------------------------------------------------------------- labels

def _stored_setting(surface, key):
    """A run setting from the surface's 'args' attribute, else its identity attribute, else None."""
    args = _safe_args(surface)
    if key in args:
        return args[key]
    if key in surface.attrs:
        try:
            return json.loads(surface.attrs[key])
        except ValueError:
            return surface.attrs[key]
    return None


def _safe_args(surface):
    try:
        args = surface.args()
    except ValueError:
        return {}  # unreadable args: fall back to what the file name tells
    return args if isinstance(args, dict) else {}


def is_interpolation(surface, axis='x'):
    """True when the ``axis`` direction runs between two models rather than a random direction."""
    key = 'model_file2' if axis == 'x' else 'model_file3'
    target = _stored_setting(surface, key)
    if target is not None:
        return bool(target)
    # Files from the original code carry no args: its interpolation direction files are named
    # after both checkpoints (and a 2D one after three).
    found = len(CHECKPOINT_NAME.findall(os.path.basename(surface.dir_file or '')))
    return found >= (2 if axis == 'x' else 3)


def direction_label(surface, axis='x'):
    """Axis label for the ``axis`` ('x' or 'y') coordinate of a surface."""
    if is_interpolation(surface, axis):
        return 'interpolation coefficient'
    norm = _stored_setting(surface, axis + 'norm')
    if norm is None:
        match = re.search(axis + r'norm=([A-Za-z]+)', os.path.basename(surface.dir_file or ''))
        norm = match.group(1) if match else 'filter'  # the paper's default
    return f'{norm}-normalized direction' if norm else 'unnormalized random direction'


def pca_axis_labels(dir_file):
    """('1st PC: 84.23 %', '2nd PC: ...') when ``dir_file`` holds PCA directions, else None."""
    if not dir_file:
        return None
    check_file_exists(dir_file, '--dir_file')
    with layout.open_h5(dir_file, 'direction file') as f:
        if layout.XDIRECTION not in f:
            raise UsageError(f'{dir_file!r} is not a direction file (it has no {layout.XDIRECTION!r})')
        if layout.EXPLAINED_VARIANCE_RATIO not in f:
            return None
        ratio = np.asarray(f[layout.EXPLAINED_VARIANCE_RATIO][()], dtype=np.float64).ravel()
    if ratio.size < 2:
        return None
    return f'1st PC: {ratio[0] * 100:.2f} %', f'2nd PC: {ratio[1] * 100:.2f} %'


# ----------------------------------------------------------------------------- figures

def new_figure(show, **kwargs):
    """A pyplot figure when it is to be shown, else a detached Figure (headless, never leaked).

    matplotlib is imported here, not at the top: h52vtp and the error paths never need it."""
    if show:
        from matplotlib import pyplot
        return pyplot.figure(**kwargs)
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def save_figure(fig, base):
    """Write ``base + '.pdf'`` and ``base + '.png'``; return both paths."""
    paths = [base + '.pdf', base + '.png']
    bbox = _tight_bbox(fig)
    try:
        # No creation date: the same data gives byte-identical files.
        fig.savefig(paths[0], dpi=PDF_DPI, bbox_inches=bbox, format='pdf', metadata={'CreationDate': None})
        fig.savefig(paths[1], dpi=PNG_DPI, bbox_inches=bbox, format='png')
    except OSError as err:
        raise UsageError(f'cannot write {base!r}.pdf/.png ({err.strerror or err})') from None
    print(f'wrote {paths[0]} (+ .png)')
    return paths


def _tight_bbox(fig):
    """The figure's tight bounding box, measured once for both files ('tight' in savefig would
    draw the whole figure an extra time per file)."""
    from matplotlib.backend_bases import FigureCanvasBase
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    if type(fig.canvas) is FigureCanvasBase:
        FigureCanvasAgg(fig)  # a detached Figure: give it a renderer to measure with
    if not isinstance(fig.canvas, FigureCanvasAgg):
        return 'tight'
    return fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)


def finish(show):
    if show:
        from matplotlib import pyplot
        pyplot.show()


def masked(values):
    """Mask NaN (not computed) and +-inf (diverged) so matplotlib leaves them out."""
    return np.ma.masked_invalid(values)


def heat_values(values, vmin, vmax):
    """Values for a heat map with a fixed vmin..vmax colour scale: +-inf become values just past
    the scale so they take the colour bar's over/under colour; NaN stays masked (grey)."""
    span = vmax - vmin
    return masked(np.nan_to_num(values, nan=np.nan, posinf=vmax + span, neginf=vmin - span))


def contour_levels(vmin, vmax, vlevel):
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmin < vmax):
        raise UsageError(f'--vmin {vmin:g} must be below --vmax {vmax:g}')
    if not vlevel > 0:
        raise UsageError(f'--vlevel must be positive (got {vlevel:g})')
    return np.arange(vmin, vmax, vlevel)


def _grid_mesh(surface):
    if len(surface.xcoordinates) < 2 or len(surface.ycoordinates) < 2:
        raise UsageError(f'surface file {surface.path!r} has a {len(surface.ycoordinates)} x '
                         f'{len(surface.xcoordinates)} grid; contours need at least 2 points on each axis')
    return np.meshgrid(surface.xcoordinates, surface.ycoordinates)


def _label_axes(ax, surface):
    ax.set_xlabel('x: ' + direction_label(surface, 'x'))
    ax.set_ylabel('y: ' + direction_label(surface, 'y'))


# ----------------------------------------------------------------------------- 2D surface plots

def plot_2d_contour(surf_file, *, surf_name='train_loss', vmin=0.1, vmax=10, vlevel=0.5, zlim=None,
                    show=False):
    """Contour lines, filled contours, heat map and 3D surface of ``surf_name``; returns the files.

    NaN (not computed) and inf (diverged) points are left out: holes in contours and the 3D
    surface, grey cells (NaN) or the colour bar's end colour (inf) in the heat map."""
    levels = contour_levels(vmin, vmax, vlevel)
    surface = load_surface(surf_file, dims=2)
    Z = surface_values(surface, surf_name)
    X, Y = _grid_mesh(surface)
    require_finite_points(surface, surf_name, Z)
    gap_note = describe_gaps(surf_name, Z)
    if gap_note:
        print(gap_note)
    base = f'{surf_file}_{surf_name}'
    written = []
    written += _plot_contour_lines(surface, X, Y, Z, levels, surf_name, base + '_2dcontour', show)
    written += _plot_filled_contours(surface, X, Y, Z, levels, surf_name, base + '_2dcontourf', show)
    written += _plot_heatmap(surface, Z, surf_name, vmin, vmax, base + '_2dheat', show)
    written += _plot_3d_surface(surface, X, Y, Z, surf_name, zlim, base + '_3dsurface', show)
    finish(show)
    return written


def _plot_contour_lines(surface, X, Y, Z, levels, surf_name, base, show):
    fig = new_figure(show)
    ax = fig.add_subplot()
    lines = ax.contour(X, Y, masked(Z), levels=levels, cmap='summer')
    ax.clabel(lines, inline=True, fontsize=8)
    _label_axes(ax, surface)
    ax.set_title(PRETTY_NAMES.get(surf_name, surf_name))
    return save_figure(fig, base)


def _plot_filled_contours(surface, X, Y, Z, levels, surf_name, base, show):
    fig = new_figure(show)
    ax = fig.add_subplot()
    filled = ax.contourf(X, Y, masked(Z), levels=levels, cmap='summer', extend='both')
    fig.colorbar(filled, ax=ax, label=PRETTY_NAMES.get(surf_name, surf_name))
    _label_axes(ax, surface)
    return save_figure(fig, base)


def _plot_heatmap(surface, Z, surf_name, vmin, vmax, base, show, cmap='viridis'):
    import matplotlib
    fig = new_figure(show)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps[cmap].with_extremes(bad='0.8')
    mesh = ax.pcolormesh(surface.xcoordinates, surface.ycoordinates, heat_values(Z, vmin, vmax),
                         shading='nearest', cmap=colours, vmin=vmin, vmax=vmax)
    fig.colorbar(mesh, ax=ax, extend='both', label=PRETTY_NAMES.get(surf_name, surf_name))
    _label_axes(ax, surface)
    return save_figure(fig, base)


def _plot_3d_surface(surface, X, Y, Z, surf_name, zlim, base, show):
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
    fig.colorbar(drawn, ax=ax, shrink=0.5, aspect=5, label=PRETTY_NAMES.get(surf_name, surf_name))
    ax.set_xlabel('x')
    ax.set_ylabel('y')
    return save_figure(fig, base)


def plot_2d_eig_ratio(surf_file, *, show=False):
    """Heat maps of |min_eig / max_eig| (scale 0..0.5) and of the signed ratio; returns the files."""
    surface = load_surface(surf_file, dims=2)
    if not has_values(surface, EIG_RATIO):
        raise UsageError(f'surface file {surf_file!r} has no {layout.MIN_EIG!r} and {layout.MAX_EIG!r}; '
                         'compute them with plot_hessian_eigen.py first')
    _grid_mesh(surface)
    with np.errstate(divide='ignore', invalid='ignore'):
        signed = surface_values(surface, layout.MIN_EIG) / surface_values(surface, layout.MAX_EIG)
    require_finite_points(surface, EIG_RATIO, signed)
    base = f'{surf_file}_{layout.MIN_EIG}_{layout.MAX_EIG}'
    written = _plot_heatmap(surface, np.abs(signed), EIG_RATIO, 0.0, 0.5, base + '_abs_ratio_heat_sns', show)
    finite = signed[np.isfinite(signed)]
    low, high = (finite.min(), finite.max()) if finite.min() < finite.max() else (finite.min() - 1, finite.max() + 1)
    written += _plot_heatmap(surface, signed, 'eig_signed_ratio', low, high, base + '_ratio_heat_sns', show)
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


def _draw_path(fig, ax, px, py, loss):
    ax.plot(px, py, '-', color='k', linewidth=1, alpha=0.7)
    if loss is not None:
        dots = ax.scatter(px, py, c=masked(loss), cmap='plasma', s=16, zorder=3)
        fig.colorbar(dots, ax=ax, label='checkpoint training loss')
    else:
        ax.plot(px, py, '.', color='tab:blue', zorder=3)
    ax.plot(px[:1], py[:1], 'o', mfc='none', mec='k', ms=8, label='first checkpoint')
    ax.plot(px[-1:], py[-1:], '*', color='k', ms=10, label='last checkpoint')
    ax.legend(loc='best', fontsize='small')


def plot_trajectory(proj_file, dir_file=None, *, show=False):
    """The optimizer path projected on the direction plane; writes proj_file + '.pdf'/'.png'."""
    px, py, loss = read_trajectory(proj_file)
    labels = pca_axis_labels(dir_file) or ('1st direction', '2nd direction')
    fig = new_figure(show)
    ax = fig.add_subplot()
    _draw_path(fig, ax, px, py, loss)
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
    X, Y = _grid_mesh(surface)
    px, py, loss = read_trajectory(proj_file)
    if not dir_file and surface.dir_file and os.path.isfile(surface.dir_file):
        dir_file = surface.dir_file
    labels = pca_axis_labels(dir_file)
    fig = new_figure(show)
    ax = fig.add_subplot()
    near = ax.contour(X, Y, masked(Z), levels=levels)
    # The original's second set of levels, 10 .. 1e8, shows the far-away high-loss rings.
    far = ax.contour(X, Y, masked(Z), levels=np.logspace(1, 8, num=8), linestyles='dotted')
    for lines in (near, far):
        ax.clabel(lines, inline=True, fontsize=6)
    _draw_path(fig, ax, px, py, loss)
    if labels:
        ax.set_xlabel(labels[0], fontsize='xx-large')
        ax.set_ylabel(labels[1], fontsize='xx-large')
    else:
        _label_axes(ax, surface)
    written = save_figure(fig, f'{proj_file}_{surf_name}_2dcontour_proj')
    finish(show)
    return written


# ----------------------------------------------------------------------------- HTML viewer

def write_html_viewer(surf_file, *, surf_name='train_loss', proj_file=None, out_path=None):
    """One self-contained HTML file (plotly.js embedded, works offline): a rotatable 3D surface
    beside its contour map, plus the projected trajectory when ``proj_file`` is given.

    Not-computed and diverged points are holes. Default name: surf_file + '_<surf_name>_viewer.html'."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    surface = load_surface(surf_file, dims=2)
    Z = surface_values(surface, surf_name)
    _grid_mesh(surface)
    require_finite_points(surface, surf_name, Z)
    Z = np.where(np.isfinite(Z), Z, np.nan)  # plotly draws NaN as a hole; inf would break the scale
    x, y, title = surface.xcoordinates, surface.ycoordinates, PRETTY_NAMES.get(surf_name, surf_name)
    fig = make_subplots(rows=1, cols=2, specs=[[{'type': 'scene'}, {'type': 'xy'}]], horizontal_spacing=0.16,
                        subplot_titles=(f'{title}: 3D surface (drag to rotate)', f'{title}: contours'))
    fig.add_trace(go.Surface(x=x, y=y, z=Z, colorscale='Viridis', colorbar=dict(title=title, x=0.43, len=0.9),
                             name=surf_name), row=1, col=1)
    fig.add_trace(go.Contour(x=x, y=y, z=Z, colorscale='Viridis', showscale=False,
                             contours=dict(showlabels=True), name=surf_name), row=1, col=2)
    if proj_file:
        _add_html_trajectory(fig, surface, Z, proj_file, surf_name)
    fig.update_layout(title=os.path.basename(surf_file), autosize=True, height=700,
                      scene=dict(xaxis_title='x', yaxis_title='y', zaxis_title=surf_name))
    fig.update_xaxes(title_text='x: ' + direction_label(surface, 'x'), row=1, col=2)
    fig.update_yaxes(title_text='y: ' + direction_label(surface, 'y'), row=1, col=2)
    out_path = out_path or f'{surf_file}_{surf_name}_viewer.html'
    try:
        fig.write_html(out_path, include_plotlyjs=True, full_html=True)
    except OSError as err:
        raise UsageError(f'cannot write {out_path!r} ({err.strerror or err})') from None
    print(f'wrote {out_path}')
    return out_path


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

def get_args_parser():
    parser = ArgumentParser(
        'plot_2D.py',
        description='Plot a 2D loss surface (contours, filled contours, heat map, 3D surface; PDF + '
                    'PNG beside the surface file), an optimizer trajectory, or both. '
                    '--surf_file alone: the surface plots. --proj_file alone: the trajectory. '
                    'Both: contours with the trajectory on top. Points not computed (NaN) or '
                    'diverged (inf) are left out of every plot; in the heat map they are grey (NaN) '
                    'or take the colour bar\'s end colour (inf).')
    parser.add_argument('--surf_file', '-f', default='',
                        help='surface file (.h5) written by plot_surface.py or the original code')
    parser.add_argument('--dir_file', default='',
                        help='direction file; with PCA directions (plot_trajectory.py) the axes are '
                             "labelled with the explained variance, e.g. '1st PC: 84.23 %%'. "
                             "Default with --surf_file: the surface's own direction file")
    parser.add_argument('--proj_file', default='',
                        help='projection file from plot_trajectory.py (proj_xcoord/proj_ycoord); '
                             'its per-checkpoint train_loss, when stored, colours the path')
    parser.add_argument('--surf_name', default='train_loss', choices=SURF_NAME_CHOICES, metavar='NAME',
                        help='one of ' + ', '.join(SURF_NAME_CHOICES) + '; which surface to plot (default: %(default)s); train_err/test_err are '
                             '100 - accuracy; eig_ratio draws the |min_eig/max_eig| heat maps')
    parser.add_argument('--vmin', default=0.1, type=float,
                        help='lowest contour level and bottom of the heat map colour scale (default: %(default)s)')
    parser.add_argument('--vmax', default=10, type=float,
                        help='contour levels stop below VMAX; top of the heat map colour scale (default: %(default)s)')
    parser.add_argument('--vlevel', default=0.5, type=float,
                        help='spacing between contour levels (default: %(default)s)')
    parser.add_argument('--zlim', default=None, type=float,
                        help='top of the 3D surface plot: higher values are drawn flat at ZLIM '
                             '(default: no cap, the axis fits the largest finite value)')
    parser.add_argument('--html', action='store_true',
                        help='also write one self-contained interactive HTML file (rotatable 3D '
                             "surface + contour map, plus the trajectory with --proj_file): "
                             "SURF_FILE_<surf_name>_viewer.html, opens offline in any browser")
    parser.add_argument('--show', action='store_true',
                        help='open the figures in a window too (default: write files only, headless)')
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if not args.surf_file and not args.proj_file:
        raise UsageError('nothing to plot: pass --surf_file, --proj_file, or both')
    if args.html and not args.surf_file:
        raise UsageError('--html needs --surf_file')
    levels = dict(vmin=args.vmin, vmax=args.vmax, vlevel=args.vlevel)
    written = []
    if args.surf_file and args.proj_file:
        written += plot_contour_trajectory(args.surf_file, args.dir_file, args.proj_file,
                                           surf_name=args.surf_name, show=args.show, **levels)
    elif args.proj_file:
        written += plot_trajectory(args.proj_file, args.dir_file, show=args.show)
    elif args.surf_name == EIG_RATIO:
        written += plot_2d_eig_ratio(args.surf_file, show=args.show)
    else:
        written += plot_2d_contour(args.surf_file, surf_name=args.surf_name, zlim=args.zlim,
                                   show=args.show, **levels)
    if args.html:
        written.append(write_html_viewer(args.surf_file, surf_name=args.surf_name,
                                         proj_file=args.proj_file or None))
    return written


if __name__ == '__main__':
    run_main(main)
