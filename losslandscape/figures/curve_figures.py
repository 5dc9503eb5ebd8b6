"""1D figures of a surface: loss and accuracy curves, one value's curve, several directions
overlaid, two paths compared, the eigenvalue ratio.

Each figure has a function that takes a 1D surface (an hdf5_layout.Surface, what
losslandscape.surface returns, or the path of a surface file) and returns its matplotlib Figure,
writing PDF + PNG only when given ``save=`` (a path without extension): loss_curve, value_curve,
eig_ratio_curve, overlaid_loss_curves, path_comparison. The plot_1d_* functions below draw the same
figures for plot_1D.py and the --plot options of plot_surface.py and plot_hessian_eigen.py: they
write them beside the surface file under the original code's names and return the paths.

Points not computed (NaN) or diverged (inf) are gaps in the curves. Every curve whose values have
standard errors in the file is drawn with its band of +- 2 standard errors (common.BAND_STDERRS);
files written before them draw as they did.
"""
import os

import numpy as np

from losslandscape.errors import UsageError
from losslandscape.figures.common import (
    EIG_RATIO,
    FLAGS,
    KEYWORDS,
    PRETTY_NAMES,
    TRAIN_ERR,
    as_surface,
    describe_gaps,
    direction_label,
    draw_stderr_band,
    finish,
    has_values,
    loss_barrier,
    masked,
    new_figure,
    path_name,
    save_figure,
    saved,
    stderr_values,
    surface_values,
)
from losslandscape.io import hdf5_layout as layout

DEFAULT_XMIN, DEFAULT_XMAX = -1.0, 1.0   # the defaults mean "the surface's own x range"
LOSS_ACC_NAMES = (layout.TRAIN_LOSS, layout.TEST_LOSS, layout.TRAIN_ACC, layout.TEST_ACC)
EIG_RATIO_MISSING = 'compute them with plot_hessian_eigen.py (losslandscape.hessian_eigen from Python) first'


def x_range(x, xmin, xmax, spell=FLAGS):
    """The original's rule: xmin -1 / xmax 1 (the defaults) stand for the data's own limits."""
    low = float(np.min(x)) if xmin == DEFAULT_XMIN else float(xmin)
    high = float(np.max(x)) if xmax == DEFAULT_XMAX else float(xmax)
    if not low < high:
        raise UsageError(f'the x range {low:g} .. {high:g} is empty; pass {spell("xmin")} below {spell("xmax")}')
    return low, high


def _check_limit(value, name, spell):
    if not (np.isfinite(value) and value > 0):
        raise UsageError(f'{spell(name)} must be a positive number (got {value:g})')


def _optional(surface, name):
    return surface_values(surface, name) if has_values(surface, name) else None


def _report_gaps(surface, names):
    for name in names:
        if has_values(surface, name):
            note = describe_gaps(name, surface_values(surface, name))
            if note:
                print(note)


def load_1d(surface, spell=FLAGS, name='surf_file'):
    """The 1D Surface ``surface`` is or its file holds (common.as_surface), with 2 points at least."""
    surface = as_surface(surface, dims=1, spell=spell, name=name)
    if len(surface.xcoordinates) < 2:
        raise UsageError(f'surface file {surface.path!r} has a single point; a curve needs at least 2')
    return surface


def _require_train_loss(surface):
    if not has_values(surface, layout.TRAIN_LOSS):
        raise UsageError(f'surface file {surface.path!r} has no {layout.TRAIN_LOSS!r}')


def _loss_axes(ax, log, loss_max):
    if log:
        ax.set_yscale('log')
        ax.set_ylim(top=loss_max)   # a log axis cannot start at 0: keep its own bottom
    else:
        ax.set_ylim(0, loss_max)


def _draw_loss_acc(ax_loss, ax_acc, surface, label_curves=True):
    """Loss (blue, left) and accuracy (red, right); train solid, test dashed; those it has."""
    styles = {layout.TRAIN_LOSS: (ax_loss, 'b-', 'Training loss'), layout.TEST_LOSS: (ax_loss, 'b--', 'Test loss'),
              layout.TRAIN_ACC: (ax_acc, 'r-', 'Training accuracy'), layout.TEST_ACC: (ax_acc, 'r--', 'Test accuracy')}
    for name, (ax, style, label) in styles.items():
        values = _optional(surface, name)
        if values is not None:
            ax.plot(surface.xcoordinates, masked(values), style, linewidth=1, label=label if label_curves else None)
            draw_stderr_band(ax, surface.xcoordinates, values, stderr_values(surface, name), style[0])


def _loss_acc_figure(surfaces, xlim, log, loss_max, show):
    """Loss and accuracy of each of ``surfaces`` (checked 1D Surfaces) on twin axes; the legend
    names the curves once."""
    fig = new_figure(show)
    ax_loss = fig.add_subplot()
    ax_acc = ax_loss.twinx()
    for k, surface in enumerate(surfaces):
        _draw_loss_acc(ax_loss, ax_acc, surface, label_curves=(k == 0))
    ax_loss.set_xlim(*xlim)
    _loss_axes(ax_loss, log, loss_max)
    ax_loss.set_xlabel(direction_label(surfaces[0], 'x'), fontsize='x-large')
    ax_loss.set_ylabel('Loss', color='b', fontsize='xx-large')
    ax_loss.tick_params('y', colors='b', labelsize='x-large')
    ax_loss.tick_params('x', labelsize='large')
    ax_acc.set_ylim(0, 100)
    ax_acc.set_ylabel('Accuracy', color='r', fontsize='xx-large')
    ax_acc.tick_params('y', colors='r', labelsize='x-large')
    handles = ax_loss.get_legend_handles_labels()[0] + ax_acc.get_legend_handles_labels()[0]
    ax_acc.legend(handles=handles, loc='best', fontsize='small')  # the top axes: not hidden by its curves
    return fig


def _curve_figure(x, values, *, xlim, xlabel, ylabel, ylim, log, show, stderr=None):
    """One blue curve (with its band where ``stderr`` is given). ``ylim``: (bottom, top) or None
    (matplotlib's); a log axis takes only its top."""
    fig = new_figure(show)
    ax = fig.add_subplot()
    ax.plot(x, masked(values), 'b-', linewidth=1)
    draw_stderr_band(ax, x, values, stderr, 'b')
    ax.set_xlim(*xlim)
    if log:
        ax.set_yscale('log')
    if ylim is not None:
        ax.set_ylim(top=ylim[1]) if log else ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel, fontsize='x-large')
    ax.set_ylabel(ylabel, fontsize='xx-large')
    return fig


# ----------------------------------------------------------------------------- one surface

def loss_curve(surface, *, xmin=-1.0, xmax=1.0, loss_max=5, log=False, save=None):
    """Loss (blue, left axis, 0 .. ``loss_max``) and accuracy (red, right axis, 0 .. 100 %) along
    a 1D surface: training solid, test dashed where the surface has them.

    ``surface``: a Surface (what losslandscape.surface returns) or a 1D surface file. ``xmin`` /
    ``xmax``: the x axis; the defaults -1 / 1 mean the surface's own range. ``log``: a log loss
    axis. ``save``: a path without extension, to write save.pdf and save.png. Returns the Figure."""
    return saved(_loss_curve(surface, xmin, xmax, loss_max, log, KEYWORDS, show=False), save)


def _loss_curve(surface, xmin, xmax, loss_max, log, spell, show):
    _check_limit(loss_max, 'loss_max', spell)
    surface = load_1d(surface, spell, 'surface')
    _require_train_loss(surface)
    return _loss_acc_figure([surface], x_range(surface.xcoordinates, xmin, xmax, spell), log, loss_max, show)


def value_curve(surface, surf_name='train_loss', *, xmin=-1.0, xmax=1.0, ylim=None, log=False, save=None):
    """One value along a 1D surface: any it holds or derives (train_loss, test_acc, train_err =
    100 - train_acc, max_eig, eig_ratio, train_perplexity, ...).

    ``ylim``: (bottom, top) of the value axis, default matplotlib's; with ``log`` only its top
    counts. ``surface``, ``xmin``, ``xmax``, ``save``: as in loss_curve. Returns the Figure."""
    return saved(_value_curve(surface, surf_name, xmin, xmax, ylim, log, KEYWORDS, show=False), save)


def _value_curve(surface, surf_name, xmin, xmax, ylim, log, spell, show, ylabel=None):
    surface = load_1d(surface, spell, 'surface')
    values = surface_values(surface, surf_name)
    return _curve_figure(surface.xcoordinates, values, xlim=x_range(surface.xcoordinates, xmin, xmax, spell),
                         xlabel=direction_label(surface, 'x'), ylabel=ylabel or PRETTY_NAMES.get(surf_name, surf_name),
                         ylim=ylim, log=log, show=show, stderr=stderr_values(surface, surf_name))


def eig_ratio_curve(surface, *, signed=False, xmin=-1.0, xmax=1.0, ratio_max=1.0, save=None):
    """|min_eig / max_eig| along a 1D Hessian surface (axis 0 .. ``ratio_max``), or with
    ``signed`` the ratio itself (-ratio_max .. ratio_max): the paper's measure of non-convexity.
    ``surface``, ``xmin``, ``xmax``, ``save``: as in loss_curve. Returns the Figure."""
    return saved(_eig_ratio_curve(surface, signed, xmin, xmax, ratio_max, KEYWORDS, show=False), save)


def _eig_ratio_curve(surface, signed, xmin, xmax, ratio_max, spell, show):
    _check_limit(ratio_max, 'ratio_max', spell)
    surface = load_1d(surface, spell, 'surface')
    if not has_values(surface, EIG_RATIO):
        raise UsageError(f'surface file {surface.path!r} has no {layout.MIN_EIG!r} and {layout.MAX_EIG!r}; '
                         + EIG_RATIO_MISSING)
    x = surface.xcoordinates
    with np.errstate(divide='ignore', invalid='ignore'):
        ratio = surface_values(surface, layout.MIN_EIG) / surface_values(surface, layout.MAX_EIG)
    xlim, xlabel = x_range(x, xmin, xmax, spell), direction_label(surface, 'x')
    if signed:
        return _curve_figure(x, ratio, xlim=xlim, xlabel=xlabel, ylabel='min eig / max eig',
                             ylim=(-ratio_max, ratio_max), log=False, show=show)
    return _curve_figure(x, np.abs(ratio), xlim=xlim, xlabel=xlabel, ylabel='|min eig / max eig|',
                         ylim=(0, ratio_max), log=False, show=show)


# ----------------------------------------------------------------------------- several surfaces

def overlaid_loss_curves(surfaces, *, xmin=-1.0, xmax=1.0, loss_max=5, log=False, save=None):
    """The loss and accuracy curves (as loss_curve's) of several 1D surfaces in one figure, e.g.
    along several random directions. ``surfaces``: Surfaces or surface files. Returns the Figure."""
    return saved(_overlaid_loss_curves(surfaces, xmin, xmax, loss_max, log, KEYWORDS, show=False), save)


def _overlaid_loss_curves(surfaces, xmin, xmax, loss_max, log, spell, show):
    _check_limit(loss_max, 'loss_max', spell)
    surfaces = [load_1d(surface, spell, 'surfaces') for surface in surfaces]
    if not surfaces:
        raise UsageError(f'{spell("surfaces")} is empty: give one surface at least')
    for surface in surfaces:
        _require_train_loss(surface)
    all_x = np.concatenate([s.xcoordinates for s in surfaces])
    return _loss_acc_figure(surfaces, x_range(all_x, xmin, xmax, spell), log, loss_max, show)


COMPARE_COLOURS = ('tab:blue', 'tab:orange')


def path_comparison(surface, other, *, labels=None, xmin=-1.0, xmax=1.0, loss_max=5, log=False, save=None):
    """Two paths between the same two models in one figure: the training loss (solid; the test
    loss dashed where both have it) of ``surface`` and of ``other`` against their coordinate, each
    labelled with its barrier (common.loss_barrier). ``labels``: the two legend names (default:
    what each path is, e.g. 'Bezier curve', 'straight line'). Returns the Figure."""
    return saved(_path_comparison(surface, other, labels, xmin, xmax, loss_max, log, KEYWORDS, show=False), save)


def _path_comparison(surface, other, labels, xmin, xmax, loss_max, log, spell, show):
    _check_limit(loss_max, 'loss_max', spell)
    surfaces = [load_1d(surface, spell, 'surface'), load_1d(other, spell, 'other')]
    if labels is not None and len(labels) != 2:
        raise UsageError(f'{spell("labels")} must give two names, one per path (got {len(labels)})')
    for each in surfaces:
        _require_train_loss(each)
    legend_names = labels or [path_name(each) for each in surfaces]
    with_test = all(has_values(each, layout.TEST_LOSS) for each in surfaces)
    fig = new_figure(show)
    ax = fig.add_subplot()
    for each, name, colour in zip(surfaces, legend_names, COMPARE_COLOURS):
        x, train_loss = each.xcoordinates, surface_values(each, layout.TRAIN_LOSS)
        ax.plot(x, masked(train_loss), '-', color=colour, linewidth=1.5,
                label=f'{name}: training loss (barrier {loss_barrier(x, train_loss):.3g})')
        draw_stderr_band(ax, x, train_loss, stderr_values(each, layout.TRAIN_LOSS), colour)
        if with_test:
            ax.plot(x, masked(surface_values(each, layout.TEST_LOSS)), '--', color=colour, linewidth=1,
                    label=f'{name}: test loss')
    all_x = np.concatenate([s.xcoordinates for s in surfaces])
    ax.set_xlim(*x_range(all_x, xmin, xmax, spell))
    _loss_axes(ax, log, loss_max)
    ax.set_xlabel('t (0 and 1: the two models)', fontsize='x-large')
    ax.set_ylabel('Loss', fontsize='xx-large')
    ax.tick_params(labelsize='large')
    ax.legend(loc='best', fontsize='small')
    return fig


# ----------------------------------------------------------------------------- files, as the scripts write them

def plot_1d_loss_err(surf_file, *, xmin=-1.0, xmax=1.0, loss_max=5, log=False, show=False):
    """Loss + accuracy against the coordinate (loss_curve), and the training loss and error alone.

    Writes surf_file + '_1d_loss_acc[_log]', '_1d_train_loss[_log]' and '_1d_train_err' (.pdf and
    .png); test curves (dashed) when the file has them. Returns the written paths."""
    _check_limit(loss_max, 'loss_max', FLAGS)
    surface = load_1d(surf_file)
    _require_train_loss(surface)
    _report_gaps(surface, LOSS_ACC_NAMES)
    log_tag = '_log' if log else ''
    limits = dict(xmin=xmin, xmax=xmax, spell=FLAGS, show=show)
    figures = {f'_1d_loss_acc{log_tag}': _loss_curve(surface, loss_max=loss_max, log=log, **limits),
               f'_1d_train_loss{log_tag}': _value_curve(surface, layout.TRAIN_LOSS, ylim=(0, loss_max), log=log,
                                                        ylabel='Training Loss', **limits)}
    if has_values(surface, TRAIN_ERR):
        figures['_1d_train_err'] = _value_curve(surface, TRAIN_ERR, ylim=(0, 100), log=False,
                                                ylabel='Training Error (%)', **limits)
    written = [path for suffix, fig in figures.items() for path in save_figure(fig, surf_file + suffix)]
    finish(show)
    return written


def repeat_file_name(prefix, idx):
    """The original's naming for --prefix: f'{prefix}_{idx}.h5'."""
    return f'{prefix}_{idx}.h5'


def plot_1d_loss_err_repeat(prefix, idx_min=1, idx_max=10, *, xmin=-1.0, xmax=1.0, loss_max=5, log=False,
                            show=False):
    """Overlay the loss/accuracy curves of prefix_<idx>.h5 for idx_min..idx_max (e.g. several random
    directions; overlaid_loss_curves). Writes prefix + '_1d_loss_err_repeat[_log]' (.pdf and .png);
    returns the paths."""
    _check_limit(loss_max, 'loss_max', FLAGS)
    if idx_min > idx_max:
        raise UsageError(f'--idx_min {idx_min} is above --idx_max {idx_max}')
    surfaces = []
    for idx in range(idx_min, idx_max + 1):
        path = repeat_file_name(prefix, idx)
        if not os.path.exists(path):
            raise UsageError(f'{path!r} (--prefix {prefix!r}, index {idx}) does not exist; '
                             'the files must be named PREFIX_IDX.h5 for every IDX from --idx_min to --idx_max')
        surfaces.append(load_1d(path))
    fig = _overlaid_loss_curves(surfaces, xmin, xmax, loss_max, log, FLAGS, show)
    written = save_figure(fig, f'{prefix}_1d_loss_err_repeat' + ('_log' if log else ''))
    finish(show)
    return written


def plot_1d_compare(surf_file, compare_file, *, labels=None, xmin=-1.0, xmax=1.0, loss_max=5, log=False,
                    show=False):
    """Two paths between the same two models in one figure (path_comparison), and each one's
    training loss barrier printed. Writes surf_file + '_1d_compare[_log]' (.pdf and .png); returns
    the paths."""
    _check_limit(loss_max, 'loss_max', FLAGS)
    surfaces = [load_1d(surf_file), load_1d(compare_file, FLAGS, 'compare')]
    fig = _path_comparison(*surfaces, labels, xmin, xmax, loss_max, log, FLAGS, show)
    for surface, name in zip(surfaces, labels or [path_name(surface) for surface in surfaces]):
        _report_gaps(surface, [layout.TRAIN_LOSS])
        barrier = loss_barrier(surface.xcoordinates, surface_values(surface, layout.TRAIN_LOSS))
        print(f'{name}: training loss barrier {barrier:.4g} ({surface.path})')
    written = save_figure(fig, f'{surf_file}_1d_compare' + ('_log' if log else ''))
    finish(show)
    return written


def plot_1d_eig_ratio(surf_file, *, xmin=-1.0, xmax=1.0, ratio_max=1.0, show=False):
    """|min_eig / max_eig| and the signed ratio against the coordinate (eig_ratio_curve).

    Writes surf_file + '_1d_eig_abs_ratio' and '_1d_eig_ratio' (.pdf and .png); returns the paths."""
    _check_limit(ratio_max, 'ratio_max', FLAGS)
    surface = load_1d(surf_file)
    limits = dict(xmin=xmin, xmax=xmax, ratio_max=ratio_max, spell=FLAGS, show=show)
    figures = {'_1d_eig_abs_ratio': _eig_ratio_curve(surface, signed=False, **limits),
               '_1d_eig_ratio': _eig_ratio_curve(surface, signed=True, **limits)}
    written = [path for suffix, fig in figures.items() for path in save_figure(fig, surf_file + suffix)]
    finish(show)
    return written
