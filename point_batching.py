"""Several grid points in one batched forward pass: torch.func.functional_call under torch.vmap.

A grid point is the model with its tensors set to base + x * xdirection + y * ydirection. For K
points those tensors are stacked along a new leading dimension and the model runs once per batch
of images for all K of them (vmap turns each convolution into one grouped convolution, each
matrix product into one batched product). A small model that leaves a GPU mostly idle at one
point then does K points' work per kernel launch. The images are shared, not copied K times.

Each point's tensors are computed exactly as net_plotter.move computes them (the same adds in
the same order), so only the forward pass's rounding differs from evaluating point by point.
"""
import torch
from torch.func import functional_call

from evaluation import accuracy_percent, per_sample_loss, prediction_counts


class StackedPoints:
    """The tensors the grid moves (parameters for 'weights' directions, floating state_dict entries
    for 'states'), with their base values and directions, ready to stack for several points."""

    def __init__(self, net, dir_type, base, xdirection, ydirection=None):
        named = list(net.named_parameters()) if dir_type == 'weights' else list(net.state_dict().items())
        ydirection = ydirection or [None] * len(base)
        # Integer buffers (num_batches_tracked) never move: the model keeps its own.
        self.entries = [(name, w, dx, dy) for (name, t), w, dx, dy in zip(named, base, xdirection, ydirection)
                        if t.is_floating_point()]

    def stacked(self, coords):
        """name -> tensor of shape (K, *shape) for the K points ``coords`` = [(x, y), ...]."""
        out = {}
        for name, w, dx, dy in self.entries:
            points = []
            for x, y in coords:
                t = w.clone().add_(dx, alpha=x)   # net_plotter.move's order of operations
                if dy is not None:
                    t.add_(dy, alpha=y)
                points.append(t)
            out[name] = torch.stack(points)
        return out


@torch.inference_mode()
def evaluate_stacked(model, tensors, data, loss_name='crossentropy', batch_size=128, amp=False):
    """[(mean loss, accuracy in percent)] of ``model`` in eval mode over ``data`` at each of the K
    points whose tensors ``tensors`` (name -> (K, ...), from StackedPoints.stacked) holds."""
    model.eval()
    names = list(tensors)
    num_points = tensors[names[0]].shape[0]

    def forward(point_tensors, inputs):
        return functional_call(model, dict(zip(names, point_tensors)), (inputs,))
    forward_all = torch.vmap(forward, in_dims=(0, None))

    loss_sum = torch.zeros(num_points, dtype=torch.float64, device=data.device)
    correct = torch.zeros(num_points, dtype=torch.int64, device=data.device)
    undefined = torch.zeros(num_points, dtype=torch.int64, device=data.device)
    for inputs, targets in data.batches(batch_size):
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = forward_all([tensors[n] for n in names], inputs)          # (K, batch, classes)
        losses = per_sample_loss(outputs.float().flatten(0, 1), targets.repeat(num_points), loss_name)
        loss_sum += losses.view(num_points, -1).sum(dim=1).double()   # as evaluation.evaluate: float32 per batch
        hits, misses = prediction_counts(outputs, targets)
        correct += hits
        undefined += misses
    n = len(data)
    return [(loss / n, accuracy_percent(hits, misses, n))
            for loss, hits, misses in zip(loss_sum.tolist(), correct.tolist(), undefined.tolist())]
