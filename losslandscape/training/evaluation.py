"""Loss and accuracy of a classifier over a resident data set (a datasets.CachedDataset): the
built-in objectives as cifar10.main trains and evaluates with them.

The grid scripts evaluate any objective over any batch source through objective.py; this module
keeps the classification entry points that training and the tests use, on the same code.
"""
from losslandscape.data import batch_sources
from losslandscape.objectives import objective
from losslandscape.objectives.objective import CLASSIFICATION_LOSSES as LOSS_NAMES  # noqa: F401  (training's --loss_name choices)
from losslandscape.objectives.objective import accuracy_percent, per_sample_loss, prediction_counts  # noqa: F401


def add_loss_argument(group):
    group.add_argument('--loss_name', default='crossentropy', choices=LOSS_NAMES,
                       help='crossentropy, or mse between softmax outputs and one-hot targets')


def batch_loss_sum(outputs, targets, loss_name):
    """Sum over the batch of each sample's loss."""
    return per_sample_loss(outputs, targets, loss_name).sum()


def evaluate(model, data, loss_name='crossentropy', batch_size=128, amp=False):
    """Return (mean loss, accuracy in percent) of ``model`` in eval mode over ``data``
    (a datasets.CachedDataset). ``amp``: run the model under bfloat16 autocast (the loss itself
    is always computed in float32 and summed in float64)."""
    values = objective.evaluate(model, batch_sources.CachedBatches(data, batch_size, data.device),
                                objective.ClassificationObjective(loss_name), amp)
    return values[objective.LOSS], values[objective.ACC]
