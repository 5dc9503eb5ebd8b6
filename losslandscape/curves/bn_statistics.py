"""BatchNorm running statistics recomputed for the weights a model has now.

Weights that were never trained as they are -- a point on a curve between two models, a point of
an interpolation or of a plane through three models -- have no running statistics of their own:
the stored ones belong to another model, and interpolating two models' statistics is not the
statistics of the interpolated weights (the variance of a mix is not the mix of the variances).
Garipov et al. (NeurIPS 2018) therefore recompute them at every evaluated point from the training
data, and so does ``recompute``:

    every BatchNorm layer's statistics reset, then one pass over the training batches with the
    BatchNorm layers in train mode under no_grad, each batch weighted by its number of samples
    (momentum = batch / (seen + batch): the running values end as the sample-weighted mean of the
    batch statistics, whatever the batch sizes), then eval mode again.

Only the BatchNorm layers go to train mode: dropout and every other layer stay in eval mode, so
the pass draws no random numbers and the statistics are those of the network that is evaluated
(the same at a point whichever run, rank or resume computes it). The forward pass is the
objective's own (objective.Objective.sums), so any model and batch layout the objective takes works.
"""
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from losslandscape.objectives import objective


def batchnorm_layers(net):
    """The layers whose running statistics ``recompute`` replaces: BatchNorm 1d/2d/3d (and their
    lazy and synchronised kinds) that track running statistics."""
    return [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute(net, source, the_objective):
    """Replace the running statistics of every BatchNorm layer of ``net`` by those of its current
    weights over the batches of ``source`` (a batch source (data.batch_sources)); ``net`` ends in eval mode.
    A model without BatchNorm is left as it is, at no cost."""
    layers = batchnorm_layers(net)
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    net.eval()
    for m in layers:
        m.reset_running_stats()
        m.train()
    seen = 0
    try:
        for batch in source.batches():
            size = objective.first_tensor(batch).shape[0]
            for m in layers:
                m.momentum = size / (seen + size)
            the_objective.sums(net, batch)
            seen += size
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        net.eval()
