"""Several grid points in one batched forward pass: torch.func.functional_call under torch.vmap.

A grid point is the model with its tensors set to base + x * xdirection + y * ydirection. For K
points those tensors are stacked along a new leading dimension and the model runs once per batch
of images for all K of them (vmap turns each convolution into one grouped convolution, each
matrix product into one batched product). A small model that leaves a GPU mostly idle at one
point then does K points' work per kernel launch. The images are shared, not copied K times.

Each point's tensors are computed exactly as moving.move computes them (the same adds in
the same order), so only the forward pass's rounding differs from evaluating point by point.
"""
import torch
from torch.func import functional_call

from losslandscape.directions import moving
from losslandscape.objectives.objective import DataSetPass


class StackedPoints:
    """The tensors the grid moves (parameters for 'weights' directions, floating state_dict entries
    for 'states'), with their base values and directions, ready to stack for several points."""

    def __init__(self, net, dir_type, base, xdirection, ydirection=None):
        named = list(net.named_parameters()) if dir_type == 'weights' else list(net.state_dict().items())
        ydirection = ydirection or [None] * len(base)
        # Integer buffers (num_batches_tracked) never move: the model keeps its own.
        self.entries = [(name, t.dtype, w, dx, dy) for (name, t), w, dx, dy in zip(named, base, xdirection, ydirection)
                        if t.is_floating_point()]

    def stacked(self, coords):
        """name -> tensor of shape (K, *shape) for the K points ``coords`` = [(x, y), ...]."""
        out = {}
        for name, dtype, w, dx, dy in self.entries:
            points = []
            for x, y in coords:
                points.append(moving.point_tensor(w, dx, dy, x, y))   # moving.move's order of operations
            out[name] = torch.stack(points).to(dtype)   # a low-precision model's points, rounded once
        return out


@torch.inference_mode()
def evaluate_stacked(model, tensors, data, the_objective, amp=False, centre=None, keep_units=False):
    """[{'loss': ..., 'acc': ..., 'loss_stderr': ...}] of ``model`` in eval mode over ``data`` (a
    batch source of (inputs, targets) batches) at each of the K points whose tensors ``tensors``
    (name -> (K, ...), from StackedPoints.stacked) holds, for a built-in classification objective.
    ``centre``: the centre's standard_errors.Centre, to pair each point's rise with; ``keep_units``:
    return [(values, standard_errors.Centre)] instead, each point's units kept (the centre's own)."""
    model.eval()
    names = list(tensors)
    num_points = tensors[names[0]].shape[0]

    def forward(point_tensors, inputs):
        return functional_call(model, dict(zip(names, point_tensors)), (inputs,))
    forward_all = torch.vmap(forward, in_dims=(0, None))

    passes = [DataSetPass(the_objective, centre, keep_units) for _ in range(num_points)]
    for batch in data.batches():
        inputs, targets = the_objective.split(batch)
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = forward_all([tensors[n] for n in names], inputs)          # (K, batch, classes)
        for point, point_outputs in zip(passes, outputs):
            point.add(*the_objective.sums_of_outputs(point_outputs, targets))
    results = [point.values() for point in passes]
    return [(values, result.centre) for values, result in results] if keep_units else [values for values, _ in results]
