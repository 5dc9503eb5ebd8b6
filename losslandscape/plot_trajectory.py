"""Plot the optimizer's path in the plane of the two principal directions of its checkpoints.

    python plot_trajectory.py --dataset digits --model cnn_bn --max_epoch 20 \\
        --model_folder trained_nets/cnn_bn_sgd_lr=0.1_bs=128_wd=0.0005_mom=0.9_save_epoch=1

Checkpoints PREFIX<epoch>SUFFIX for epoch = START_EPOCH, START_EPOCH + SAVE_EPOCH, ... and always
MAX_EPOCH, the final model. Each is the point checkpoint - final in weight space ('weights':
parameters; 'states': the whole state_dict, BatchNorm statistics included); PCA of these points
gives two directions, written as MODEL_FOLDER/PCA_<dir_type>[_ignore=biasbn]_save_epoch=<n>/
directions.h5 (or --dir_file is used instead), and the projected path as <dir_file>_proj_<method>.h5
with a plot beside it (.pdf/.png). To draw the path on the loss contours, compute a surface along the
same directions around the final model:

    python plot_surface.py --model_file <final checkpoint> --dir_file <directions.h5> \\
        --x=-XMAX:XMAX:21 --y=-YMAX:YMAX:21 --proj_file <proj file> --plot   (this script prints a range)

The contour under the path is the final model's landscape: the other checkpoints sit at their
projections, not on that surface. --eval stores each checkpoint's own training loss and accuracy
(its weights and BatchNorm statistics) in the projection file.
"""
import collections.abc
import os
import shlex

import numpy as np
import torch

from losslandscape.cli.parsing import ArgumentParser, check_file_exists, run_as_script
from losslandscape.data import batch_sources, datasets
from losslandscape.directions import normalization, projection, subsets
from losslandscape.engine import progress
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout
from losslandscape.models import loading
from losslandscape.objectives import objective
from losslandscape.parallel.mpi_comm import select_device

PCA_FILE_NAME = 'directions.h5'


def get_args_parser(add_help=True):
    parser = ArgumentParser('plot_trajectory.py', add_help=add_help, description=__doc__.split('\n\n')[0])
    models = parser.add_argument_group('checkpoints')
    models.add_argument('--model', default='resnet56', help="a model of the dataset's zoo or package.module:factory")
    models.add_argument('--model_folder', default='', help='folder holding the checkpoints (python -m cifar10.main writes one)')
    models.add_argument('--prefix', default='model_', help='checkpoint file name before the epoch')
    models.add_argument('--suffix', default='.t7', help='checkpoint file name after the epoch')
    models.add_argument('--start_epoch', default=0, type=int, help='first epoch of the path')
    models.add_argument('--max_epoch', default=300, type=int, help='last epoch: the final model, at (0, 0)')
    models.add_argument('--save_epoch', default=1, type=int, help='epochs between the checkpoints used')

    directions = parser.add_argument_group('directions')
    directions.add_argument('--dir_type', default='weights', choices=subsets.DIR_TYPES,
                            help='weights: parameters only; states: the whole state_dict (BN statistics too)')
    directions.add_argument('--ignore', default=None, choices=normalization.IGNORES,
                            help='biasbn: leave biases and BN parameters (dim <= 1) out of the PCA and the directions')
    directions.add_argument('--dir_file', default='', help='project on the directions of this file instead of PCA ones')
    directions.add_argument('--proj_method', default='cos', choices=projection.PROJ_METHODS,
                            help="cos: <d, dx>/||dx|| per axis (the original's; exact for PCA directions); "
                            'lstsq: least squares, for directions that are not orthogonal')

    evaluate = parser.add_argument_group('evaluation (--eval)')
    evaluate.add_argument('--eval', action='store_true', help="store each checkpoint's own training loss and "
                          'accuracy in the projection file (it colours the path)')
    datasets.add_data_arguments(evaluate)   # --dataset also picks the model zoo without --eval
    batch_sources.add_data_mode_arguments(evaluate)
    objective.add_loss_argument(evaluate)
    evaluate.add_argument('--batch_size', default=128, type=int, help='evaluation batch size')
    evaluate.add_argument('--cuda', action='store_true', help='evaluate on the GPU')
    evaluate.add_argument('--threads', default=None, type=int, help='CPU threads (torch.set_num_threads)')
    return parser


def validate_args(args):
    if not args.model_folder:
        raise UsageError('--model_folder is required: the folder holding the checkpoints')
    if args.dir_file and args.ignore:
        raise UsageError('--ignore shapes the PCA directions, but --dir_file gives the directions as they are; '
                         'drop one of them')
    if not os.path.isdir(args.model_folder):
        raise UsageError(f'--model_folder {args.model_folder!r} is not a folder')
    if args.start_epoch < 0:
        raise UsageError(f'--start_epoch must be 0 or more (got {args.start_epoch})')
    if args.max_epoch < args.start_epoch:
        raise UsageError(f'--max_epoch {args.max_epoch} is before --start_epoch {args.start_epoch}')
    for flag in ('save_epoch', 'batch_size'):
        if getattr(args, flag) < 1:
            raise UsageError(f'--{flag} must be at least 1 (got {getattr(args, flag)})')
    if args.threads is not None and args.threads < 1:
        raise UsageError('--threads must be at least 1')
    select_device(args.cuda)   # UsageError without a GPU
    if args.dataset not in datasets.BUILTIN_DATASETS and not datasets.is_custom(args.dataset):
        raise UsageError(f'unknown --dataset {args.dataset!r}: use one of '
                         f'{", ".join(datasets.BUILTIN_DATASETS)} or package.module:factory')
    loading.check_model_name(args.dataset, args.model)
    if args.dir_file:
        check_file_exists(args.dir_file, '--dir_file')
    if args.workers is not None and args.workers < 0:
        raise UsageError('--workers must be 0 or more')
    if args.eval:
        objective.check_loss_name(args.loss_name)


def checkpoint_epochs(start_epoch, max_epoch, save_epoch):
    """start, start + save_epoch, ... up to max_epoch, which is always last (the final model)."""
    epochs = list(range(start_epoch, max_epoch + 1, save_epoch))
    if epochs[-1] != max_epoch:
        epochs.append(max_epoch)
    return epochs


def checkpoint_files(args):
    """(epochs, paths) of the checkpoints; UsageError naming the first that is missing."""
    epochs = checkpoint_epochs(args.start_epoch, args.max_epoch, args.save_epoch)
    paths = [os.path.join(args.model_folder, f'{args.prefix}{epoch}{args.suffix}') for epoch in epochs]
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f'checkpoint {path!r} does not exist (check --model_folder, --prefix, --suffix, '
                             '--start_epoch, --max_epoch, --save_epoch)')
    return epochs, paths


def surface_command(args, final_model, dir_file, proj_file, proj_x, proj_y):
    """The plot_surface.py command whose contours lie under the projected path: same model, data
    and labels as the path (a --label_corrupt_prob run's saved labels, which --eval used too)."""
    q = shlex.quote
    command = (f'python plot_surface.py --dataset {q(args.dataset)} --model {q(args.model)} '
               f'--model_file {q(final_model)} --dir_type {args.dir_type} --dir_file {q(dir_file)} '
               f'{suggest_grid(proj_x, proj_y)} --proj_file {q(proj_file)} --plot')
    if args.datapath != get_args_parser().get_default('datapath'):
        command += f' --datapath {q(args.datapath)}'
    if args.raw_data:
        command += ' --raw_data'
    if args.loss_name != get_args_parser().get_default('loss_name'):
        command += f' --loss_name {args.loss_name}'
    labels_file = os.path.join(args.model_folder, datasets.TRAIN_LABELS_FILE)
    if os.path.isfile(labels_file):
        command += f' --train_labels {q(labels_file)}'
    return command


def name_pca_dir_file(args):
    """The original's name: MODEL_FOLDER/PCA_<dir_type>[_ignore=biasbn]_save_epoch=<n>/directions.h5."""
    folder = f'PCA_{args.dir_type}'
    if args.ignore:
        folder += f'_ignore={args.ignore}'
    folder += f'_save_epoch={args.save_epoch}'
    return os.path.join(args.model_folder, folder, PCA_FILE_NAME)


class CheckpointBases(collections.abc.Sequence):
    """The bases (weights or states) of a list of checkpoints, each loaded when indexed, so a long
    trajectory of a large model is never held in memory at once."""

    def __init__(self, paths, net, dir_type):
        self.paths, self.net, self.dir_type = paths, net, dir_type

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        path = self.paths[i]
        loading.load_checkpoint(self.net, path, 'checkpoint')
        return subsets.get_base(self.net, self.dir_type)


def training_data(args, device):
    """The training batch source, with the labels the run trained on when its folder holds them."""
    labels_file = os.path.join(args.model_folder, datasets.TRAIN_LABELS_FILE)
    if os.path.isfile(labels_file):
        # A --label_corrupt_prob run: its checkpoints' training loss is on the labels it saw.
        print(f'evaluating on the training labels of {labels_file}')
    else:
        labels_file = None
    return batch_sources.batch_source(args.dataset, args.datapath, True, args.batch_size, device, args.data_mode,
                                   args.workers, raw_data=args.raw_data, download=args.download,
                                   labels_file=labels_file)


def evaluate_checkpoints(args, paths, net):
    """Each checkpoint's own training values (loss, and the objective's others: accuracy in %, ...),
    in eval mode with its own BN statistics: {train_loss: array over checkpoints, ...}."""
    device = select_device(args.cuda)
    data = training_data(args, device)
    the_objective = objective.resolve(args.loss_name)
    values = {}
    for path in progress.progress_iter(paths, 'evaluating checkpoints', 'ckpt'):
        loading.load_checkpoint(net, path, 'checkpoint')
        for key, value in objective.evaluate(net.to(device), data, the_objective).items():
            values.setdefault(f'train_{key}', []).append(value)
        net.cpu()
    return {name: np.array(series) for name, series in values.items()}


def suggest_grid(proj_x, proj_y, margin=0.2):
    """A symmetric plot_surface grid around (0, 0) holding the whole path with some margin."""
    def bound(coords):
        extent = float(np.max(np.abs(coords))) * (1 + margin)
        return float(f'{extent:.2g}') if extent > 0 else 1.0
    return f'--x=-{bound(proj_x):g}:{bound(proj_x):g}:21 --y=-{bound(proj_y):g}:{bound(proj_y):g}:21'


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    validate_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs, paths = checkpoint_files(args)
    net = loading.build(args.dataset, args.model)
    net.eval()
    checkpoints = CheckpointBases(paths, net, args.dir_type)
    final_base = checkpoints[-1]

    if args.dir_file:
        dir_file = args.dir_file
    else:
        dir_file = name_pca_dir_file(args)
        os.makedirs(os.path.dirname(dir_file), exist_ok=True)
        attrs = {'method': 'pca', 'dataset': args.dataset, 'model': args.model, 'model_folder': args.model_folder,
                 'dir_type': args.dir_type, 'ignore': args.ignore, 'epochs': epochs, 'model_file': paths[-1]}
        # Recomputed every time: the same checkpoints give the same (seeded) directions, and
        # changed checkpoints must not leave stale ones behind.
        _, _, extras = projection.setup_PCA_directions(dir_file, final_base, checkpoints, args.ignore, attrs)
        ratio = extras[hdf5_layout.EXPLAINED_VARIANCE_RATIO]
        print(f'PCA directions of {len(paths)} checkpoints: {dir_file} '
              f'(explained variance {ratio[0]:.2%} + {ratio[1]:.2%})')

    proj_x, proj_y = projection.project_trajectory(dir_file, final_base, checkpoints, args.proj_method, net=net)
    extras = evaluate_checkpoints(args, paths, net) if args.eval else None
    proj_file = f'{dir_file}_proj_{args.proj_method}.h5'
    hdf5_layout.write_projection_file(proj_file, proj_x, proj_y, extras=extras,
                                      attrs={'dir_file': dir_file, 'proj_method': args.proj_method,
                                             'dir_type': args.dir_type, 'epochs': epochs, 'checkpoints': paths})
    print(f'projected path: {proj_file}; x in [{proj_x.min():.4g}, {proj_x.max():.4g}], '
          f'y in [{proj_y.min():.4g}, {proj_y.max():.4g}]')
    print('contours under it: ' + surface_command(args, paths[-1], dir_file, proj_file, proj_x, proj_y))

    from losslandscape.figures import surface_figures
    surface_figures.plot_trajectory(proj_file, dir_file, show=False)
    return proj_file


if __name__ == '__main__':
    run_as_script(main)
