"""Loss and accuracy on a 1D or 2D grid around a trained model, stored in an HDF5 surface file.

Along filter-normalized random directions (Li et al., NeurIPS 2018), or between two or three
trained models. Serial, or in parallel under MPI:

    python plot_surface.py --dataset digits --model cnn_bn --model_file demo_out/model.t7 \\
        --x=-1:1:21 --y=-1:1:21 --xnorm filter --xignore biasbn --ynorm filter --yignore biasbn --plot
    mpiexec -n 4 python plot_surface.py --mpi --cuda ...     (one GPU per rank, spread per node)

Rerunning the same command resumes: only missing points are computed. The file layout is
documented in hdf5_layout.py.
"""
import math
import os
import sys

import dataloader
import evaluation
import hdf5_layout
import model_loader
import net_plotter
import plot_common
import point_batching
from cli import ArgumentParser, UsageError, check_file_exists, check_output_folder, run_main
from grid import parse_axis
from mpi_comm import get_comm
from run_setup import prepare_run
from surface_engine import run_grid


def get_args_parser(add_help=True, loss_plot_options=True):
    """The parser; plot_hessian_eigen.py reuses it without the loss plots' options
    (``loss_plot_options=False``), which its own plots do not use."""
    parser = ArgumentParser('plot_surface.py', add_help=add_help, description=__doc__.split('\n\n')[0])

    grid = parser.add_argument_group('grid')
    grid.add_argument('--x', default='-1:1:51', help='x range and resolution MIN:MAX:NUM, e.g. --x=-1:1:51 '
                      '(write --x=-1:1:51 with "=" when MIN is negative; NUM 1 is the point MIN alone, '
                      'as in the original)')
    grid.add_argument('--y', default=None, help='y range MIN:MAX:NUM for a 2D surface; omit for 1D')

    model = parser.add_argument_group('model')
    model.add_argument('--model', default='resnet56', help='a model of the dataset\'s zoo (e.g. resnet56, '
                       'vgg9; digits: mlp, cnn, cnn_bn) or package.module:factory returning an nn.Module')
    model.add_argument('--model_file', default='', help='checkpoint of the trained model (the surface centre, '
                       'x=0, y=0): a dict with "state_dict" or a bare state_dict')
    model.add_argument('--model_file2', default='', help='second checkpoint: x direction = model2 - model1, '
                       'a linear interpolation with the two minimizers at x=0 and x=1')
    model.add_argument('--model_file3', default='', help='third checkpoint: y direction = model3 - model1')
    evaluation.add_loss_argument(model)

    directions = parser.add_argument_group('directions')
    directions.add_argument('--dir_file', default='', help='reuse this direction file instead of making one')
    directions.add_argument('--dir_type', default='weights', choices=net_plotter.DIR_TYPES,
                            help='weights: move the parameters (BN statistics stay as trained); '
                            'states: move the whole state_dict, BN running statistics included')
    for axis in 'xy':
        directions.add_argument(f'--{axis}norm', default=None, choices=net_plotter.NORMS,
                                help=f'normalization of the {axis} direction: filter (the paper\'s), layer, '
                                'weight, dfilter, dlayer; default none')
        directions.add_argument(f'--{axis}ignore', default=None, choices=net_plotter.IGNORES,
                                help=f'biasbn: zero {axis} direction for biases and BN parameters (dim <= 1)')
    directions.add_argument('--same_dir', action='store_true', help='use the x direction as y direction too')
    directions.add_argument('--idx', default=0, type=int, help='index of the random directions: each '
                            'index draws different ones (seed = index) and gets its own file name')

    data = parser.add_argument_group('data')
    dataloader.add_data_arguments(data)
    data.add_argument('--data_split', default=1, type=int, help='evaluate on a fixed, seeded 1/K part of the data')
    data.add_argument('--split_idx', default=0, type=int, help='which part (0..K-1) with --data_split K')
    data.add_argument('--batch_size', default=128, type=int, help='evaluation batch size')
    data.add_argument('--train_labels', default='', help='training labels to evaluate with, in dataset order '
                      '(train_labels.pt, saved by cifar10.main --label_corrupt_prob)')
    data.add_argument('--eval_test', action='store_true', help='also store test_loss and test_acc at every point')

    output = parser.add_argument_group('output')
    output.add_argument('--surf_file', default='', help='surface file (default: derived from the direction '
                        'file name and the grid, as the original code)')

    compute = parser.add_argument_group('compute')
    compute.add_argument('--mpi', action='store_true', help='run under mpiexec: ranks share the points, rank 0 writes')
    compute.add_argument('--cuda', action='store_true', help='evaluate on GPU (each rank takes GPU node-local-rank %% GPU count)')
    compute.add_argument('--ngpu', default=1, type=int, help='GPUs of a serial run (DataParallel when > 1); under --mpi each rank takes one GPU, so launch one rank per GPU')
    compute.add_argument('--channels_last', action='store_true', help='NHWC memory layout for the model and the '
                         'resident images (faster convolutions on some CPUs and GPUs; see benchmarks/RESULTS.md)')
    compute.add_argument('--fold_bn', action='store_true', help='fold each BatchNorm into the convolution before it '
                         '(the folded weights are recomputed at every point, so any --dir_type works; exact up to '
                         'float rounding; the model must be traceable by torch.fx)')
    compute.add_argument('--points_per_call', default=1, type=int, help='evaluate this many grid points in one '
                         'batched forward pass (torch.vmap over stacked weights), meant for small models that leave a '
                         'GPU idle; slower on CPU; K times the activation memory; a kill loses up to K points in flight; '
                         'may change float rounding (default %(default)s: one point at a time)')
    compute.add_argument('--amp', action='store_true', help='bfloat16 autocast for the forward pass (the loss stays '
                         'float32): faster on GPUs with bf16 tensor cores, slower on CPUs without bf16 instructions; '
                         'moves the loss by about 1e-3 relative (benchmarks/RESULTS.md)')
    compute.add_argument('--compile', action='store_true', help='torch.compile the model once per rank (tens of '
                         'seconds up front, then faster points: worth it on large grids; needs a C++ compiler)')
    compute.add_argument('--threads', default=None, type=int, help='CPU threads per rank (torch.set_num_threads); '
                         'default: the node\'s cores divided among its ranks')

    plot = parser.add_argument_group('plot')
    plot.add_argument('--plot', action='store_true', help='draw the surface when done (PNG and PDF beside it)')
    if loss_plot_options:
        plot.add_argument('--proj_file', default='', help='trajectory projection file to draw on the 2D contour')
        plot.add_argument('--vmin', default=0.1, type=float, help='lowest contour level')
        plot.add_argument('--vmax', default=10, type=float, help='contour levels stop below this value')
        plot.add_argument('--vlevel', default=0.5, type=float, help='spacing of contour levels')
        plot.add_argument('--loss_max', default=5, type=float, help='upper limit of the loss axis (1D)')
        plot.add_argument('--log', action='store_true', help='logarithmic loss axis (1D)')
    plot.add_argument('--show', action='store_true', help='open the figures in a window')
    return parser


def validate_args(parser, args):
    """Reject every bad argument before any expensive work (data, models, directions)."""
    parse_axis(args.x, '--x')
    if args.y:
        parse_axis(args.y, '--y')
    if args.same_dir and not args.y:
        parser.error('--same_dir needs --y (a 2D grid)')
    if args.model_file3 and not args.y:
        parser.error('--model_file3 sets the y direction, so it needs --y')
    if args.same_dir and args.model_file3:
        parser.error('--same_dir and --model_file3 both set the y direction; give one')
    for flag in ('batch_size', 'data_split', 'ngpu', 'points_per_call'):
        if getattr(args, flag) < 1:
            parser.error(f'--{flag} must be at least 1')
    if args.points_per_call > 1:
        for flag in ('fold_bn', 'compile'):
            if getattr(args, flag):
                parser.error(f'--points_per_call evaluates the unfolded, uncompiled model; drop --{flag} or '
                             '--points_per_call')
        if args.ngpu > 1:
            parser.error('--points_per_call and --ngpu > 1: batch points on one GPU per rank, or use DataParallel')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be at least 1')
    if args.mpi and args.ngpu > 1:
        # DataParallel would span GPUs 0..ngpu-1 on every rank, not the rank's own GPU.
        parser.error('--mpi with --ngpu > 1: each MPI rank takes one GPU; launch one rank per GPU '
                     '(mpiexec -n <GPUs> ... --mpi --cuda) instead')
    if args.ngpu > 1 and not args.cuda:
        parser.error('--ngpu > 1 needs --cuda')
    if getattr(args, 'proj_file', '') and not (args.plot and args.y):
        parser.error('--proj_file is drawn on the contours that --plot draws for a 2D grid: add --plot and --y, '
                     'or draw it later with plot_2D.py --proj_file')
    if args.idx < 0:
        parser.error('--idx must be 0 or more')
    if not 0 <= args.split_idx < args.data_split:
        parser.error(f'--split_idx must be in [0, {args.data_split}) for --data_split {args.data_split}')
    if args.dataset not in dataloader.BUILTIN_DATASETS and not dataloader.is_custom(args.dataset):
        raise UsageError(f'unknown --dataset {args.dataset!r}: use one of '
                         f'{", ".join(dataloader.BUILTIN_DATASETS)} or package.module:factory')
    model_loader.check_model_name(args.dataset, args.model)
    if not args.model_file:
        parser.error('--model_file is required: the checkpoint at the centre of the surface')
    for flag in ('model_file', 'model_file2', 'model_file3', 'dir_file', 'proj_file', 'train_labels'):
        if getattr(args, flag, ''):
            check_file_exists(getattr(args, flag), f'--{flag}')
    if getattr(args, 'proj_file', ''):
        hdf5_layout.read_projection_file(args.proj_file)
    if args.dataset == 'cifar10' and not args.download:
        folder = dataloader.cifar10_folder(args.datapath)
        if not os.path.isdir(folder):
            raise UsageError(f'--datapath {args.datapath!r} does not exist (add --download to fetch CIFAR-10)')
    if args.surf_file:
        check_output_folder(args.surf_file, '--surf_file')
        if os.path.exists(args.surf_file):
            hdf5_layout.read_surface(args.surf_file)  # a damaged or foreign file is refused, untouched
    if args.plot:
        validate_plot_args(parser, args)


def validate_plot_args(parser, args):
    """What --plot will draw must be drawable: found out now, not after hours of grid points."""
    xaxis, yaxis = parse_axis(args.x, '--x'), parse_axis(args.y, '--y') if args.y else None
    if yaxis is None and xaxis.num < 2:
        parser.error(f'--plot draws a curve, which needs at least 2 points: --x has {xaxis.num}')
    if yaxis is not None and min(xaxis.num, yaxis.num) < 2:
        parser.error(f'--plot draws contours, which need at least 2 points on each axis: '
                     f'--x has {xaxis.num}, --y {yaxis.num}')
    if not hasattr(args, 'vmin'):
        return   # plot_hessian_eigen.py: its plots take no loss-plot options
    if yaxis is not None:
        plot_common.contour_levels(args.vmin, args.vmax, args.vlevel)
    elif not (math.isfinite(args.loss_max) and args.loss_max > 0):
        parser.error(f'--loss_max must be a positive number (got {args.loss_max:g})')


def surface_names(args):
    names = [hdf5_layout.TRAIN_LOSS, hdf5_layout.TRAIN_ACC]
    if args.eval_test:
        names += [hdf5_layout.TEST_LOSS, hdf5_layout.TEST_ACC]
    return names


def make_points_evaluator(run):
    """evaluate_points([(k, names), ...]): the losses and accuracies at grid points k (at least
    ``names``, the values each point misses), one point at a time (moving the model), or with
    --points_per_call > 1 all of them in one batched pass."""
    args = run.args
    datasets = [(prefix, data) for prefix, data in (('train', run.train_data), ('test', run.test_data))
                if data is not None]

    def needed_datasets(names):
        # A data set is evaluated when any of its two values is missing (they come from one pass).
        return [(prefix, data) for prefix, data in datasets
                if {f'{prefix}_loss', f'{prefix}_acc'} & set(names)]

    def evaluate_point(k, names):
        run.move_to(k)
        values = {}
        for prefix, data in needed_datasets(names):
            loss, acc = evaluation.evaluate(run.eval_net, data, args.loss_name, args.batch_size, args.amp)
            values[f'{prefix}_loss'], values[f'{prefix}_acc'] = loss, acc
        return values

    if args.points_per_call == 1:
        return lambda points: [evaluate_point(k, names) for k, names in points]
    stack = point_batching.StackedPoints(run.net, args.dir_type, run.base, run.xdirection, run.ydirection)

    def evaluate_points(points):
        coords = [run.grid.point(k) for k, _ in points]
        tensors = stack.stacked([(x, 0.0 if y is None else y) for x, y in coords])
        values = [{} for _ in points]
        for prefix, data in needed_datasets([n for _, names in points for n in names]):
            results = point_batching.evaluate_stacked(run.net, tensors, data, args.loss_name, args.batch_size, args.amp)
            for point, (loss, acc) in zip(values, results):
                point[f'{prefix}_loss'], point[f'{prefix}_acc'] = loss, acc
        return values
    return evaluate_points


def plot_results(args, run):
    """Draw what plot_1D / plot_2D draw for this surface (rank 0 only)."""
    if not run.grid.is_2d:
        import plot_1D
        return plot_1D.plot_1d_loss_err(run.surf_file, xmin=run.grid.x.min, xmax=run.grid.x.max,
                                        loss_max=args.loss_max, log=args.log, show=args.show)
    import plot_2D
    paths = plot_2D.plot_2d_contour(run.surf_file, surf_name=hdf5_layout.TRAIN_LOSS, vmin=args.vmin,
                                    vmax=args.vmax, vlevel=args.vlevel, show=args.show)
    if args.proj_file:
        paths += plot_2D.plot_contour_trajectory(run.surf_file, run.dir_file, args.proj_file,
                                                 surf_name=hdf5_layout.TRAIN_LOSS, vmin=args.vmin,
                                                 vmax=args.vmax, vlevel=args.vlevel, show=args.show)
    return paths


def report(summary, run):
    counts = ', '.join(f'{n}: {c}' for n, c in summary['diverged'].items())
    state = 'complete' if summary['complete'] else 'incomplete'
    # With 'states' directions a point can also be NaN without any divergence: extrapolating past a
    # model (x > 1 between two models, say) can drive BatchNorm running variances negative.
    why = 'diverged, or a BatchNorm running variance went negative' if run.args.dir_type == 'states' else 'diverged'
    print(f'{run.surf_file}: {summary["computed"]} points computed in {summary["seconds"]:.2f} s, '
          f'surface {state}' + (f'; inf/NaN points ({why}): {counts}' if counts else ''), flush=True)


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    comm = get_comm(args.mpi)
    run = prepare_run(args, comm, surface_names(args))
    if comm.is_root and (args.model_file2 or args.model_file3) and args.dir_type == 'weights' \
            and net_plotter.has_statistics(run.net):
        print('warning: --dir_type weights keeps the first model\'s BatchNorm statistics, so x = 1 is not the '
              'second model; use --dir_type states to interpolate whole models', file=sys.stderr, flush=True)
    summary = run_grid(comm, run.grid, run.open_writer, make_points_evaluator(run), desc='loss surface',
                       points_per_call=args.points_per_call)
    if comm.is_root:
        report(summary, run)
        if args.plot:
            plot_results(args, run)   # the plot modules say what they wrote
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
