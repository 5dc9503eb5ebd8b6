"""Helpers the figures share: reading a surface, derived values, axis labels, making and saving figures.

Used by curve_figures.py, surface_figures.py, spectrum_figures.py and h52vtp.py (and through them
by plot_1D.py, plot_2D.py and the --plot options of the compute scripts): one named surface with
its not-computed points masked, the derived surfaces (errors, eigenvalue ratio), direction labels
that also work for files of the original code, figures that show themselves in a notebook, and
figures written as PDF + PNG.

Every check that refuses an argument says so in the caller's words: the scripts' flag
(``--vmin 5``, FLAGS) or the Python keyword (``vmin=5``, KEYWORDS).
"""
import os
import re
import sys

import numpy as np

from losslandscape.cli.parsing import check_file_exists
from losslandscape.errors import UsageError
from losslandscape.io import file_safety
from losslandscape.io import hdf5_layout as layout

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
    layout.EIG_SOLVE: 'Eigenvalue solve (0 cold, 1 warm, 2 warm then cold)',
    EIG_RATIO: '|min eig / max eig|', 'eig_signed_ratio': 'min eig / max eig',
    'train_perplexity': 'Training perplexity', 'test_perplexity': 'Test perplexity',
}
# Checkpoint file name endings, to recognise the original code's interpolation direction files
# (named after both checkpoints, e.g. 'a/model_300.t7_model_10.t7_states.h5').
CHECKPOINT_NAME = re.compile(r'\.(t7|pth?|ckpt|tar)(?=[_.]|$)')
PNG_DPI, PDF_DPI = 150, 300


# ----------------------------------------------------------------------------- naming arguments

class ArgumentSpelling:
    """How an error message names an argument: as a script's flag or as a Python keyword, so that
    one check serves plot_2D.py (``--vmin 5 must be below --vmax 1``) and the figure functions
    (``vmin=5 must be below vmax=1``)."""

    def __init__(self, as_flag):
        self.as_flag = as_flag

    def __call__(self, name, value=None):
        """The argument ``name`` (and its ``value``, text, when given) as the caller wrote it."""
        if self.as_flag:
            return f'--{name}' if value is None else f'--{name} {value}'
        return f'{name}=' if value is None else f'{name}={value}'


FLAGS, KEYWORDS = ArgumentSpelling(as_flag=True), ArgumentSpelling(as_flag=False)


def check_input_file(path, name, spell):
    """UsageError unless ``path`` (the argument ``name``) is an existing regular file."""
    check_file_exists(path, spell(name))


# ----------------------------------------------------------------------------- reading surfaces

def load_surface(path, *, dims):
    """Read a surface file and check it is ``dims``-dimensional (1 or 2), else UsageError (in the
    scripts' words)."""
    return as_surface(path, dims=dims, spell=FLAGS, name='surf_file')


def as_surface(surface, *, dims, spell=KEYWORDS, name='surface'):
    """The hdf5_layout.Surface ``surface`` is (one losslandscape.surface returned) or that the
    file at that path holds, checked to be ``dims``-dimensional (1 or 2); else UsageError naming
    the argument ``name`` as ``spell`` spells it."""
    if isinstance(surface, (str, os.PathLike)):
        path = os.fspath(surface)
        check_input_file(path, name, spell)
        surface = layout.read_surface(path)
    elif not isinstance(surface, layout.Surface):
        raise UsageError(f'{spell(name)} must be a Surface (what losslandscape.surface returns) or the path '
                         f'of a surface file, not {type(surface).__name__}')
    found = 1 if surface.ycoordinates is None else 2
    if found != dims:
        if spell.as_flag:
            script = 'plot_1D.py' if found == 1 else 'plot_2D.py or h52vtp.py'
            raise UsageError(f'{surface.path!r} holds a {found}D surface but this command needs a {dims}D one; '
                             f'plot it with {script}')
        raise UsageError(f'{spell(name)} {surface.path!r} holds a {found}D surface but this figure needs a '
                         f'{dims}D one')
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


BAND_STDERRS = 2   # a curve's band: +- this many standard errors


def stderr_values(surface, surf_name):
    """The standard errors of ``surf_name`` (NaN where not computed), or None where the file has
    none (written before them, or a value without one): train_err's are train_acc's."""
    source = surf_name.replace('_err', '_acc') if surf_name in (TRAIN_ERR, TEST_ERR) else surf_name
    name = layout.stderr_name(source)
    if name not in surface.values:
        return None
    return np.where(surface.done[name], surface.values[name], np.nan)


def draw_stderr_band(ax, x, values, stderr, color):
    """The band values +- BAND_STDERRS standard errors around a curve, where both are finite;
    nothing where ``stderr`` is None."""
    if stderr is None:
        return
    low, high = values - BAND_STDERRS * stderr, values + BAND_STDERRS * stderr
    shown = np.isfinite(low) & np.isfinite(high)
    if shown.any():
        ax.fill_between(x, np.where(shown, low, 0.0), np.where(shown, high, 0.0), where=shown, color=color,
                        alpha=0.2, linewidth=0)


def largest_rise_stderr(surface, surf_name):
    """The largest finite standard error of the rise of ``surf_name`` above the centre (train_loss:
    train_loss_rise_stderr), or None where the file has none: how far apart two points' values
    must be to differ beyond the noise of the samples."""
    stderr = stderr_values(surface, layout.rise_name(surf_name))
    if stderr is None or not np.isfinite(stderr).any():
        return None
    return float(np.nanmax(np.where(np.isfinite(stderr), stderr, np.nan)))


def rise_precision_note(surface, surf_name, vlevel, spell=FLAGS):
    """(a caption beside the contour spacing ``vlevel`` saying the largest standard error of the
    rise, or ''; a one-line warning when the spacing is finer than twice it, or '')."""
    stderr = largest_rise_stderr(surface, surf_name)
    if stderr is None:
        return '', ''
    caption = f'contour spacing {vlevel:g}; largest standard error of the rise above the centre {stderr:.2g}'
    warning = ''
    if vlevel < 2 * stderr:
        warning = (f'warning: {spell("vlevel", f"{vlevel:g}")} is finer than twice the largest standard error of '
                   f'{surf_name}\'s rise above the centre ({stderr:.3g}): neighbouring contours may differ by '
                   'sampling noise alone')
    return caption, warning


def say_rise_precision(surface, surf_name, vlevel, spell=FLAGS):
    """Print rise_precision_note's caption (stdout) and warning (stderr, one line); return the caption."""
    caption, warning = rise_precision_note(surface, surf_name, vlevel, spell)
    if caption:
        print(f'{surf_name}: {caption}')
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return caption


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

AXES = ('x', 'y')
PC_NAMES = ('1st PC', '2nd PC')
UNKNOWN_DIRECTION = 'direction (normalization unknown)'
# A setting that no record holds, as opposed to one recorded as None or '' (no normalisation).
_ABSENT = object()
# The direction file names of the original code (direction_files.name_direction_file keeps its scheme):
# '<model file(s)>_<dir_type>[_xignore=..][_xnorm=..][_yignore=..][_ynorm=..][_same_dir][_idx=N].h5'.
# Such a name records every setting that made the directions.
ORIGINAL_DIRECTION_NAME = re.compile(r'_(weights|states)(_xignore=[A-Za-z]+)?(_xnorm=[A-Za-z]+)?'
                                     r'(_yignore=[A-Za-z]+)?(_ynorm=[A-Za-z]+)?(_same_dir)?(_idx=\d+)?\.h5$')
# plot_trajectory's (and the original's) PCA direction files: PCA_<dir_type>[...]/directions.h5.
PCA_DIRECTION_PATH = re.compile(r'(^|/)PCA_(weights|states)[^/]*/directions\.h5$')


def direction_label(surface, axis='x', dir_file='', spell=FLAGS):
    """Axis label for the ``axis`` ('x' or 'y') coordinate of a surface, e.g. 'filter-normalized
    direction' or, for PCA directions, '1st PC: 84.23 %'. ``dir_file``: see axis_titles."""
    return _axis_labels(surface, (axis,), dir_file, spell)[0][0]


def axis_titles(surface, dir_file='', spell=FLAGS):
    """The axis titles of the surface's plots, one per axis: 'x: <direction_label>' ..., or the
    principal components as they are ('1st PC: 84.23 %', '2nd PC: 10.12 %'), which name their axis.

    ``dir_file`` (the --dir_file flag, the dir_file= keyword: ``spell`` says which) must be a
    direction file; by default the surface's own direction file is read when it is there and
    readable (for PCA labels and the settings it records), else the labels come from the surface's
    own records."""
    axes = AXES[:1] if surface.ycoordinates is None else AXES
    labels, named_by_pc = _axis_labels(surface, axes, dir_file, spell)
    return labels if named_by_pc else tuple(f'{axis}: {label}' for axis, label in zip(axes, labels))


def _axis_labels(surface, axes, dir_file, spell):
    """(labels of ``axes``, whether they name principal components)."""
    if dir_file:
        pca_labels, made_with = _read_direction_facts(dir_file, spell)
    else:
        pca_labels, made_with = _own_direction_facts(surface)
    if pca_labels:
        return tuple(pca_labels[AXES.index(axis)] for axis in axes), True
    records = [made_with]
    run_args = _safe_args(surface)
    if not run_args.get('dir_file'):
        # The run made its directions from its own settings. A run given --dir_file reused a file
        # made by other settings (PCA ones by none of them): its own --xnorm describes nothing.
        records += [run_args, _identity_settings(surface)]
    labels = tuple(_made_with_label(surface, records, axis) for axis in axes)
    return labels, all(label in PC_NAMES for label in labels)


def _own_direction_facts(surface):
    """_read_direction_facts of the surface's own direction file, or (None, {}) when it is not
    there or unreadable (moved, another machine): the labels then come from the surface alone."""
    if surface.dir_file and os.path.isfile(surface.dir_file):
        try:
            return _read_direction_facts(surface.dir_file)
        except UsageError:
            pass
    return None, {}


def _read_direction_facts(dir_file, spell=FLAGS):
    """(PCA axis labels or None, the settings the file's attributes record) of a direction file,
    the argument dir_file as ``spell`` spells it."""
    check_input_file(dir_file, 'dir_file', spell)
    ratio, made_with = layout.read_direction_facts(dir_file, spell('dir_file'))
    if ratio.size < 2:
        return None, made_with
    return tuple(f'{name}: {share * 100:.2f} %' for name, share in zip(PC_NAMES, ratio)), made_with


def _identity_settings(surface):
    return {k: v for k, v in layout.decoded_attrs(surface.attrs).items() if k in layout.IDENTITY_FIELDS}


def _safe_args(surface):
    try:
        args = surface.args()
    except ValueError:
        return {}  # unreadable args: fall back to what the file name tells
    return args if isinstance(args, dict) else {}


def _recorded(records, key):
    """The first record's ``key``, or _ABSENT when none holds it."""
    for record in records:
        if key in record:
            return record[key]
    return _ABSENT


def _made_with_label(surface, records, axis):
    """What the settings that made the ``axis`` direction say of it."""
    curve_file = _recorded(records, 'curve_file')
    if axis == 'x' and curve_file not in (_ABSENT, '', None):
        return f't along the {_curve_name(curve_file)}'
    path = (surface.dir_file or '').replace(os.sep, '/')
    name = os.path.basename(path)
    same_dir = _recorded(records, 'same_dir')
    if same_dir is _ABSENT:
        match = ORIGINAL_DIRECTION_NAME.search(name)
        same_dir = bool(match and match.group(6))
    if axis == 'y' and same_dir:
        axis = 'x'  # --same_dir: the y direction is a copy of the x direction
    if _is_interpolation(name, records, axis):
        return 'interpolation coefficient'
    norm = _recorded(records, axis + 'norm')
    if norm is _ABSENT and ORIGINAL_DIRECTION_NAME.search(name):
        # The scheme writes '_xnorm=...' only when a normalisation was asked for, and the
        # original's --xnorm defaulted to '' (none): a name without it is of unnormalised directions.
        match = re.search('_' + axis + r'norm=([A-Za-z]+)', name)
        norm = match.group(1) if match else ''
    if norm is not _ABSENT:
        return f'{norm}-normalized direction' if norm else 'unnormalized random direction'
    if PCA_DIRECTION_PATH.search(path):
        return PC_NAMES[AXES.index(axis)]  # its file (and so the variance) is not at hand
    # A file named by its user, made we cannot tell how: no guess (the paper's filter
    # normalisation would misdescribe PCA or unnormalised directions).
    return UNKNOWN_DIRECTION


def _is_interpolation(name, records, axis):
    """True when the ``axis`` direction runs between two models rather than a random direction."""
    target = _recorded(records, 'model_file2' if axis == 'x' else 'model_file3')
    if target is not _ABSENT:
        return bool(target)
    # Files from the original code carry no args: its interpolation direction files are named
    # after both checkpoints (and a 2D one after three).
    found = len(CHECKPOINT_NAME.findall(name))
    return found >= (2 if axis == 'x' else 3)


CURVE_NAMES = {'bezier': 'Bezier curve', 'polychain': 'polygonal chain'}


def _curve_name(curve_file):
    """'Bezier curve' (or 'polygonal chain') for a curve file, 'curve' when it cannot be read."""
    try:
        return CURVE_NAMES.get(layout.read_curve_file(curve_file).curve_type, 'curve')
    except UsageError:
        return 'curve'


def path_name(surface):
    """What a 1D surface's path is, for a legend: 'Bezier curve' (along a curve file), 'straight
    line' (between two models), else the direction's label."""
    records = [_safe_args(surface), _identity_settings(surface)]
    curve_file = _recorded(records, 'curve_file')
    if curve_file not in (_ABSENT, '', None):
        return _curve_name(curve_file)
    if _recorded(records, 'model_file2') not in (_ABSENT, '', None):
        return 'straight line'
    return direction_label(surface, 'x')


def loss_barrier(x, values):
    """The barrier of a path from x = 0 to x = 1 (Garipov et al. 2018; Frankle et al. 2020): its
    highest value on [0, 1] minus the higher of its two end values (interpolated where 0 or 1 is no
    grid point). NaN when the finite points do not cover [0, 1]."""
    x, values = np.asarray(x, dtype=np.float64), np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any() or x[finite].min() > 0 or x[finite].max() < 1:
        return float('nan')
    ends = np.interp([0.0, 1.0], x[finite], values[finite])
    inside = finite & (x >= 0) & (x <= 1)
    highest = max(values[inside].max(), ends.max()) if inside.any() else ends.max()
    return float(highest - ends.max())


def pca_axis_labels(dir_file, spell=FLAGS):
    """('1st PC: 84.23 %', '2nd PC: ...') when ``dir_file`` holds PCA directions, else None."""
    if not dir_file:
        return None
    return _read_direction_facts(dir_file, spell)[0]


# ----------------------------------------------------------------------------- figures

def new_figure(show, **kwargs):
    """A pyplot figure when it is to be shown, else a detached Figure (headless, never leaked);
    either way an InlineFigure, which a notebook displays.

    matplotlib is imported here, not at the top: h52vtp and the error paths never need it."""
    from losslandscape.figures.inline import InlineFigure
    if show:
        from matplotlib import pyplot
        return pyplot.figure(FigureClass=InlineFigure, **kwargs)
    return InlineFigure(**kwargs)


def saved(fig, save):
    """``fig``, written first as ``save`` + '.pdf' and '.png' when ``save`` (a path without
    extension) is given: what the figure functions' save= does."""
    if save:
        save_figure(fig, os.fspath(save))
    return fig


def save_figure(fig, base):
    """Write ``base + '.pdf'`` and ``base + '.png'``; return both paths."""
    paths = [base + '.pdf', base + '.png']
    bbox = _tight_bbox(fig)
    file_safety.make_parent_folder(paths[0])
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


def check_value_range(vmin, vmax, spell=FLAGS):
    """UsageError unless vmin < vmax, both finite (a colour scale, the contour levels' span)."""
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmin < vmax):
        raise UsageError(f'{spell("vmin", f"{vmin:g}")} must be below {spell("vmax", f"{vmax:g}")}')


def contour_levels(vmin, vmax, vlevel, spell=FLAGS):
    """The contour levels vmin, vmin + vlevel, ... below vmax."""
    check_value_range(vmin, vmax, spell)
    if not vlevel > 0:
        raise UsageError(f'{spell("vlevel")} must be positive (got {vlevel:g})')
    return np.arange(vmin, vmax, vlevel)


def grid_mesh(surface):
    if len(surface.xcoordinates) < 2 or len(surface.ycoordinates) < 2:
        raise UsageError(f'surface file {surface.path!r} has a {len(surface.ycoordinates)} x '
                         f'{len(surface.xcoordinates)} grid; contours need at least 2 points on each axis')
    return np.meshgrid(surface.xcoordinates, surface.ycoordinates)


def label_axes(ax, titles, **text):
    """Set the (x, y) axis titles of axis_titles on ``ax``."""
    ax.set_xlabel(titles[0], **text)
    ax.set_ylabel(titles[1], **text)
