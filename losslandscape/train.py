"""Train a classifier and keep the checkpoints that plot_trajectory.py and plot_surface.py read.

    python -m cifar10.main --model resnet56 --datapath cifar10/data                 (CIFAR-10, 300 epochs)
    python -m cifar10.main --dataset digits --model cnn_bn --epochs 20              (seconds, no download)

The original code's recipe: SGD with Nesterov momentum (or Adam) and weight decay; the learning rate
is multiplied by --lr_decay after epochs 150, 225 and 275 of 300, the same fractions of any other
--epochs (rounded half up); the CIFAR-10 zoo models start from the original's initialisation
(Kaiming-normal convolutions, N(0, 1e-3) linear layers), other models from their constructor's -- the
tiny linear weights would stall a small MLP for epochs. 32x32 images are
augmented (random crop with 4-pixel zero padding + horizontal flip) unless --noaug. Other sizes,
the 8x8 digits among them, are never augmented: a 4-pixel shift moves half a digit out of view.

The data stay resident as tensors (datasets.CachedDataset): every epoch draws one permutation and
the augmentation of whole batches from a generator seeded by (--rand_seed, epoch), so a resumed run
sees exactly the batches an uninterrupted one would -- no DataLoader, no worker processes.

Output folder <save>/<model>_<optimizer>_lr=.._bs=.._wd=.._mom=.._save_epoch=..[_options], the
original's name: then _lr_decay=.. (if not 0.1), _loss=mse, _noaug, _rawdata, _randlabel=.. (with
--label_corrupt_prob), _ngpu=.. (if > 1), _idx=.. (if > 0). It holds
    model_<epoch>.t7      {'state_dict', 'epoch', 'acc' (test accuracy, %)}: epoch 0 (before any
                          step), every --save_epoch epochs and the last epoch
    opt_state_<epoch>.t7  {'optimizer': optimizer.state_dict(), 'epoch'} beside each model
    log.out               one line per epoch: training loss and error, test error and loss (%)
    train_labels.pt       with --label_corrupt_prob: the labels trained on (int64, dataset order)
Every file loads with torch.load(..., weights_only=True).
"""
import dataclasses
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from losslandscape.cli.parsing import (
    ArgumentParser,
    UsageError,
    check_file_exists,
    check_writable_folder,
    run_as_script,
)
from losslandscape.data import datasets
from losslandscape.engine import progress
from losslandscape.io.file_safety import atomic_path
from losslandscape.models import loading
from losslandscape.models.cifar10.zoo import MODELS as CIFAR10_MODELS
from losslandscape.parallel.mpi_comm import select_device
from losslandscape.training import evaluation
from losslandscape.training.schedule import add_schedule_arguments, decay_epochs, epoch_generator, learning_rate

OPTIMIZERS = ('sgd', 'adam')
AUGMENT_SIZE = (32, 32)                 # CIFAR-sized images are the ones augmented
CROP_PADDING = 4
TRAIN_LABELS_FILE = datasets.TRAIN_LABELS_FILE
LOG_FILE = 'log.out'
LABEL_SEED_STREAM = 1                   # the label noise gets its own stream of --rand_seed


def get_args_parser(add_help=True):
    parser = ArgumentParser('python -m cifar10.main', add_help=add_help,
                            description=__doc__.split('\n\n')[0])
    optim = parser.add_argument_group('optimization')
    optim.add_argument('--batch_size', default=128, type=int, help='training batch size')
    optim.add_argument('--optimizer', default='sgd', choices=OPTIMIZERS, help='sgd (Nesterov momentum) or adam')
    add_schedule_arguments(optim, momentum_help='SGD momentum', weight_decay_help='L2 weight decay',
                           seed_help='seed of the initialisation, batch order, augmentation and label noise')

    model = parser.add_argument_group('model')
    model.add_argument('--model', default='vgg9', help="a model of the dataset's zoo (e.g. vgg9, resnet56; "
                       'digits: mlp, cnn, cnn_bn) or package.module:factory returning an nn.Module')
    evaluation.add_loss_argument(model)

    data = parser.add_argument_group('data')
    datasets.add_data_arguments(data)
    data.add_argument('--noaug', action='store_true', help='no data augmentation (32x32 images are '
                      'otherwise randomly cropped and flipped; other sizes never are)')
    data.add_argument('--label_corrupt_prob', default=0.0, type=float, help='probability that a training '
                      'label is replaced by a uniformly random class (saved to train_labels.pt)')

    output = parser.add_argument_group('checkpoints')
    output.add_argument('--save', default='trained_nets', help='folder in which the run folder is made')
    output.add_argument('--save_epoch', default=1, type=int, help='save a checkpoint every SAVE_EPOCH epochs')
    output.add_argument('--resume_model', default='', help='checkpoint to continue from (its epoch + 1 is the '
                        'next; default: train from scratch)')
    output.add_argument('--resume_opt', default='', help='optimizer state saved with that checkpoint (default: '
                        'momentum starts afresh)')
    output.add_argument('--idx', default=0, type=int, help='index of a repeated experiment (in the folder name)')

    compute = parser.add_argument_group('compute')
    compute.add_argument('--cuda', action='store_true', help='train on the GPU')
    compute.add_argument('--ngpu', default=1, type=int, help='GPUs to use (DataParallel when > 1, needs --cuda)')
    compute.add_argument('--threads', default=None, type=int, help="CPU threads (torch.set_num_threads; "
                         "default: PyTorch's choice)")
    return parser


def validate_args(args):
    """Reject bad arguments before any data, model or folder is touched (the checkpoints to resume
    from are read, and checked, with the model: still before the run folder is made)."""
    positive = {'lr': args.lr, 'lr_decay': args.lr_decay}
    for flag, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f'--{flag} must be a positive number (got {value:g})')
    for flag in ('batch_size', 'epochs', 'save_epoch', 'ngpu'):
        if getattr(args, flag) < 1:
            raise UsageError(f'--{flag} must be at least 1 (got {getattr(args, flag)})')
    for flag in ('weight_decay', 'momentum'):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f'--{flag} must be 0 or more (got {value:g})')
    if not 0.0 <= args.label_corrupt_prob <= 1.0:
        raise UsageError(f'--label_corrupt_prob must be in [0, 1] (got {args.label_corrupt_prob:g})')
    for flag in ('rand_seed', 'idx'):
        if getattr(args, flag) < 0:
            raise UsageError(f'--{flag} must be 0 or more (got {getattr(args, flag)})')
    if args.threads is not None and args.threads < 1:
        raise UsageError('--threads must be at least 1')
    if args.ngpu > 1 and not args.cuda:
        raise UsageError('--ngpu > 1 needs --cuda')
    select_device(args.cuda)   # UsageError without a GPU
    if args.resume_opt and not args.resume_model:
        raise UsageError('--resume_opt needs --resume_model (the checkpoint it was saved with)')
    for flag in ('resume_model', 'resume_opt'):
        if getattr(args, flag):
            check_file_exists(getattr(args, flag), f'--{flag}')
    if args.dataset not in datasets.BUILTIN_DATASETS and not datasets.is_custom(args.dataset):
        raise UsageError(f'unknown --dataset {args.dataset!r}: use one of '
                         f'{", ".join(datasets.BUILTIN_DATASETS)} or package.module:factory')
    loading.check_model_name(args.dataset, args.model)
    # Fails fast, before any data are read; make_run_folder catches what only trying tells
    # (root passes every permission check).
    check_writable_folder(run_folder(args), f'--save {args.save!r}:', may_create=True)


def make_run_folder(save, folder):
    """os.makedirs(folder); on failure remove the parents it made and raise UsageError, so a
    refused --save leaves nothing behind."""
    missing = []   # the folders makedirs is to create, deepest first
    path = os.path.abspath(folder)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        for made in missing:
            try:
                os.rmdir(made)   # only empty folders go, so nothing of anyone else's is lost
            except OSError:
                pass
        raise UsageError(f'--save {save!r}: cannot make the run folder {folder!r} '
                         f'({err.strerror or err})') from None


# ----------------------------------------------------------------------------- names and schedule

def run_folder(args):
    return os.path.join(args.save, name_save_folder(args))


def name_save_folder(args):
    """The run folder's name, the original code's scheme (so its tools' paths carry over)."""
    name = f'{args.model}_{args.optimizer}_lr={args.lr}'
    if args.lr_decay != 0.1:
        name += f'_lr_decay={args.lr_decay}'
    name += f'_bs={args.batch_size}_wd={args.weight_decay}_mom={args.momentum}_save_epoch={args.save_epoch}'
    if args.loss_name != 'crossentropy':
        name += f'_loss={args.loss_name}'
    if args.noaug:
        name += '_noaug'
    if args.raw_data:
        name += '_rawdata'
    if args.label_corrupt_prob > 0:
        name += f'_randlabel={args.label_corrupt_prob}'
    if args.ngpu > 1:
        name += f'_ngpu={args.ngpu}'
    if args.idx > 0:
        name += f'_idx={args.idx}'
    return name


# ----------------------------------------------------------------------------- labels

def corrupt_labels(labels, prob, num_classes, seed):
    """Replace each label, with probability ``prob``, by a uniformly random class (Zhang et al. 2017's
    partially random labels, which the original flag names); a random class may be the true one,
    so about prob * (1 - 1/num_classes) of the labels change. Returns (labels, replaced mask)."""
    rng = np.random.default_rng([seed, LABEL_SEED_STREAM])
    replaced = rng.random(len(labels)) < prob
    random_labels = rng.integers(0, num_classes, size=len(labels))
    new = np.where(replaced, random_labels, labels.cpu().numpy())
    return torch.from_numpy(new.astype(np.int64)), replaced


def training_labels(args, train, folder):
    """The labels to train on: the data set's, or seeded random ones saved beside the checkpoints."""
    if args.label_corrupt_prob <= 0:
        return train.targets
    labels, replaced = corrupt_labels(train.targets, args.label_corrupt_prob, train.num_classes, args.rand_seed)
    path = os.path.join(folder, TRAIN_LABELS_FILE)
    if os.path.exists(path):
        # A resumed (or repeated) run must train on the labels its checkpoints were trained on.
        saved = datasets.read_labels(path, len(labels), 'label file')
        if not torch.equal(saved, labels):
            raise UsageError(f'{path!r} holds other labels than --label_corrupt_prob '
                             f'{args.label_corrupt_prob:g} --rand_seed {args.rand_seed} make; '
                             'remove it or use another --save folder')
    else:
        atomic_save(labels, path)
    changed = (labels != train.targets.cpu()).float().mean().item()
    print(f'label noise: {replaced.mean():.1%} of the training labels replaced by random classes, '
          f'{changed:.1%} changed; saved in {path}')
    return labels.to(train.device)


# ----------------------------------------------------------------------------- training

def init_params(net):
    """The original's initialisation: Kaiming-normal (fan in) convolutions, N(0, 1e-3) linear
    weights, zero biases, BatchNorm at identity."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode='fan_in')
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1e-3)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def should_augment(args, train):
    shape = tuple(train.inputs.shape)
    return not args.noaug and len(shape) == 4 and shape[-2:] == AUGMENT_SIZE


def augment(raw, generator, padding=CROP_PADDING):
    """Random crop (zero padding of ``padding`` pixels, as torchvision's RandomCrop) and random
    horizontal flip of a batch of stored (unnormalised) images, all with one gather."""
    b, c, h, w = raw.shape
    padded = F.pad(raw, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, b, 1), generator=generator).to(raw.device)
    flip = (torch.rand(b, 1, generator=generator) < 0.5).to(raw.device)
    rows = offsets[0] + torch.arange(h, device=raw.device)
    cols = offsets[1] + torch.arange(w, device=raw.device)
    cols = torch.where(flip, cols.flip(1), cols)   # a flip is the crop's columns read backwards
    batch = torch.arange(b, device=raw.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=raw.device).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def train_epoch(net, train, labels, optimizer, loss_name, batch_size, generator, augmented, desc):
    """One pass over the shuffled training set; returns (mean loss, error %) over its batches."""
    net.train()
    order = torch.randperm(len(train), generator=generator).to(train.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=train.device)
    correct = torch.zeros((), dtype=torch.int64, device=train.device)
    num_batches = math.ceil(len(train) / batch_size)
    with progress.progress_bar(num_batches, desc, 'batch', leave=False) as bar:
        for start in range(0, len(train), batch_size):
            idx = order[start:start + batch_size]
            raw = train.inputs[idx]
            if augmented:
                raw = augment(raw, generator)
            inputs, targets = train.normalize(raw), labels[idx]
            optimizer.zero_grad(set_to_none=True)
            outputs = net(inputs)
            batch_sum = evaluation.batch_loss_sum(outputs.float(), targets, loss_name)
            (batch_sum / len(idx)).backward()
            optimizer.step()
            loss_sum += batch_sum.detach().double()
            correct += (outputs.detach().argmax(dim=1) == targets).sum()
            bar.update()
    n = len(train)
    return loss_sum.item() / n, 100.0 - 100.0 * correct.item() / n


def make_optimizer(args, net):
    if args.optimizer == 'sgd':
        return torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay, nesterov=args.momentum > 0)
    return torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def atomic_save(obj, path):
    """torch.save under a temporary name, then rename: a killed run never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(folder, epoch, net, optimizer, acc):
    module = net.module if isinstance(net, nn.DataParallel) else net
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    atomic_save({'state_dict': state, 'epoch': epoch, 'acc': acc}, os.path.join(folder, f'model_{epoch}.t7'))
    atomic_save({'optimizer': optimizer.state_dict(), 'epoch': epoch},
                os.path.join(folder, f'opt_state_{epoch}.t7'))


def load_dict(path, flag, key):
    """The checkpoint dict at ``path`` holding ``key`` (weights only), or raise UsageError."""
    content = loading.read_checkpoint(path, flag)
    if not isinstance(content, dict) or key not in content:
        raise UsageError(f'{flag} {path!r} is a checkpoint without {key!r}')
    return content


def resume(args, net, optimizer):
    """Load --resume_model (and --resume_opt) into net/optimizer; return the next epoch."""
    epoch = load_dict(args.resume_model, '--resume_model', 'epoch')['epoch']
    if not isinstance(epoch, int) or epoch < 0:
        raise UsageError(f'--resume_model {args.resume_model!r} has no valid epoch ({epoch!r})')
    state = loading.read_state_dict(args.resume_model, '--resume_model')
    loading.load_state(net, state, f'--resume_model {args.resume_model!r}')
    if epoch >= args.epochs:
        raise UsageError(f'--resume_model {args.resume_model!r} is from epoch {epoch}: --epochs {args.epochs} '
                         'leaves nothing to train')
    if args.resume_opt:
        opt_state = load_dict(args.resume_opt, '--resume_opt', 'optimizer')
        if opt_state.get('epoch', epoch) != epoch:
            raise UsageError(f'--resume_opt {args.resume_opt!r} is from epoch {opt_state["epoch"]}, '
                             f'--resume_model from epoch {epoch}')
        try:
            optimizer.load_state_dict(opt_state['optimizer'])
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f'--resume_opt {args.resume_opt!r} does not fit a {args.optimizer} optimizer '
                             f'of this model ({err})') from None
    else:
        print('note: resuming without --resume_opt: the optimizer state (momentum) starts afresh')
    return epoch + 1


def log_status(log, epoch, train_loss, train_err, test_err, test_loss):
    # The original's line format (its 'test_top1' is the test error in %), so its parsers still work.
    status = (f'e: {epoch} loss: {train_loss:.5f} train_err: {train_err:.3f} '
              f'test_top1: {test_err:.3f} test_loss {test_loss:.5f}')
    tqdm.write(status)
    log.write(status + ' \n')
    log.flush()


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    validate_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.cuda)

    load = lambda train: datasets.load_dataset(args.dataset, args.datapath, train, args.raw_data,
                                                 download=args.download, device=device)
    train, test = load(True), load(False)

    torch.manual_seed(args.rand_seed)
    net = loading.build(args.dataset, args.model)
    if args.model in CIFAR10_MODELS:
        init_params(net)
    net.to(device)
    optimizer = make_optimizer(args, net)
    # Resuming reads and checks --resume_model/--resume_opt (epoch, fit to the model and optimizer):
    # it runs before the run folder is made, so a refused checkpoint leaves no folder behind.
    start_epoch = resume(args, net, optimizer) if args.resume_model else 1

    folder = run_folder(args)
    make_run_folder(args.save, folder)
    labels = training_labels(args, train, folder)
    train_as_trained = dataclasses.replace(train, targets=labels)
    augmented = should_augment(args, train)
    if not augmented and not args.noaug:
        print(f'note: inputs of shape {tuple(train.inputs.shape[1:])} are not augmented '
              f'(only {AUGMENT_SIZE[0]}x{AUGMENT_SIZE[1]} images are)')
    model = nn.DataParallel(net, device_ids=list(range(min(args.ngpu, torch.cuda.device_count())))) \
        if args.ngpu > 1 else net

    print(f'training {args.model} on {args.dataset} ({len(train)} images) for epochs {start_epoch}..'
          f'{args.epochs}; learning rate decays after epochs {decay_epochs(args.epochs)}; saving to {folder}')
    with open(os.path.join(folder, LOG_FILE), 'a') as log:
        if start_epoch == 1:
            train_loss, train_acc = evaluation.evaluate(model, train_as_trained, args.loss_name, args.batch_size)
            test_loss, test_acc = evaluation.evaluate(model, test, args.loss_name, args.batch_size)
            log_status(log, 0, train_loss, 100 - train_acc, 100 - test_acc, test_loss)
            save_checkpoint(folder, 0, model, optimizer, test_acc)
        for epoch in range(start_epoch, args.epochs + 1):
            lr = learning_rate(epoch, args.lr, args.lr_decay, args.epochs)
            for group in optimizer.param_groups:
                group['lr'] = lr  # set, not multiplied: a resumed run gets its epoch's rate
            train_loss, train_err = train_epoch(model, train, labels, optimizer, args.loss_name, args.batch_size,
                                                epoch_generator(args.rand_seed, epoch), augmented,
                                                desc=f'epoch {epoch}/{args.epochs} lr={lr:g}')
            test_loss, test_acc = evaluation.evaluate(model, test, args.loss_name, args.batch_size)
            log_status(log, epoch, train_loss, train_err, 100 - test_acc, test_loss)
            if epoch % args.save_epoch == 0 or epoch == args.epochs:
                save_checkpoint(folder, epoch, model, optimizer, test_acc)
    print(f'checkpoints in {folder}')
    return folder


if __name__ == '__main__':
    run_as_script(main)
