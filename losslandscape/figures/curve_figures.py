"""1D figures of a surface file: loss and accuracy curves, several directions overlaid, two paths
compared, the eigenvalue ratio.

Every figure is written as PDF with a PNG beside it, next to the surface file. Points not computed
(NaN) or diverged (inf) are gaps in the curves. Drawn by plot_1D.py and by the --plot options of
plot_surface.py and plot_hessian_eigen.py.
"""
import os

import numpy as np

from losslandscape.errors import UsageError
from losslandscape.figures.common import (
    describe_gaps,
    direction_label,
    finish,
    has_values,
    load_surface,
    loss_barrier,
    masked,
    new_figure,
    path_name,
    save_figure,
    surface_values,
)
from losslandscape.io import hdf5_layout as layout

DEFAULT_XMIN, DEFAULT_XMAX = -1.0, 1.0   # the defaults mean "the surface's own x range"


def x_range(x, xmin, xmax):
    """The original's rule: xmin -1 / xmax 1 (the defaults) stand for the data's own limits."""
    low = float(np.min(x)) if xmin == DEFAULT_XMIN else float(xmin)
    high = float(np.max(x)) if xmax == DEFAULT_XMAX else float(xmax)
    if not low < high:
        raise UsageError(f'the x range {low:g} .. {high:g} is empty; pass --xmin below --xmax')
    return low, high


def _check_limit(value, flag):
    if not (np.isfinite(value) and value > 0):
        raise UsageError(f'{flag} must be a positive number (got {value:g})')


def _optional(surface, name):
    return surface_values(surface, name) if has_values(surface, name) else None


def _report_gaps(surface, names):
    for name in names:
        if has_values(surface, name):
            note = describe_gaps(name, surface_values(surface, name))
            if note:
                print(note)


def load_1d(path):
    surface = load_surface(path, dims=1)
    if len(surface.xcoordinates) < 2:
        raise UsageError(f'surface file {path!r} has a single point; a curve needs at least 2')
    return surface


def _loss_axes(ax, log, loss_max):
    if log:
        ax.set_yscale('log')
        ax.set_ylim(top=loss_max)   # a log axis cannot start at 0: keep its own bottom
    else:
        ax.set_ylim(0, loss_max)


def _draw_loss_acc(ax_loss, ax_acc, x, curves, label_curves=True):
    """Loss (blue, left) and accuracy (red, right); train solid, test dashed."""
    styles = {layout.TRAIN_LOSS: (ax_loss, 'b-', 'Training loss'), layout.TEST_LOSS: (ax_loss, 'b--', 'Test loss'),
              layout.TRAIN_ACC: (ax_acc, 'r-', 'Training accuracy'), layout.TEST_ACC: (ax_acc, 'r--', 'Test accuracy')}
    for name, (ax, style, label) in styles.items():
        if curves.get(name) is not None:
            ax.plot(x, masked(curves[name]), style, linewidth=1, label=label if label_curves else None)


def _style_loss_acc(ax_loss, ax_acc, xlim, xlabel, log, loss_max):
    ax_loss.set_xlim(*xlim)
    _loss_axes(ax_loss, log, loss_max)
    ax_loss.set_xlabel(xlabel, fontsize='x-large')
    ax_loss.set_ylabel('Loss', color='b', fontsize='xx-large')
    ax_loss.tick_params('y', colors='b', labelsize='x-large')
    ax_loss.tick_params('x', labelsize='large')
    ax_acc.set_ylim(0, 100)
    ax_acc.set_ylabel('Accuracy', color='r', fontsize='xx-large')
    ax_acc.tick_params('y', colors='r', labelsize='x-large')
    handles = ax_loss.get_legend_handles_labels()[0] + ax_acc.get_legend_handles_labels()[0]
    ax_acc.legend(handles=handles, loc='best', fontsize='small')  # the top axes: not hidden by its curves


def _single_curve(x, values, *, xlim, xlabel, ylabel, ylim, log, show, base):
    fig = new_figure(show)
    ax = fig.add_subplot()
    ax.plot(x, masked(values), 'b-', linewidth=1)
    ax.set_xlim(*xlim)
    if log:
        ax.set_yscale('log')
        ax.set_ylim(top=ylim[1])
    else:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel, fontsize='x-large')
    ax.set_ylabel(ylabel, fontsize='xx-large')
    return save_figure(fig, base)


def plot_1d_loss_err(surf_file, *, xmin=-1.0, xmax=1.0, loss_max=5, log=False, show=False):
    """Loss + accuracy against the coordinate, and the training loss and error alone.

    Writes surf_file + '_1d_loss_acc[_log]', '_1d_train_loss[_log]' and '_1d_train_err' (.pdf and
    .png); test curves (dashed) when the file has them. Returns the written paths."""
    _check_limit(loss_max, '--loss_max')
    surface = load_1d(surf_file)
    x = surface.xcoordinates
    curves = {name: _optional(surface, name) for name in
              (layout.TRAIN_LOSS, layout.TEST_LOSS, layout.TRAIN_ACC, layout.TEST_ACC)}
    if curves[layout.TRAIN_LOSS] is None:
        raise UsageError(f'surface file {surf_file!r} has no {layout.TRAIN_LOSS!r}')
    xlim, xlabel, log_tag = x_range(x, xmin, xmax), direction_label(surface, 'x'), '_log' if log else ''
    _report_gaps(surface, curves)

    fig = new_figure(show)
    ax_loss = fig.add_subplot()
    ax_acc = ax_loss.twinx()
    _draw_loss_acc(ax_loss, ax_acc, x, curves)
    _style_loss_acc(ax_loss, ax_acc, xlim, xlabel, log, loss_max)
    written = save_figure(fig, f'{surf_file}_1d_loss_acc{log_tag}')
    written += _single_curve(x, curves[layout.TRAIN_LOSS], xlim=xlim, xlabel=xlabel, ylabel='Training Loss',
                             ylim=(0, loss_max), log=log, show=show, base=f'{surf_file}_1d_train_loss{log_tag}')
    if curves[layout.TRAIN_ACC] is not None:
        written += _single_curve(x, 100.0 - curves[layout.TRAIN_ACC], xlim=xlim, xlabel=xlabel,
                                 ylabel='Training Error (%)', ylim=(0, 100), log=False, show=show,
                                 base=f'{surf_file}_1d_train_err')
    finish(show)
    return written


def repeat_file_name(prefix, idx):
    """The original's naming for --prefix: f'{prefix}_{idx}.h5'."""
    return f'{prefix}_{idx}.h5'


def plot_1d_loss_err_repeat(prefix, idx_min=1, idx_max=10, *, xmin=-1.0, xmax=1.0, loss_max=5, log=False,
                            show=False):
    """Overlay the loss/accuracy curves of prefix_<idx>.h5 for idx_min..idx_max (e.g. several random
    directions). Writes prefix + '_1d_loss_err_repeat[_log]' (.pdf and .png); returns the paths."""
    _check_limit(loss_max, '--loss_max')
    if idx_min > idx_max:
        raise UsageError(f'--idx_min {idx_min} is above --idx_max {idx_max}')
    surfaces = []
    for idx in range(idx_min, idx_max + 1):
        path = repeat_file_name(prefix, idx)
        if not os.path.exists(path):
            raise UsageError(f'{path!r} (--prefix {prefix!r}, index {idx}) does not exist; '
                             'the files must be named PREFIX_IDX.h5 for every IDX from --idx_min to --idx_max')
        surfaces.append(load_1d(path))
    missing = [s.path for s in surfaces if not has_values(s, layout.TRAIN_LOSS)]
    if missing:
        raise UsageError(f'surface file {missing[0]!r} has no {layout.TRAIN_LOSS!r}')

    fig = new_figure(show)
    ax_loss = fig.add_subplot()
    ax_acc = ax_loss.twinx()
    for k, surface in enumerate(surfaces):
        curves = {name: _optional(surface, name) for name in
                  (layout.TRAIN_LOSS, layout.TEST_LOSS, layout.TRAIN_ACC, layout.TEST_ACC)}
        _draw_loss_acc(ax_loss, ax_acc, surface.xcoordinates, curves, label_curves=(k == 0))
    all_x = np.concatenate([s.xcoordinates for s in surfaces])
    _style_loss_acc(ax_loss, ax_acc, x_range(all_x, xmin, xmax), direction_label(surfaces[0], 'x'),
                    log, loss_max)
    written = save_figure(fig, f'{prefix}_1d_loss_err_repeat' + ('_log' if log else ''))
    finish(show)
    return written


COMPARE_COLOURS = ('tab:blue', 'tab:orange')


def plot_1d_compare(surf_file, compare_file, *, labels=None, xmin=-1.0, xmax=1.0, loss_max=5, log=False,
                    show=False):
    """Two paths between the same two models in one figure: the training loss (solid; the test
    loss dashed where both files have it) of ``surf_file`` and of ``compare_file`` against their
    coordinate, each labelled with its barrier (plot_common.loss_barrier). ``labels``: the two
    legend names (default: what each path is, e.g. 'Bezier curve', 'straight line').

    Writes surf_file + '_1d_compare[_log]' (.pdf and .png); returns the paths."""
    _check_limit(loss_max, '--loss_max')
    surfaces = [load_1d(surf_file), load_1d(compare_file)]
    for surface in surfaces:
        if not has_values(surface, layout.TRAIN_LOSS):
            raise UsageError(f'surface file {surface.path!r} has no {layout.TRAIN_LOSS!r}')
    names = labels or [path_name(surface) for surface in surfaces]
    with_test = all(has_values(surface, layout.TEST_LOSS) for surface in surfaces)
    fig = new_figure(show)
    ax = fig.add_subplot()
    for surface, name, colour in zip(surfaces, names, COMPARE_COLOURS):
        x, train_loss = surface.xcoordinates, surface_values(surface, layout.TRAIN_LOSS)
        _report_gaps(surface, [layout.TRAIN_LOSS])
        barrier = loss_barrier(x, train_loss)
        print(f'{name}: training loss barrier {barrier:.4g} ({surface.path})')
        ax.plot(x, masked(train_loss), '-', color=colour, linewidth=1.5,
                label=f'{name}: training loss (barrier {barrier:.3g})')
        if with_test:
            ax.plot(x, masked(surface_values(surface, layout.TEST_LOSS)), '--', color=colour, linewidth=1,
                    label=f'{name}: test loss')
    all_x = np.concatenate([s.xcoordinates for s in surfaces])
    ax.set_xlim(*x_range(all_x, xmin, xmax))
    _loss_axes(ax, log, loss_max)
    ax.set_xlabel('t (0 and 1: the two models)', fontsize='x-large')
    ax.set_ylabel('Loss', fontsize='xx-large')
    ax.tick_params(labelsize='large')
    ax.legend(loc='best', fontsize='small')
    written = save_figure(fig, f'{surf_file}_1d_compare' + ('_log' if log else ''))
    finish(show)
    return written


def plot_1d_eig_ratio(surf_file, *, xmin=-1.0, xmax=1.0, ratio_max=1.0, show=False):
    """|min_eig / max_eig| and the signed ratio against the coordinate (Hessian surfaces).

    Writes surf_file + '_1d_eig_abs_ratio' and '_1d_eig_ratio' (.pdf and .png); returns the paths."""
    _check_limit(ratio_max, '--ratio_max')
    surface = load_1d(surf_file)
    if not (has_values(surface, layout.MIN_EIG) and has_values(surface, layout.MAX_EIG)):
        raise UsageError(f'surface file {surf_file!r} has no {layout.MIN_EIG!r} and {layout.MAX_EIG!r}; '
                         'compute them with plot_hessian_eigen.py first')
    x = surface.xcoordinates
    with np.errstate(divide='ignore', invalid='ignore'):
        ratio = surface_values(surface, layout.MIN_EIG) / surface_values(surface, layout.MAX_EIG)
    xlim, xlabel = x_range(x, xmin, xmax), direction_label(surface, 'x')
    written = _single_curve(x, np.abs(ratio), xlim=xlim, xlabel=xlabel, ylabel='|min eig / max eig|',
                            ylim=(0, ratio_max), log=False, show=show, base=f'{surf_file}_1d_eig_abs_ratio')
    written += _single_curve(x, ratio, xlim=xlim, xlabel=xlabel, ylabel='min eig / max eig',
                             ylim=(-ratio_max, ratio_max), log=False, show=show, base=f'{surf_file}_1d_eig_ratio')
    finish(show)
    return written
