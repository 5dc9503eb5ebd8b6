"""Moving a model to a point of the grid: centre + x * xdirection (+ y * ydirection), computed in
float32 and rounded once into the model's own tensors."""

import torch

# ----------------------------------------------------------------------------- moving the model

def _set(target, centre, dx, dy, x, y):
    """target <- centre + x * dx (+ y * dy): in place when the dtypes agree (the order of
    operations the suite always used), else in the centre's dtype and rounded once."""
    work = target if target.dtype == centre.dtype else centre.clone()
    if work is target:
        target.copy_(centre)
    work.add_(dx, alpha=x)
    if dy is not None:
        work.add_(dy, alpha=y)
    if work is not target:
        target.copy_(work)


@torch.no_grad()
def set_weights(net, weights, xdirection, ydirection=None, x=0.0, y=0.0):
    """Parameters <- weights + x * xdirection (+ y * ydirection)."""
    for p, w, dx, dy in zip(net.parameters(), weights, xdirection, ydirection or [None] * len(weights)):
        _set(p, w, dx, dy, x, y)


@torch.no_grad()
def set_states(net, states, xdirection, ydirection=None, x=0.0, y=0.0):
    """Every floating state_dict entry <- states + x * xdirection (+ y * ydirection)."""
    for t, s, dx, dy in zip(net.state_dict().values(), states, xdirection,
                            ydirection or [None] * len(states)):
        if t.is_floating_point():
            _set(t, s, dx, dy, x, y)
        else:
            t.copy_(s)


def move(net, dir_type, base, xdirection, ydirection=None, x=0.0, y=0.0):
    (set_weights if dir_type == 'weights' else set_states)(net, base, xdirection, ydirection, x, y)
