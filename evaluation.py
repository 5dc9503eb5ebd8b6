"""Loss and accuracy of a model over a dataset already resident on the evaluation device.

One pass per grid point, nothing else: no DataLoader, no image transforms, no host
synchronisation until the final sums are read.
"""
import torch
import torch.nn.functional as F

LOSS_NAMES = ('crossentropy', 'mse')


def add_loss_argument(group):
    group.add_argument('--loss_name', default='crossentropy', choices=LOSS_NAMES,
                       help='crossentropy, or mse between softmax outputs and one-hot targets')


def per_sample_loss(outputs, targets, loss_name):
    """Each sample's loss.

    crossentropy: the usual softmax cross-entropy. mse: as the original code, the mean squared
    error between softmax probabilities and one-hot targets over the model's own number of outputs.
    """
    if loss_name == 'crossentropy':
        return F.cross_entropy(outputs, targets, reduction='none')
    if loss_name == 'mse':
        probs = F.softmax(outputs, dim=1)
        one_hot = F.one_hot(targets, num_classes=outputs.shape[1]).to(probs.dtype)
        return ((probs - one_hot) ** 2).mean(dim=1)
    raise ValueError(f'unknown loss {loss_name!r}; expected one of {LOSS_NAMES}')


def batch_loss_sum(outputs, targets, loss_name):
    """Sum over the batch of each sample's loss."""
    return per_sample_loss(outputs, targets, loss_name).sum()


def prediction_counts(outputs, targets):
    """(correct, undefined) counts over the last-but-one dimension. A sample whose outputs are not
    all finite (any inf or NaN) has no prediction and is counted as undefined: argmax would pick
    the NaN's class, or one of several infinite ones, and which one depends on the CPU's kernels
    (MKL's AVX-512 and AVX2 paths overflow differently), so no class is a meaningful answer."""
    undefined = ~torch.isfinite(outputs).all(dim=-1)
    correct = (outputs.argmax(dim=-1) == targets) & ~undefined
    return correct.sum(dim=-1), undefined.sum(dim=-1)


def accuracy_percent(correct, undefined, n):
    """Accuracy in percent; NaN where any sample had no prediction (a diverged point), so plots
    leave a gap there instead of drawing the share of one class."""
    return float('nan') if undefined else 100.0 * correct / n


@torch.inference_mode()
def evaluate(model, data, loss_name='crossentropy', batch_size=128, amp=False):
    """Return (mean loss, accuracy in percent) of ``model`` in eval mode over ``data``
    (a dataloader.CachedDataset). ``amp``: run the model under bfloat16 autocast (the loss itself
    is always computed in float32 and summed in float64)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.device)
    undefined = torch.zeros((), dtype=torch.int64, device=data.device)
    for inputs, targets in data.batches(batch_size):
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(inputs)
        loss_sum += batch_loss_sum(outputs.float(), targets, loss_name).double()
        hits, misses = prediction_counts(outputs, targets)
        correct += hits
        undefined += misses
    n = len(data)
    return loss_sum.item() / n, accuracy_percent(correct.item(), undefined.item(), n)
