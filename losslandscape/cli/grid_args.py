"""The command-line flags the grid scripts share (plot_surface.py, plot_hessian_eigen.py), as
argument groups, each with its own validation.

A script composes the groups it needs (``add_grid_arguments(parser)`` ...) and calls ``validate``
with the same list, so every flag is declared once and checked once, before any expensive work
(data, models, directions). api.py builds its keyword arguments from the same parser.
"""
import argparse
import math
import os

import numpy as np

from losslandscape.cli.parsing import check_file_exists, check_output_folder
from losslandscape.compute import configuration, timing_search
from losslandscape.curvature import hessian
from losslandscape.curves import connecting_curves
from losslandscape.data import batch_sources, datasets
from losslandscape.directions import normalization, sources, subsets
from losslandscape.engine import sample_budget
from losslandscape.engine.grid import parse_axis
from losslandscape.engine.run_setup import PointSettings
from losslandscape.errors import UsageError
from losslandscape.figures import common
from losslandscape.io import hdf5_layout
from losslandscape.models import checkpoints, loading
from losslandscape.objectives import objective

# ----------------------------------------------------------------------------- grid

def add_grid_arguments(parser):
    grid = parser.add_argument_group('grid')
    grid.add_argument('--x', default='-1:1:51', help='x range and resolution MIN:MAX:NUM, e.g. --x=-1:1:51 '
                      '(write --x=-1:1:51 with "=" when MIN is negative; NUM 1 is the point MIN alone, '
                      'as in the original)')
    grid.add_argument('--y', default=None, help='y range MIN:MAX:NUM for a 2D surface; omit for 1D')
    return grid


def check_grid(parser, args):
    parse_axis(args.x, '--x')
    if args.y:
        parse_axis(args.y, '--y')


# ----------------------------------------------------------------------------- model and objective

DEFAULT_MODEL = 'resnet56'


def _add_model_group(parser, centre):
    """The 'model and objective' group with --model, --model_file (``centre``: what it is) and
    --loss_name; the caller adds its other checkpoints. --model and --loss_name default to None,
    which choose_model_and_loss resolves."""
    model = parser.add_argument_group('model and objective')
    model.add_argument('--model', default=None, help='a model of the dataset\'s zoo (e.g. resnet56, '
                       'vgg9; digits: mlp, cnn, cnn_bn) or package.module:factory returning an nn.Module; default: '
                       f'{DEFAULT_MODEL}, or none for a Hugging Face model folder as --model_file (its config.json '
                       'names the architecture; with --model the folder\'s tensors are loaded into the factory\'s model)')
    model.add_argument('--model_file', default='', help=f'checkpoint of the trained model ({centre}): a dict '
                       'with "state_dict" or a bare state_dict (saved with torch.save(model.state_dict(), path)), a '
                       '.safetensors state_dict, or a Hugging Face model folder (config.json and safetensors weights, '
                       'sharded or not, as save_pretrained writes them; read offline); without it, the model as '
                       '--model builds it, initialised under --rand_seed')
    model.add_argument('--rand_seed', default=0, type=int, help='the seed of the initial weights when no --model_file '
                       'is given (recorded with the results; ignored with --model_file) (default %(default)s)')
    objective.add_loss_argument(model, chosen=True)
    return model


def choose_model_and_loss(parser, args):
    """--model and --loss_name where they were not given, before anything reads them (and
    records them: the files of runs without them hold the names resolved, as before): the
    zoo's DEFAULT_MODEL and crossentropy; for a Hugging Face model folder as --model_file no
    --model (transformers builds the architecture of its config.json) and the objective its
    architecture calls for (huggingface.default_loss_name)."""
    folder = checkpoints.is_model_folder(args.model_file)
    if folder:
        # A trailing separator would put default file names (named after the checkpoint) inside it.
        args.model_file = args.model_file.rstrip(os.sep) or args.model_file
    if args.model is None:
        args.model = None if folder else DEFAULT_MODEL
    if args.loss_name is None:
        if folder:
            from losslandscape.models import huggingface
            args.loss_name = huggingface.default_loss_name(args.model_file)
        else:
            args.loss_name = objective.DEFAULT_LOSS


def check_model_file(args):
    """The centre's checkpoint: a file, or a Hugging Face folder that can build its model when
    no --model is given."""
    if args.model is None:
        from losslandscape.models import huggingface
        huggingface.check_folder(args.model_file)
    elif args.model_file:
        loading.check_checkpoint_exists(args.model_file, '--model_file')


def add_model_arguments(parser):
    model = _add_model_group(parser, 'the surface centre, x=0, y=0')
    model.add_argument('--model_file2', default='', help='second checkpoint: x direction = model2 - model1, '
                       'a linear interpolation with the two minimizers at x=0 and x=1')
    model.add_argument('--model_file3', default='', help='third checkpoint: y direction = model3 - model1')
    return model


def check_model(parser, args):
    if args.model_file3 and not args.y:
        parser.error('--model_file3 sets the y direction, so it needs --y')
    if not getattr(args, 'model_given', False):   # api.py hands the model itself
        if args.model is not None:
            loading.check_model_name(args.dataset, args.model)
        if not args.model_file and (args.model_file2 or args.model_file3):
            parser.error('--model_file2/--model_file3 need --model_file: the checkpoint at the centre')
        check_model_file(args)
    elif args.model_file:
        loading.check_checkpoint_exists(args.model_file, '--model_file')
    for flag in ('model_file2', 'model_file3'):
        if getattr(args, flag):
            loading.check_checkpoint_exists(getattr(args, flag), f'--{flag}')
    objective.check_loss_name(args.loss_name)


def add_centre_arguments(parser):
    """The model at one point (hessian_spectrum.py, sharpness.py): --model, --model_file, --loss_name."""
    return _add_model_group(parser, 'the point measured')


def check_centre(parser, args):
    if args.model is not None:
        loading.check_model_name(args.dataset, args.model)
    check_model_file(args)
    objective.check_loss_name(args.loss_name)


def add_device_arguments(parser):
    device = parser.add_argument_group('compute')
    device.add_argument('--cuda', action='store_true', help='compute on the GPU')
    device.add_argument('--threads', default=None, type=int, help='CPU threads (torch.set_num_threads); '
                        'default: torch\'s choice')
    return device


def check_device(parser, args):
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be at least 1')


def add_point_script_arguments(parser, subset_what, subset_rest, **data_options):
    """The flags of the scripts that measure one model (hessian_spectrum.py, sharpness.py): the
    model and objective, the data, the parameter subset, the device. ``data_options`` go to
    add_data_arguments. Returns the 'compute' group, for a script's own compute flags."""
    add_centre_arguments(parser)
    add_data_arguments(parser, **data_options)
    subset = parser.add_argument_group('parameters')
    add_param_subset_arguments(subset, subset_what, subset_rest)
    return add_device_arguments(parser)


def add_timed_point_script_arguments(parser, subset_what, subset_rest, work):
    """add_point_script_arguments for a script whose --batch_size is timed unless given
    (choosing.choose_point_batch_size): ``work`` is what it computes over the data in
    batches ('Hessian-vector products', 'gradients'), which the timing runs. Returns the 'compute' group."""
    compute = add_point_script_arguments(
        parser, subset_what, subset_rest, batch_size_default=None,
        batch_size_help=f'batch size of the {work} (it changes only speed, memory and float rounding: the '
        'objective is the mean over the whole data set); default: timed, see --compute_config')
    compute.add_argument('--compute_config', default='auto', choices=configuration.MODES,
                         help=f'how the batch size is chosen when --batch_size is not given: auto (default) times '
                         f'batch sizes by {work} on the first training samples when the run asks for enough of them '
                         'to pay for it (a choice timed before for this model on this machine is taken from the '
                         'timing cache, see README), else takes the plain 128; search: always times; plain: 128. '
                         'The choice is printed in one line')
    return compute


def validate_point_script(parser, args, extra_checks=()):
    for check in (choose_model_and_loss, check_centre, check_data, check_device, *extra_checks):
        check(parser, args)
    if args.eval_test:
        parser.error('--eval_test: these measurements are of the training objective')


def parse_point_script(parser, argv, output, check):
    """(args, PointSettings, output path) of a script that measures one point
    (hessian_spectrum.py, sharpness.py): its flags checked (``check`` its own), the output file --
    ``--{output}_file``, else named after the point -- in a writable folder."""
    args = parser.parse_args(argv)
    validate_point_script(parser, args, extra_checks=(check,))
    settings = PointSettings.from_args(args)
    path = getattr(args, f'{output}_file') or settings.default_file(output)
    check_output_folder(path, f'{output} file', f'pass --{output}_file to write it elsewhere')
    return args, settings, path


# ----------------------------------------------------------------------------- directions

def add_direction_arguments(parser):
    directions = parser.add_argument_group('directions')
    directions.add_argument('--dir_file', default='', help='reuse this direction file instead of making one')
    directions.add_argument('--dir_type', default='weights', choices=subsets.DIR_TYPES,
                            help='weights: move the parameters (BN statistics stay as trained); '
                            'states: move the whole state_dict, BN running statistics included')
    for axis in 'xy':
        directions.add_argument(f'--{axis}norm', default=None, choices=normalization.NORMS,
                                help=f'normalization of the {axis} direction: filter (the paper\'s), layer, '
                                'weight, dfilter, dlayer; default none')
        directions.add_argument(f'--{axis}ignore', default=None, choices=normalization.IGNORES,
                                help=f'biasbn: zero {axis} direction for biases and BN parameters (dim <= 1)')
    directions.add_argument('--same_dir', action='store_true', help='use the x direction as y direction too')
    directions.add_argument('--idx', default=0, type=int, help='index of the random directions: each '
                            'index draws different ones (seed = index) and gets its own file name')
    add_param_subset_arguments(directions, 'move only the parameters', 'every other direction entry is zero '
                               '(and takes no bytes in the direction file)')
    directions.add_argument('--dir_mode', default='auto', choices=sources.DIR_MODES,
                            help='where the directions live while the grid is computed: resident (held on the '
                            'evaluation device: fastest, 2 model sizes in float32 more memory), stream (each tensor '
                            'read from the direction file at every point), seed (new direction files are written '
                            'in seed form, a recipe of a few kB, and each tensor is regenerated on the device at '
                            'every point; random directions only), auto (default: resident while the directions '
                            f'take at most {sources.RESIDENT_BUDGET * 100:.0f}%% of the free memory, else stream, or seed '
                            'for a seed-form file). A model of B bytes then needs about 4B (resident) or 2B')
    return directions


def add_param_subset_arguments(group, what, rest):
    """--include_params / --exclude_params: which parameters (by name) the directions move, or
    the Hessian is taken over."""
    group.add_argument('--include_params', default='', metavar='GLOB[,GLOB...]',
                       help=f'{what} whose names match one of these fnmatch patterns (state_dict names with '
                       f'--dir_type states), e.g. "transformer.h.1.*" or "*attn*,*mlp*"; {rest}; default: all')
    group.add_argument('--exclude_params', default='', metavar='GLOB[,GLOB...]',
                       help='leave out the parameters matching these patterns; default: none')


def check_directions(parser, args):
    if args.same_dir and not args.y:
        parser.error('--same_dir needs --y (a 2D grid)')
    if args.same_dir and args.model_file3:
        parser.error('--same_dir and --model_file3 both set the y direction; give one')
    if args.idx < 0:
        parser.error('--idx must be 0 or more')
    if args.dir_mode == 'seed' and (args.model_file2 or args.model_file3):
        parser.error('--dir_mode seed makes random directions; a direction towards --model_file2/--model_file3 is '
                     'made from their tensors: use --dir_mode stream (or auto)')
    if args.dir_mode in ('stream', 'seed') and getattr(args, 'points_per_call', 1) > 1:
        parser.error(f'--points_per_call stacks whole directions; drop it or use --dir_mode resident, not {args.dir_mode}')
    if args.dir_file:
        check_file_exists(args.dir_file, '--dir_file')
        if args.include_params or args.exclude_params:
            parser.error('--include_params/--exclude_params shape new directions, but --dir_file gives them as '
                         'they are; drop one of them')


# ----------------------------------------------------------------------------- curves and BatchNorm statistics

def add_curve_arguments(parser):
    curve = parser.add_argument_group('curves and BatchNorm statistics')
    curve.add_argument('--curve_file', default='', help='evaluate along the trained curve of this curve file '
                       '(train_curve.py) instead of along directions: x is the curve\'s t (0: its first end model, '
                       '1: its second; a Bezier curve exists on [0, 1] only), with BatchNorm statistics recomputed at '
                       'every t; --model_file may be left out (it is the curve\'s t = 0 checkpoint). A curve file '
                       'of one bend given as --model_file3 stands for its bend: the plane through its ends and bend')
    curve.add_argument('--recompute_bn', action='store_true', help='recompute the BatchNorm running statistics at '
                       'every point from the training data (one pass in train mode without gradient, as Garipov '
                       'et al. 2018) instead of keeping the centre\'s: between two or three models, each point then '
                       'has statistics of its own weights. Always on with --curve_file; one more pass per point')
    return curve


def check_curve(parser, args):
    """--curve_file and --recompute_bn; runs before check_model, since the curve names the
    default --model_file."""
    if args.recompute_bn and args.dir_type == 'states':
        parser.error('--recompute_bn replaces the statistics that --dir_type states moves; use --dir_type weights')
    if (args.recompute_bn or args.curve_file) and args.points_per_call > 1:
        parser.error('--points_per_call evaluates stacked points without recomputing BatchNorm statistics; '
                     'drop it with --recompute_bn or --curve_file')
    if args.model_file3 and hdf5_layout.is_curve_file(args.model_file3):
        check_curve_plane(parser, args)
    if not args.curve_file:
        return
    if getattr(args, 'model_given', False):
        raise UsageError('curve_file=: evaluate a curve with plot_surface.py --curve_file (its ends are checkpoints)')
    check_file_exists(args.curve_file, '--curve_file')
    record = hdf5_layout.read_curve_file(args.curve_file, '--curve_file')
    for flag in ('y', 'model_file2', 'model_file3', 'dir_file', 'xnorm', 'xignore', 'include_params',
                 'exclude_params'):
        if getattr(args, flag):
            parser.error(f'--curve_file gives the path from end to end, which --{flag} would shape too; drop --{flag}')
    if args.dir_type != 'weights' or args.idx:
        parser.error('--curve_file moves the parameters along the curve and recomputes the statistics: drop '
                     '--dir_type states and --idx')
    xaxis = parse_axis(args.x, '--x')
    if record.curve_type == 'bezier' and (xaxis.min < 0 or xaxis.max > 1):
        parser.error(f'--x={args.x}: a Bezier curve exists for t in [0, 1] only; pass --x within 0:1')
    if record.attrs[hdf5_layout.CURVE_MODEL] != args.model:
        parser.error(f'--curve_file {args.curve_file!r} is a curve of --model {record.attrs[hdf5_layout.CURVE_MODEL]}, '
                     f'not {args.model}')
    start = record.attrs[hdf5_layout.CURVE_START_FILE]
    if not args.model_file:
        check_file_exists(start, f'--curve_file {args.curve_file!r}: its t = 0 checkpoint')
        args.model_file = start   # recorded, so the surface file names its centre
    elif connecting_curves.checkpoint_hash(args.model_file, '--model_file') != record.attrs[hdf5_layout.CURVE_START_HASH]:
        parser.error(f'--model_file {args.model_file!r} is not the curve\'s t = 0 model ({start!r}); leave '
                     '--model_file out, or pass that one')


def check_curve_plane(parser, args):
    """A curve file as --model_file3: the plane of its ends (--model_file, --model_file2) and bend."""
    record = hdf5_layout.read_curve_file(args.model_file3, '--model_file3')
    if record.num_bends != 3:
        parser.error(f'--model_file3 {args.model_file3!r} is a curve of {record.num_bends} control points; the plane '
                     'through its ends and its bend needs one bend (train_curve.py --num_bends 3)')
    if args.dir_type != 'weights' or args.include_params or args.exclude_params:
        parser.error('--model_file3 as a curve file: the plane holds the curve with --dir_type weights and all the '
                     'parameters (add --recompute_bn for models with BatchNorm)')
    for flag, key in (('model_file', hdf5_layout.CURVE_START_HASH), ('model_file2', hdf5_layout.CURVE_END_HASH)):
        path = getattr(args, flag)
        if not path or connecting_curves.checkpoint_hash(path, f'--{flag}') != record.attrs[key]:
            parser.error(f'--model_file3 {args.model_file3!r} is a curve from {record.attrs[hdf5_layout.CURVE_START_FILE]!r} '
                         f'to {record.attrs[hdf5_layout.CURVE_END_FILE]!r}: pass them as --model_file and --model_file2')


# ----------------------------------------------------------------------------- data

def add_data_arguments(parser, batch_size_help='evaluation batch size',
                       eval_test_help='also store test_loss and test_acc (and the objective\'s other values) '
                       'at every point', batch_size_default=128):
    """The data flags; the help of --batch_size and --eval_test may say what they mean to a
    script that trains (train_curve.py). ``batch_size_default`` None: the grid scripts choose it
    with the compute configuration (choosing.py)."""
    data = parser.add_argument_group('data')
    datasets.add_data_arguments(data)
    data.add_argument('--data_split', default=1, type=int, help='use a fixed, seeded 1/K part of the data')
    data.add_argument('--split_idx', default=0, type=int, help='which part (0..K-1) with --data_split K')
    data.add_argument('--batch_size', default=batch_size_default, type=int, help=batch_size_help)
    data.add_argument('--train_labels', default='', help='training labels to use instead of the stored ones, in dataset order '
                      '(train_labels.pt, saved by cifar10.main --label_corrupt_prob)')
    data.add_argument('--eval_test', action='store_true', help=eval_test_help)
    batch_sources.add_data_mode_arguments(data)
    return data


def add_grid_data_arguments(parser):
    """The grid scripts' data flags: --batch_size is chosen with the compute configuration unless
    given; --samples / --target_stderr evaluate every point on a seeded subset (sample_budget.py)."""
    data = add_data_arguments(parser, batch_size_default=None, batch_size_help='evaluation batch size (it changes '
                              'only speed and float rounding: the loss is the mean over the whole data set); '
                              'default: chosen for this machine, see --compute_config (the plain configuration\'s '
                              'is 128, the original code\'s)')
    data.add_argument('--samples', default=None, type=int, metavar='N',
                      help='evaluate every point on the same N training samples, a random subset of the (--data_split '
                      'part of the) training data drawn under --sample_seed and recorded in the surface file (the '
                      'test split of --eval_test: min(N, its size) samples of its own); the standard errors say what '
                      'it costs in precision. Default: all of them')
    data.add_argument('--sample_seed', default=0, type=int, help='the seed of the --samples (or --target_stderr) subset')
    data.add_argument('--target_stderr', default=None, type=float, metavar='R',
                      help='choose --samples at the centre: the smallest of '
                      f'{sample_budget.TARGET_START}, {2 * sample_budget.TARGET_START}, '
                      f'{4 * sample_budget.TARGET_START}, ... (the whole training set last) whose standard error of '
                      'the training loss is at most R times the loss (e.g. 0.01), said in one line and recorded')
    return data


def check_data(parser, args):
    for flag in ('batch_size', 'data_split'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f'--{flag} must be at least 1')
    if args.workers is not None and args.workers < 0:
        parser.error('--workers must be 0 or more')
    if not 0 <= args.split_idx < args.data_split:
        parser.error(f'--split_idx must be in [0, {args.data_split}) for --data_split {args.data_split}')
    check_sampling(parser, args)
    if not isinstance(args.dataset, str):
        return   # a Dataset object handed to api.py
    if args.dataset not in datasets.BUILTIN_DATASETS and not datasets.is_custom(args.dataset):
        raise UsageError(f'unknown --dataset {args.dataset!r}: use one of '
                         f'{", ".join(datasets.BUILTIN_DATASETS)} or package.module:factory')
    if args.train_labels:
        check_file_exists(args.train_labels, '--train_labels')
    if args.dataset == 'cifar10' and not args.download:
        folder = datasets.cifar10_folder(args.datapath)
        if not os.path.isdir(folder):
            raise UsageError(f'--datapath {args.datapath!r} does not exist (add --download to fetch CIFAR-10)')


def check_sampling(parser, args):
    """--samples, --sample_seed and --target_stderr (of the grid scripts). A --samples larger than
    the training data is refused once the data are read (datasets.sample_indices)."""
    samples, target = getattr(args, 'samples', None), getattr(args, 'target_stderr', None)
    if samples is not None and samples < 1:
        parser.error(f'--samples must be at least 1 (got {samples})')
    if target is not None and not (math.isfinite(target) and 0 < target < 1):
        parser.error(f'--target_stderr must be in (0, 1), a relative standard error such as 0.01 (got {target:g})')
    if samples is not None and target is not None:
        parser.error('--samples and --target_stderr both set the number of samples: pass one of them')
    if getattr(args, 'sample_seed', 0) < 0:
        parser.error('--sample_seed must be 0 or more')


# ----------------------------------------------------------------------------- output

def add_output_arguments(parser):
    output = parser.add_argument_group('output')
    output.add_argument('--surf_file', default='', help='surface file (default: derived from the direction '
                        'file name and the grid, as the original code)')
    return output


def check_output(parser, args):
    if args.surf_file:
        check_output_folder(args.surf_file, '--surf_file')
        if os.path.exists(args.surf_file):
            hdf5_layout.read_surface(args.surf_file)  # a damaged or foreign file is refused, untouched


# ----------------------------------------------------------------------------- compute

DEVICE_MAPS = ('auto',)   # --device_map: accelerate's placement of a model over the devices


def add_compute_arguments(parser):
    compute = parser.add_argument_group('compute')
    compute.add_argument('--mpi', action='store_true', help='run under mpiexec: ranks share the points, rank 0 writes')
    compute.add_argument('--cuda', action='store_true', help='evaluate on GPU (each rank takes GPU node-local-rank %% GPU count)')
    compute.add_argument('--ngpu', default=1, type=int, help='GPUs of a serial run (DataParallel when > 1); under '
                         '--mpi each rank takes one GPU, so launch one rank per GPU')
    compute.add_argument('--compute_config', default='auto', choices=configuration.MODES,
                         help='how --channels_last, --fold_bn and --batch_size are chosen where they are not given. '
                         'auto (default): as an existing surface file records them (so a resumed run computes as the '
                         'first one did), else the fastest on this machine: as an earlier run of the same model and data '
                         'on this machine timed it (kept in $LANDSCAPE_CACHE_DIR, default ~/.cache/loss-landscape; set '
                         'it empty to keep nothing), else timed on a few batches of the data at the centre when the run '
                         'is long enough to pay for the timing, else plain; search: timed even for short runs, and '
                         'the cached timing replaced; plain: the suite\'s former defaults (NCHW, batch 128, unfolded: the '
                         'original code\'s arithmetic). A timed choice keeps the loss within '
                         f'{timing_search.VALUE_RTOL:g} relative of the plain one on the probe batches; the choice '
                         'is printed in one line and recorded in the surface file. plot_hessian_eigen.py times the '
                         'batch size alone, by Hessian-vector products (NCHW and unfolded unless given)')
    compute.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=None,
                         help='NHWC memory layout for the model and the images (faster convolutions on many CPUs and '
                         'GPUs; changes float rounding); --no-channels_last: NCHW; default: chosen, see '
                         '--compute_config')
    compute.add_argument('--fold_bn', action=argparse.BooleanOptionalAction, default=None,
                         help='fold each BatchNorm into the convolution before it and, on the CPU, fuse each '
                         'convolution with the ReLU (and residual addition) after it (the folded weights are '
                         'recomputed at every point, so any --dir_type works; exact up to float rounding; the model '
                         'must be traceable by torch.fx); --no-fold_bn: evaluate the model as it is; default: '
                         'chosen, see --compute_config')
    compute.add_argument('--points_per_call', default=1, type=int, help='evaluate this many grid points in one '
                         'batched forward pass (torch.vmap over stacked weights), meant for small models that leave a '
                         'GPU idle; slower on CPU; K times the activation memory; a kill loses up to K points in flight; '
                         'may change float rounding; built-in losses only (default %(default)s: one point at a time)')
    compute.add_argument('--amp', action='store_true', help='bfloat16 autocast for the forward pass (the loss stays '
                         'float32): faster on GPUs with bf16 tensor cores and on CPUs with bf16 instructions '
                         '(AVX512-BF16, AMX), best with BatchNorm folded and channels_last (which the automatic choice '
                         'then times); far slower on CPUs without them; moves the loss by about 1e-3 relative '
                         '(benchmarks/RESULTS.md), so it is never chosen automatically')
    compute.add_argument('--compile', action='store_true', help='torch.compile the model once per rank (tens of '
                         'seconds up front, then faster points: worth it on large grids; needs a C++ compiler)')
    compute.add_argument('--threads', default=None, type=int, help='CPU threads per rank (torch.set_num_threads); '
                         'default: the node\'s cores divided among its ranks')
    compute.add_argument('--device_map', default=None, choices=DEVICE_MAPS, help='auto: a Hugging Face folder\'s '
                         'model (--model_file FOLDER) larger than one GPU, spread over the GPUs (and the CPU) by '
                         'accelerate; every tensor is moved, and its directions read or made, on its own device. '
                         'Evaluated as it is (the plain configuration: no timing, folding or compiling); one process')
    return compute


def check_device_map(parser, args):
    """--device_map: a folder's model, one process, evaluated as it is."""
    if not getattr(args, 'device_map', None):
        return
    if not (args.model_file and os.path.isdir(args.model_file)) or args.model:
        parser.error('--device_map spreads a Hugging Face folder\'s model: give --model_file FOLDER without --model')
    for flag in ('mpi', 'compile', 'fold_bn', 'channels_last', 'curve_file'):
        if getattr(args, flag, None):
            parser.error(f'--device_map evaluates the spread model as it is, in one process: drop --{flag}')
    if args.ngpu > 1 or args.points_per_call > 1:
        parser.error('--device_map places the model itself: drop --ngpu and --points_per_call')
    args.compute_config = 'plain'
    args.fold_bn = args.channels_last = False


def check_compute(parser, args):
    check_device_map(parser, args)
    for flag in ('ngpu', 'points_per_call'):
        if getattr(args, flag) < 1:
            parser.error(f'--{flag} must be at least 1')
    if args.points_per_call > 1:
        for flag in ('fold_bn', 'compile'):
            if getattr(args, flag):
                parser.error(f'--points_per_call evaluates the unfolded, uncompiled model; drop --{flag} or '
                             '--points_per_call')
        if args.ngpu > 1:
            parser.error('--points_per_call and --ngpu > 1: batch points on one GPU per rank, or use DataParallel')
        if not objective.resolve(args.loss_name).supports_stacked_points:
            parser.error(f'--points_per_call batches the built-in losses ({", ".join(objective.CLASSIFICATION_LOSSES)}) '
                         f'only, not --loss_name {args.loss_name}')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be at least 1')
    if args.ngpu > 1 and not args.cuda:
        parser.error('--ngpu > 1 needs --cuda')
    if args.mpi and args.ngpu > 1:
        parser.error('--mpi with --ngpu > 1: each MPI rank takes one GPU; launch one rank per GPU '
                     '(mpiexec -n <GPUs> ... --mpi --cuda) instead')


# ----------------------------------------------------------------------------- plots

def add_plot_arguments(parser, loss_plots=True):
    """--plot and --show; with ``loss_plots`` also the loss contours' and curves' options."""
    plot = parser.add_argument_group('plot')
    plot.add_argument('--plot', action='store_true', help='draw the surface when done (PNG and PDF beside it)')
    if loss_plots:
        plot.add_argument('--proj_file', default='', help='trajectory projection file to draw on the 2D contour')
        plot.add_argument('--vmin', default=0.1, type=float, help='lowest contour level')
        plot.add_argument('--vmax', default=10, type=float, help='contour levels stop below this value')
        plot.add_argument('--vlevel', default=0.5, type=float, help='spacing of contour levels')
        plot.add_argument('--loss_max', default=5, type=float, help='upper limit of the loss axis (1D)')
        plot.add_argument('--log', action='store_true', help='logarithmic loss axis (1D)')
    plot.add_argument('--show', action='store_true', help='open the figures in a window')
    return plot


def check_plot(parser, args):
    """What --plot will draw must be drawable: found out now, not after hours of grid points."""
    if getattr(args, 'proj_file', ''):
        if not (args.plot and args.y):
            parser.error('--proj_file is drawn on the contours that --plot draws for a 2D grid: add --plot and --y, '
                         'or draw it later with plot_2D.py --proj_file')
        check_file_exists(args.proj_file, '--proj_file')
        hdf5_layout.read_projection_file(args.proj_file)
    if not getattr(args, 'plot', False):   # api.py draws nothing
        return
    xaxis, yaxis = parse_axis(args.x, '--x'), parse_axis(args.y, '--y') if args.y else None
    if yaxis is None and xaxis.num < 2:
        parser.error(f'--plot draws a curve, which needs at least 2 points: --x has {xaxis.num}')
    if yaxis is not None and min(xaxis.num, yaxis.num) < 2:
        parser.error(f'--plot draws contours, which need at least 2 points on each axis: '
                     f'--x has {xaxis.num}, --y {yaxis.num}')
    if not hasattr(args, 'vmin'):
        return   # plots without the loss-plot options
    if yaxis is not None:
        common.contour_levels(args.vmin, args.vmax, args.vlevel)
    elif not (math.isfinite(args.loss_max) and args.loss_max > 0):
        parser.error(f'--loss_max must be a positive number (got {args.loss_max:g})')


# ----------------------------------------------------------------------------- hessian

def add_hessian_arguments(parser):
    """plot_hessian_eigen.py's own flags (and landscape.hessian_eigen's keywords)."""
    eigen = parser.add_argument_group('hessian')
    eigen.add_argument('--eig_tol', default=hessian.DEFAULT_EIG_TOL, type=float,
                       help='stopping tolerance of each solve. Cold (ARPACK\'s Lanczos): residual <= tol x Ritz '
                       'value (the smallest eigenvalue is solved shifted, so its error is about '
                       'tol x (1.1 max_eig - min_eig)); warm: both residuals <= tol x |max_eig|. Either way each '
                       'value lies within tol x |max_eig| of an eigenvalue (default %(default)s, as the original)')
    eigen.add_argument('--eig_solver', default=None, choices=hessian.EIG_SOLVERS,
                       help='warm (default): each rank walks its points in serpentine order, a chain of '
                       'neighbours; the first point of a chain is solved cold, every later one from the '
                       'eigenvectors of the point before (a block Krylov space that stops on explicit '
                       'residuals: about a third of the cold products on the digits CNN), falling back to the '
                       'cold solve where it does not converge within 2 x --eig_ncv products. cold: every point '
                       'by ARPACK from the same seeded start vector, as before, so resumed and MPI runs equal '
                       'a serial one bit for bit (warm: within --eig_tol; see README). The surface\'s eig_solve '
                       'says how each point was solved')
    eigen.add_argument('--eig_maxiter', default=hessian.DEFAULT_EIG_MAXITER, type=int,
                       help='most ARPACK restarts per cold solve (each costs about --eig_ncv Hessian-vector '
                       'products); a point that does not converge stores NaN (default %(default)s)')
    eigen.add_argument('--eig_ncv', default=hessian.DEFAULT_EIG_NCV, type=int,
                       help='Lanczos vectors per restart of a cold solve (which costs at least ncv + 1 products '
                       'per eigenvalue), and the most vectors a warm solve keeps; larger is more robust '
                       '(default %(default)s)')
    eigen.add_argument('--warm_start', action=argparse.BooleanOptionalAction, default=None,
                       help='the former switch, kept for old command lines: --warm_start is --eig_solver warm '
                       '(now the default), --no-warm_start is --eig_solver cold')
    eigen.add_argument('--trace', action='store_true',
                       help='also store a Hutchinson estimate of the Hessian trace at every point')
    eigen.add_argument('--trace_samples', default=hessian.DEFAULT_TRACE_SAMPLES, type=int,
                       help='Rademacher vectors per trace estimate, seeded by the point index '
                       '(default %(default)s)')
    eigen.add_argument('--ratio_max', default=1.0, type=float,
                       help='upper limit of the |min_eig / max_eig| axis of the 1D --plot (default %(default)s)')
    return eigen


def check_hessian(parser, args):
    if args.eval_test:
        parser.error('--eval_test: eigenvalues are of the training loss only; '
                     'compute test_loss with plot_surface.py (it can share the surface file)')
    if args.compile:
        parser.error('--compile: torch.compile does not support the double back-propagation of '
                     'Hessian-vector products')
    if args.points_per_call > 1:
        parser.error('--points_per_call: Hessian eigenvalues are solved one point at a time')
    if getattr(args, 'device_map', None):
        parser.error('--device_map: the eigenvalue solver works on vectors of one device; spread models are '
                     'for plot_surface.py')
    if args.amp:
        parser.error('--amp: Hessian-vector products need float32 (bfloat16 rounding swamps the small eigenvalues)')
    if args.fold_bn:
        parser.error('--fold_bn: the Hessian is taken with respect to the unfolded weights; run without it')
    if not (np.isfinite(args.eig_tol) and 0 < args.eig_tol < 1):
        parser.error('--eig_tol must be in (0, 1)')
    if args.eig_maxiter < 1:
        parser.error('--eig_maxiter must be at least 1')
    if args.eig_ncv < 2:
        parser.error('--eig_ncv must be at least 2 (ARPACK needs more vectors than eigenvalues)')
    from_switch = None if args.warm_start is None else ('warm' if args.warm_start else 'cold')
    if args.eig_solver and from_switch and args.eig_solver != from_switch:
        parser.error(f'--eig_solver {args.eig_solver} and --{"" if args.warm_start else "no-"}warm_start disagree; '
                     'give one of them')
    # Resolved here, so the surface file's recorded arguments say which solver ran.
    args.eig_solver = args.eig_solver or from_switch or 'warm'
    if args.trace_samples < 1:
        parser.error('--trace_samples must be at least 1')
    if not (np.isfinite(args.ratio_max) and args.ratio_max > 0):
        parser.error('--ratio_max must be a positive number')


def solver_settings(args):
    return hessian.SolverSettings(tol=args.eig_tol, maxiter=args.eig_maxiter, ncv=args.eig_ncv,
                                  solver=args.eig_solver, trace_samples=args.trace_samples if args.trace else 0)


# ----------------------------------------------------------------------------- composing

# (adder, checker) in the order the checks run: cheap argument logic first, then files.
GRID_SCRIPT_GROUPS = ((add_grid_arguments, check_grid), (add_compute_arguments, check_compute),
                      (add_direction_arguments, check_directions), (add_grid_data_arguments, check_data),
                      (add_curve_arguments, check_curve), (add_model_arguments, check_model),
                      (add_output_arguments, check_output))
# Declared in this order, so --help reads grid, model, directions, curves, data, output, compute.
HELP_ORDER = (add_grid_arguments, add_model_arguments, add_direction_arguments, add_curve_arguments,
              add_grid_data_arguments, add_output_arguments, add_compute_arguments)


def add_grid_script_arguments(parser):
    for add in HELP_ORDER:
        add(parser)


def validate(parser, args, extra_checks=()):
    """Every shared group's checks, then ``extra_checks`` (a script's own), before any work."""
    choose_model_and_loss(parser, args)
    for _, check in GRID_SCRIPT_GROUPS:
        check(parser, args)
    check_plot(parser, args)
    for check in extra_checks:
        check(parser, args)
