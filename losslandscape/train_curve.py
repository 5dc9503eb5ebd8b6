"""Train a curve of low loss between two trained models (mode connectivity, Garipov et al. 2018).

    python train_curve.py --dataset digits --model cnn_bn --model_file a/model_8.t7 \\
        --model_file2 b/model_8.t7 --curve bezier --num_bends 3 --epochs 10 --lr 0.05 \\
        --curve_file demo_out/curve.h5
    python plot_surface.py --dataset digits --model cnn_bn --curve_file demo_out/curve.h5 --x=0:1:21

The ends stay fixed (t = 0 is --model_file, t = 1 is --model_file2); the bends start on the
straight line and are trained by SGD to minimise the loss at a random t ~ U[0, 1] per mini-batch
(connecting_curves.py). The optimizer and schedule are cifar10.main's: SGD with Nesterov momentum and weight
decay, the learning rate multiplied by --lr_decay after 150, 225 and 275 of 300 epochs, scaled to
--epochs. The curve file (HDF5, layout in hdf5_layout.py) is rewritten at the end of every epoch;
rerunning the same command after a crash or kill -9 resumes from the last finished epoch and ends
with the curve an uninterrupted run gives (with the same --threads). At the end the end models'
values with their stored BatchNorm statistics are reported beside those with statistics
recomputed (as the curve's are at every t), with the midpoints of the curve and of the straight line.
"""
import copy
import os

import torch

from losslandscape.cli import grid_args
from losslandscape.cli.parsing import ArgumentParser, check_file_exists, check_output_folder, run_as_script
from losslandscape.curves import connecting_curves
from losslandscape.data import batch_sources
from losslandscape.engine.run_setup import probe_objective
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout as layout
from losslandscape.io.file_safety import FileLock, remove_stale_temporaries
from losslandscape.models import loading
from losslandscape.objectives import objective
from losslandscape.parallel.mpi_comm import select_device
from losslandscape.training import schedule

# The settings a rerun must share to resume a curve file (the end checkpoints are compared by content).
TRAINING_FIELDS = ('dataset', 'raw_data', 'data_split', 'split_idx', 'train_labels', 'batch_size', 'loss_name',
                   'lr', 'lr_decay', 'momentum', 'weight_decay', 'epochs', 'rand_seed')
PATH_FIELDS = ('train_labels',)
MIDPOINT = 0.5


def get_args_parser(add_help=True):
    parser = ArgumentParser('train_curve.py', add_help=add_help, description=__doc__.split('\n\n')[0])
    model = parser.add_argument_group('end models and objective')
    model.add_argument('--model', default='resnet56', help='a model of the dataset\'s zoo (e.g. resnet56, '
                       'vgg9; digits: mlp, cnn, cnn_bn) or package.module:factory returning an nn.Module')
    model.add_argument('--model_file', default='', help='checkpoint of the curve\'s start, t = 0')
    model.add_argument('--model_file2', default='', help='checkpoint of the curve\'s end, t = 1 (the same '
                       'architecture, trained on its own: another seed, say)')
    objective.add_loss_argument(model)

    curve = parser.add_argument_group('curve')
    curve.add_argument('--curve', default='bezier', choices=connecting_curves.CURVE_TYPES,
                       help='bezier: a Bezier curve of degree NUM_BENDS - 1 (Bernstein basis); polychain: the '
                       'broken line through the bends, evenly spaced in t')
    curve.add_argument('--num_bends', default=3, type=int, help='control points, the two ends included: 3 is one '
                       'trainable bend (Garipov et al.), 2 the straight line itself (nothing to train)')
    curve.add_argument('--curve_file', default='', help='the HDF5 curve file to write, and to resume from when '
                       'it exists (required)')

    optim = parser.add_argument_group('optimization (as cifar10.main)')
    schedule.add_schedule_arguments(optim, momentum_help='SGD momentum (Nesterov when above 0)',
                                    weight_decay_help='L2 weight decay of the bends',
                                    seed_help='seed of the batch order and of the t drawn for each mini-batch')

    grid_args.add_data_arguments(parser, batch_size_help='training batch size (also that of the evaluations)',
                                 eval_test_help='also report the test loss and accuracy of the end models and '
                                 'the midpoints when training ends')
    grid_args.add_device_arguments(parser)
    return parser


def validate(parser, args):
    """Every flag checked before any model, data or file is touched."""
    if args.num_bends < connecting_curves.MIN_BENDS:
        parser.error(f'--num_bends must be at least {connecting_curves.MIN_BENDS} (the two ends; 3 is one trainable bend)')
    for flag in ('lr', 'lr_decay'):
        if not getattr(args, flag) > 0 or getattr(args, flag) == float('inf'):
            parser.error(f'--{flag} must be a positive number (got {getattr(args, flag):g})')
    for flag in ('momentum', 'weight_decay'):
        if not 0 <= getattr(args, flag) < float('inf'):
            parser.error(f'--{flag} must be 0 or more (got {getattr(args, flag):g})')
    if args.epochs < 1:
        parser.error(f'--epochs must be at least 1 (got {args.epochs})')
    if args.rand_seed < 0:
        parser.error(f'--rand_seed must be 0 or more (got {args.rand_seed})')
    grid_args.check_device(parser, args)
    grid_args.check_data(parser, args)
    loading.check_model_name(args.dataset, args.model)
    for flag in ('model_file', 'model_file2'):
        check_file_exists(getattr(args, flag), f'--{flag}')
    objective.check_loss_name(args.loss_name)
    if not args.curve_file:
        parser.error('--curve_file is required: the curve file to write (or resume)')
    check_output_folder(args.curve_file, '--curve_file')
    if os.path.exists(args.curve_file):
        layout.read_curve_file(args.curve_file, '--curve_file')   # a foreign or damaged file is refused, untouched
    select_device(args.cuda)   # UsageError without a GPU


def curve_attrs(args):
    """The curve file's attributes for this command (before training: no epochs, no end values)."""
    return {layout.CURVE_TYPE: args.curve, layout.NUM_BENDS: args.num_bends, layout.CURVE_MODEL: args.model,
            layout.CURVE_START_FILE: os.path.realpath(args.model_file),
            layout.CURVE_END_FILE: os.path.realpath(args.model_file2),
            layout.CURVE_START_HASH: connecting_curves.checkpoint_hash(args.model_file, '--model_file'),
            layout.CURVE_END_HASH: connecting_curves.checkpoint_hash(args.model_file2, '--model_file2'),
            layout.CURVE_TRAINING: {key: training_setting(args, key) for key in TRAINING_FIELDS}}


def training_setting(args, key):
    value = getattr(args, key)
    return os.path.realpath(value) if key in PATH_FIELDS and value else value


def check_resumable(record, attrs):
    """Refuse a curve file made by another command: another curve, other end models (by content),
    other training settings. Paths may differ (checkpoints moved): the new ones are recorded."""
    path = record.path
    for flag, hash_key, path_key in (('--model_file', layout.CURVE_START_HASH, layout.CURVE_START_FILE),
                                     ('--model_file2', layout.CURVE_END_HASH, layout.CURVE_END_FILE)):
        if record.attrs[hash_key] != attrs[hash_key]:
            raise UsageError(f'--curve_file {path!r} is a curve from another {flag} ({record.attrs[path_key]!r}, '
                             'whose content differs); pass another --curve_file')
    for flag, key in (('--curve', layout.CURVE_TYPE), ('--num_bends', layout.NUM_BENDS), ('--model', layout.CURVE_MODEL)):
        if record.attrs[key] != attrs[key]:
            raise UsageError(f'--curve_file {path!r} was trained with {flag} {record.attrs[key]}, not {attrs[key]}; '
                             'pass another --curve_file')
    stored = record.attrs.get(layout.CURVE_TRAINING, {})
    for key, wanted in attrs[layout.CURVE_TRAINING].items():
        if stored.get(key) != wanted:
            raise UsageError(f'--curve_file {path!r} was trained with --{key} {stored.get(key)}, not {wanted}; '
                             'pass the same or another --curve_file')


def evaluate_ends(curve, net_a, net_b, train_data, sources, the_objective):
    """{label: {name: value}}: the end models with their stored BatchNorm statistics, then the
    ends and the midpoints of the curve and of the straight line with recomputed statistics."""
    values = {}

    def record(label, results):
        values[label] = {f'{prefix}_{key}': value for prefix, result in results.items() for key, value in result.items()}

    for label, net in (('t = 0, stored statistics', net_a), ('t = 1, stored statistics', net_b)):
        record(label, {prefix: objective.evaluate(net, source, the_objective) for prefix, source in sources})
    line = connecting_curves.Curve(curve.curve_type, curve.names, [curve.control_points[0], curve.control_points[-1]])
    probe = copy.deepcopy(net_a)
    for label, path, t in (('t = 0, recomputed statistics', curve, 0.0), ('t = 1, recomputed statistics', curve, 1.0),
                           (f'curve, t = {MIDPOINT:g}', curve, MIDPOINT),
                           (f'straight line, t = {MIDPOINT:g}', line, MIDPOINT)):
        record(label, connecting_curves.evaluate_at(path, probe, t, train_data, sources, the_objective))
    return values


def print_values(values):
    """A table of ``values`` ({label: {name: value}}), each value with its standard error beside it
    where it has one (curve files written before them have none)."""
    names = [name for name in next(iter(values.values())) if not name.endswith(layout.STDERR_SUFFIX)]
    with_errors = any(layout.stderr_name(name) in row for row in values.values() for name in names)
    column = 24 if with_errors else 14

    def cell(row, name):
        text = f'{row.get(name, float("nan")):.5g}'
        if layout.stderr_name(name) in row:
            text += f' +- {row[layout.stderr_name(name)]:.2g}'
        return f'{text:>{column}}'
    width = max(len(label) for label in values)
    print(' ' * width + ''.join(f'{name:>{column}}' for name in names))
    for label, row in values.items():
        print(f'{label:<{width}}' + ''.join(cell(row, name) for name in names))


def acquire_lock(path):
    try:
        return FileLock(path).acquire()
    except UsageError:
        raise UsageError(f'{path!r} is being trained by another run (lock {path + ".lock"!r} is held); wait for it '
                         'to finish, or pass another --curve_file') from None


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    validate(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.cuda)
    net_a = loading.load(args.dataset, args.model, args.model_file)
    net_b = loading.load(args.dataset, args.model, args.model_file2, '--model_file2')
    connecting_curves.check_end_models(net_a, net_b)
    attrs = curve_attrs(args)
    record = layout.read_curve_file(args.curve_file, '--curve_file') if os.path.exists(args.curve_file) else None
    if record is not None:
        check_resumable(record, attrs)
        if layout.CURVE_END_VALUES in record.attrs:
            print(f'{args.curve_file}: already trained ({record.epochs_done} epochs); nothing to do')
            print_values(record.attrs[layout.CURVE_END_VALUES])
            return 0

    def source(train):
        return batch_sources.batch_source(args.dataset, args.datapath, train, args.batch_size, device, args.data_mode,
                                       args.workers, raw_data=args.raw_data, data_split=args.data_split,
                                       split_idx=args.split_idx, download=args.download,
                                       labels_file=args.train_labels if train else None)
    train_data = source(True)
    sources = [('train', train_data)] + ([('test', source(False))] if args.eval_test else [])
    the_objective = objective.resolve(args.loss_name)
    net_a.to(device)
    net_b.to(device)
    probe_objective(the_objective, net_a, train_data, differentiable=True)

    names, start = connecting_curves.parameters_of(net_a)
    end = connecting_curves.parameters_of(net_b)[1]
    bends = connecting_curves.stored_bends(record, net_a, '--curve_file') if record is not None \
        else connecting_curves.straight_bends(start, end, args.num_bends)
    curve = connecting_curves.Curve(args.curve, names, [start, *bends, end]).to(device)
    optimizer = connecting_curves.make_optimizer(curve, args.lr, args.momentum, args.weight_decay)
    history = {key: list(record.history.get(key, [])) for key in layout.HISTORY_KEYS} if record is not None \
        else {key: [] for key in layout.HISTORY_KEYS}
    if record is not None:
        connecting_curves.load_momentum_buffers(curve, optimizer, record.momentum)
    first = record.epochs_done + 1 if record is not None else 1
    net = copy.deepcopy(net_a)   # what the curve's weights run in; net_a keeps its own statistics

    def write(extra_attrs):
        layout.write_curve_file(args.curve_file, curve.named_bends(), connecting_curves.momentum_buffers(curve, optimizer),
                                history, {**attrs, layout.CURVE_EPOCHS_DONE: len(history[layout.HISTORY_EPOCH]),
                                          **extra_attrs})

    lock = acquire_lock(args.curve_file)
    try:
        remove_stale_temporaries(args.curve_file)   # a killed run's leftovers; we hold the lock now
        if optimizer is None:
            print(f'--num_bends {args.num_bends}: the curve is the straight line; nothing to train')
        elif first > 1:
            print(f'{args.curve_file}: resuming after epoch {first - 1} of {args.epochs}')
        for epoch in range(first, args.epochs + 1) if optimizer is not None else ():
            lr = schedule.learning_rate(epoch, args.lr, args.lr_decay, args.epochs)
            loss = connecting_curves.train_epoch(curve, net, train_data, the_objective, optimizer, lr,
                                      schedule.epoch_generator(args.rand_seed, epoch))
            for key, value in zip(layout.HISTORY_KEYS, (epoch, lr, loss)):
                history[key].append(value)
            write({})
            print(f'epoch {epoch}/{args.epochs} lr={lr:g}: mean training loss along the curve {loss:.5f}', flush=True)
        values = evaluate_ends(curve, net_a, net_b, train_data, sources, the_objective)
        write({layout.CURVE_END_VALUES: values})
    finally:
        lock.release()
    print_values(values)
    print(f'wrote {args.curve_file}; evaluate it with plot_surface.py --curve_file {args.curve_file} --x=0:1:21')
    return 0


if __name__ == '__main__':
    run_as_script(main)
