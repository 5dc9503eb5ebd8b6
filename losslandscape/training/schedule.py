"""What the two training scripts share about time: the learning-rate schedule and each epoch's
random generator (cifar10/main.py trains models, train_curve.py trains curves between them, with
the same optimizer flags, so a curve trained for as many epochs follows the models' schedule).

The schedule is the original code's step schedule: the learning rate is multiplied by --lr_decay
after epochs 150, 225 and 275 of 300, the same fractions of any other length.
"""
import numpy as np
import torch

DECAY_EPOCHS_OF_300 = (150, 225, 275)   # the original's schedule, scaled to other lengths


def add_schedule_arguments(group, *, momentum_help, weight_decay_help, seed_help):
    """The optimizer flags both training scripts take, with the original's defaults (--epochs,
    --lr, --lr_decay, --momentum, --weight_decay, --rand_seed); the helps say what each trains."""
    group.add_argument('--epochs', default=300, type=int, help='number of training epochs')
    group.add_argument('--lr', default=0.1, type=float, help='initial learning rate')
    group.add_argument('--lr_decay', default=0.1, type=float, help='learning rate factor at each decay epoch '
                       '(epochs 150, 225, 275 of 300, scaled to --epochs)')
    group.add_argument('--momentum', default=0.9, type=float, help=momentum_help)
    group.add_argument('--weight_decay', default=0.0005, type=float, help=weight_decay_help)
    group.add_argument('--rand_seed', default=0, type=int, help=seed_help)


def decay_epochs(epochs):
    """The epochs after which the learning rate decays: 150, 225, 275 for 300, scaled and rounded
    half up for other lengths (4 -> 2, 3, 4). Milestones that round to the same epoch count once
    (3 -> 2, 3): short runs must not decay twice in one step."""
    return sorted({(m * epochs + 150) // 300 for m in DECAY_EPOCHS_OF_300})


def learning_rate(epoch, base_lr, lr_decay, epochs):
    """The learning rate of (1-based) ``epoch``: one factor ``lr_decay`` per decay epoch passed."""
    return base_lr * lr_decay ** sum(epoch > m for m in decay_epochs(epochs))


def epoch_generator(seed, epoch):
    """The CPU generator of one epoch's random choices (batch order, augmentation, a curve's t
    values): a function of the run's seed and the epoch alone, so a resumed run draws what an
    uninterrupted one would."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))
