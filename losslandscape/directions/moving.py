"""Moving a model to a point of the grid: centre + x * xdirection (+ y * ydirection), one tensor
at a time, computed in float32 and rounded once into the model's own tensors.

The directions come from a source (directions.sources: held, read from the file, or regenerated)
that hands them a block of rows at a time, so a move never needs a direction whole; plain lists
of tensors (the Python API's and the tests' way) are accepted too.
"""

import torch

from losslandscape.directions import sources, subsets


def point_tensor(centre, dx, dy, x, y):
    """centre + x * dx (+ y * dy) as a new float32 tensor (the centre's own dtype when that is
    float32 or wider): the order of operations the suite always used."""
    work = centre.float() if centre.dtype in subsets.LOW_PRECISION else centre.clone()
    if dx is not None:
        work.add_(dx, alpha=x)
    if dy is not None:
        work.add_(dy, alpha=y)
    return work


def _set(target, centre, source, i, x, y):
    """target <- centre + x * dx (+ y * dy) for entry ``i`` of ``source``, a block of rows at a
    time (the source's row_blocks: a streamed or regenerated block lives in a reused buffer; a
    held direction is one block): in place
    when the dtypes agree, else computed in float32 and rounded once. Elementwise, so the values
    are those of the whole-tensor operations in the same order."""
    low_precision = centre.dtype in subsets.LOW_PRECISION
    in_place = target.dtype == centre.dtype and not low_precision
    for b, rows in enumerate(source.row_blocks(tuple(target.shape))):
        part, origin = target[rows], centre[rows]
        work = part if in_place else (origin.float() if low_precision else origin.clone())
        if in_place:
            part.copy_(origin)
        for axis, step in (('x', x), ('y', y)):
            direction = source.block(axis, i, b, rows) if axis == 'x' or source.is_2d else None
            if direction is not None:
                work.add_(direction, alpha=step)
        if not in_place:
            part.copy_(work)


def as_source(xdirection, ydirection=None):
    """A direction source for ``xdirection`` (a source already, or a list of tensors)."""
    if hasattr(xdirection, 'entry'):
        return xdirection
    return sources.ResidentDirections(xdirection, ydirection)


@torch.no_grad()
def set_weights(net, weights, xdirection, ydirection=None, x=0.0, y=0.0):
    """Parameters <- weights + x * xdirection (+ y * ydirection)."""
    source = as_source(xdirection, ydirection)
    for i, (p, w) in enumerate(zip(net.parameters(), weights)):
        _set(p, w, source, i, x, y)


@torch.no_grad()
def set_states(net, states, xdirection, ydirection=None, x=0.0, y=0.0):
    """Every floating state_dict entry <- states + x * xdirection (+ y * ydirection)."""
    source = as_source(xdirection, ydirection)
    for i, (t, s) in enumerate(zip(net.state_dict().values(), states)):
        if t.is_floating_point():
            _set(t, s, source, i, x, y)
        else:
            t.copy_(s)


def move(net, dir_type, base, xdirection, ydirection=None, x=0.0, y=0.0):
    """The model at base + x * xdirection (+ y * ydirection); ``xdirection`` may be a source
    (directions.sources), ``ydirection`` then None."""
    (set_weights if dir_type == 'weights' else set_states)(net, base, xdirection, ydirection, x, y)
