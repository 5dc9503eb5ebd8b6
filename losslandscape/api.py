"""The loss landscape from Python: the same engine as plot_surface.py and plot_hessian_eigen.py.

    import losslandscape
    surface = losslandscape.surface(model, dataset, x=(-1, 1, 21), y='-1:1:21', xnorm='filter',
                                    xignore='biasbn', ynorm='filter', yignore='biasbn',
                                    loss_name='crossentropy', surf_file='out/surface.h5')
    surface.xcoordinates, surface.ycoordinates, surface.values['train_loss']

``model`` is an nn.Module whose current weights are the centre (x = y = 0; it is handed back
there, in the mode it came in); ``dataset`` a torch Dataset whose items are tensors, tuples or
dicts of tensors (collated by torch's default_collate), ``test_dataset`` another one (its values
are stored as test_...). Every other keyword is a flag of plot_surface.py under its own name
(``x``, ``y``, ``xnorm``, ``dir_file``, ``batch_size``, ``include_params``, ``data_mode``, ...),
and ``loss_name`` may also be the loss function itself: fn(model, batch) -> dict of batch sums
(objective.py). The axes also take (MIN, MAX, NUM) tuples, the parameter patterns lists;
``model_file`` is loaded into ``model`` first (which then holds it). Messages name the keywords
(``surf_file=``), not the scripts' flags. ``surf_file`` is required; without ``dir_file`` the direction file is named as the
scripts name it, after the surface file instead of a checkpoint (made when missing, reused when
there). The HDF5 file is the scripts' own: rerunning the
same call resumes, and the plot scripts draw it. Returns the hdf5_layout.Surface (coordinates and
value arrays). Bad arguments raise errors.UsageError with the scripts' one-line messages.

``hessian_eigen(model, dataset, **flags)`` does the same for plot_hessian_eigen.py (its flags:
``eig_tol``, ``trace`` ...), into the same kind of surface file.

The scripts' ``main`` functions call ``compute_surface`` and ``compute_hessian_eigen`` below.
"""
import argparse
import dataclasses
import os
import re
import sys

import torch

from losslandscape.cli import grid_args
from losslandscape.cli.parsing import ArgumentParser
from losslandscape.directions import subsets
from losslandscape.engine import evaluators
from losslandscape.engine.run_setup import RunSettings, describe, prepare_run
from losslandscape.engine.surface_engine import run_grid
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout
from losslandscape.models import loading
from losslandscape.parallel.mpi_comm import get_comm

# ----------------------------------------------------------------------------- what the scripts call

def compute_surface(settings, comm, **objects):
    """plot_surface.py's work: build the run, evaluate every missing point of the objective;
    returns (run, summary on rank 0). ``objects``: net / train_dataset / test_dataset objects."""
    run = prepare_run(settings, comm, **objects)
    if comm.is_root:
        warn_about_statistics(run)
    by_products = run.by_product_names()
    summary = run_grid(comm, run.grid, run.open_writer(run.value_names() + by_products, by_products),
                       evaluators.make_loss_evaluator(run), desc='loss surface', points_per_call=settings.points_per_call)
    if comm.is_root:
        run.report(summary)
    return run, summary


def compute_hessian_eigen(settings, comm, solver, **objects):
    """plot_hessian_eigen.py's work: the Hessian's extreme eigenvalues (and trace) at every
    missing point; ``solver``: a hessian.SolverSettings."""
    run = prepare_run(settings, comm, differentiable=True, **objects)
    names = evaluators.eigen_value_names(trace=solver.trace_samples > 0)
    evaluate = evaluators.make_hessian_evaluator(run, solver)
    # Chains of neighbouring points per rank, so that each solve starts from the point before.
    summary = run_grid(comm, run.grid, run.open_writer(names, evaluators.EIGEN_BY_PRODUCTS), evaluate,
                       desc='hessian eigenvalues', chains=True, on_bar=evaluate.attach_bar)
    if comm.is_root:
        run.report(summary)
    return run, summary


def warn_about_statistics(run):
    spec = run.settings.directions
    if (spec.model_file2 or spec.model_file3) and spec.dir_type == 'weights' and subsets.has_statistics(run.net) \
            and not run.settings.recomputes_statistics:
        print('warning: --dir_type weights keeps the first model\'s BatchNorm statistics, so x = 1 is not the '
              'second model; use --dir_type states to interpolate whole models, or --recompute_bn to give every '
              'point statistics of its own', file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the Python API

class _KeywordParser(ArgumentParser):
    """The scripts' parser with errors raised as UsageError, for keyword arguments."""

    def error(self, message):
        raise UsageError(message)


def _parser(hessian):
    parser = _KeywordParser('landscape.hessian_eigen' if hessian else 'landscape.surface', add_help=False)
    grid_args.add_grid_script_arguments(parser)
    if hessian:
        grid_args.add_hessian_arguments(parser)
    return parser


# Keywords that take Python sequences as well as the flag's text: the grid axes (MIN, MAX, NUM) and
# the parameter patterns (a list of globs for GLOB,GLOB).
AXIS_KEYWORDS = ('x', 'y')
PATTERN_KEYWORDS = ('include_params', 'exclude_params')


def _flag_text(name, value):
    """A Python value of keyword ``name`` as its flag's text: (-1, 1, 21) -> '-1:1:21' for the
    axes, ['a.*', 'b.*'] -> 'a.*,b.*' for the parameter patterns; other values as they are."""
    if name in AXIS_KEYWORDS and isinstance(value, (tuple, list)):
        if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise UsageError(f'{name}={value!r}: expected (MIN, MAX, NUM), e.g. {name}=(-1, 1, 21), or {name}=\'-1:1:21\'')
        return ':'.join(repr(v) for v in value)
    if name in PATTERN_KEYWORDS and isinstance(value, (tuple, list)):
        if not all(isinstance(v, str) and v.strip() and ',' not in v for v in value):
            raise UsageError(f'{name}={value!r}: expected a list of name patterns such as [\'layer4.*\', \'fc.*\']')
        return ','.join(v.strip() for v in value)
    return value


def _keyword_message(message, names):
    """A flag's message in the words of the Python API: '--surf_file' becomes 'surf_file=', and
    '--x=-1:1' 'x=-1:1', for each flag that is a keyword here (``names``)."""
    def keyword(match):
        negated, name = match.group(1), match.group(2)
        if name not in names:
            return match.group(0)
        return f'{name}=False' if negated else f'{name}='
    return FLAG_IN_MESSAGE.sub(keyword, message)


# A flag in a message, with the '=' or the space before a quoted or numeric value it may carry.
FLAG_IN_MESSAGE = re.compile(r"--(no-)?([A-Za-z_]\w*)(?:=| (?=['\"\d-]))?")


def _namespace(parser, model, dataset, test_dataset, flags):
    """The scripts' argparse Namespace for these keyword arguments: defaults, then ``flags`` (a
    string value goes through the flag's own type, as on the command line)."""
    args = parser.parse_args([])
    actions = {a.dest: a for a in parser._actions if a.dest != argparse.SUPPRESS}
    for name, value in flags.items():
        action = actions.get(name)
        if action is None or name in ('model', 'dataset', 'model_given'):
            raise UsageError(f'unknown keyword {name}=: use plot_surface.py\'s flag names (x, y, xnorm, '
                             'dir_file, surf_file, batch_size, loss_name, include_params, ...)')
        if name == 'rand_seed':
            raise UsageError('rand_seed=: the model given is evaluated with the weights it has (seed torch before '
                             'building it, or pass model_file=)')
        value = _flag_text(name, value)
        if isinstance(value, str) and action.type is not None:
            try:
                value = action.type(value)
            except (TypeError, ValueError):
                raise UsageError(f'{name}={value!r}: expected {action.type.__name__}') from None
        if action.choices is not None and value not in action.choices:
            raise UsageError(f'{name}={value!r}: choose one of {", ".join(map(str, action.choices))}')
        setattr(args, name, value)
    if not args.surf_file:
        raise UsageError('surf_file= is required: the HDF5 file the surface is written to (and resumed from)')
    args.model, args.dataset, args.model_given = describe(model), dataset, True
    args.rand_seed = None   # the weights are the model's own (or model_file's)
    args.eval_test = args.eval_test or test_dataset is not None
    return args


def _settings(args):
    """RunSettings whose default direction file name starts from the surface file's name (there
    is no --model_file to name it after)."""
    settings = RunSettings.from_args(args)
    if settings.directions.dir_file:
        return settings
    root = os.path.splitext(args.surf_file)[0]
    return dataclasses.replace(settings, directions=dataclasses.replace(settings.directions, name_root=root))


def _run(model, dataset, test_dataset, flags, hessian):
    parser = _parser(hessian)
    names = {a.dest for a in parser._actions}
    try:
        return _compute(parser, model, dataset, test_dataset, flags, hessian)
    except UsageError as err:   # the scripts' messages name flags; the caller wrote keywords
        raise UsageError(_keyword_message(str(err), names)) from None


def _load_model_file(model, path):
    """model_file=: the checkpoint loaded into ``model``, which then is the centre."""
    loading.load_checkpoint(model, path)   # _run says model_file=


def _compute(parser, model, dataset, test_dataset, flags, hessian):
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f'model must be a torch.nn.Module, not {type(model).__name__}')
    args = _namespace(parser, model, dataset, test_dataset, flags)
    grid_args.validate(parser, args, extra_checks=(grid_args.check_hessian,) if hessian else ())
    if args.model_file:
        _load_model_file(model, args.model_file)
    comm = get_comm(args.mpi)
    settings = _settings(args)
    was_training = model.training
    objects = {'net': model, 'train_dataset': dataset, 'test_dataset': test_dataset}
    try:
        if hessian:
            run, _ = compute_hessian_eigen(settings, comm, grid_args.solver_settings(args), **objects)
        else:
            run, _ = compute_surface(settings, comm, **objects)
        run.restore_centre()
    finally:
        model.train(was_training)
    return hdf5_layout.read_surface(run.surf_file) if comm.is_root else None


def surface(model, dataset, test_dataset=None, **flags):
    """Loss (and the objective's other values) of ``model`` over ``dataset`` on a 1D/2D grid,
    written to ``surf_file`` and returned as an hdf5_layout.Surface (see the module docstring)."""
    return _run(model, dataset, test_dataset, flags, hessian=False)


def hessian_eigen(model, dataset, **flags):
    """The Hessian's largest and smallest eigenvalues (and with trace=True its trace) of the mean
    objective over ``dataset`` on a 1D/2D grid, as plot_hessian_eigen.py computes them."""
    return _run(model, dataset, None, flags, hessian=True)
