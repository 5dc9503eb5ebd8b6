"""Making directions in weight space: random (seeded by --idx), towards another model, and
normalised as the paper does; their conventions, which the rest of the directions package follows.

A direction is a list of tensors, one per entry of the model's base:
  'weights' -- net.parameters() in order; BatchNorm running statistics stay as trained.
  'states'  -- state_dict() in order, buffers included; the whole state moves. Integer buffers
               (num_batches_tracked) have a zero direction: a step counter has no direction.

Normalisation (Li et al. 2018, section 4), for every tensor with dim > 1, with d the direction
and w the weights, and "filter" meaning a slice along dim 0 (a conv output channel, or the
incoming weights of one neuron of a linear layer):
  filter  : d_i <- d_i * ||w_i|| / ||d_i||     (the paper's filter normalization)
  layer   : d   <- d   * ||w||   / ||d||
  weight  : d   <- d * w                       (elementwise)
  dfilter : d_i <- d_i / ||d_i||
  dlayer  : d   <- d   / ||d||
Tensors with dim <= 1 (biases, BatchNorm parameters and statistics): with ignore='biasbn' their
direction is zero; otherwise it equals the weights themselves (so a step scales them).

--include_params / --exclude_params (comma-separated fnmatch patterns over the names of the
parameters, or of the state_dict entries for 'states') restrict both directions to a subset of the
tensors (a block, the attention layers, adapter weights): every other entry's direction is zero
(directions.subsets).

Models stored in bfloat16 or float16 keep their centre in its own dtype (exact), and a point's
tensors are computed in float32 from it and rounded once (directions.moving), so moving along a
direction never accumulates low-precision rounding. Files: directions.direction_files; where a
run's directions live while it runs (--dir_mode): directions.sources.
"""
import torch

from losslandscape.errors import UsageError

NORMS = ('filter', 'layer', 'weight', 'dfilter', 'dlayer')
IGNORES = ('biasbn',)
NORM_EPS = 1e-10
BASE_SEED = 0   # direction seed = BASE_SEED + --idx, so --idx gives independent directions


def random_direction(base, generator):
    """Gaussian tensors shaped like ``base`` (float32, drawn on the CPU so every device and
    every run with the same seed gets the same direction)."""
    return [torch.randn(tuple(w.shape), generator=generator, dtype=torch.float32) for w in base]


def normalize_direction(d, w, norm):
    """Normalise one direction tensor ``d`` (dim > 1) against weights ``w`` in place."""
    if norm == 'filter':
        d_flat, w_flat = d.view(d.shape[0], -1), w.reshape(w.shape[0], -1).to(d.dtype)
        d_flat.mul_((w_flat.norm(dim=1) / (d_flat.norm(dim=1) + NORM_EPS)).unsqueeze(1))
    elif norm == 'layer':
        d.mul_(w.to(d.dtype).norm() / (d.norm() + NORM_EPS))
    elif norm == 'weight':
        d.mul_(w.to(d.dtype))
    elif norm == 'dfilter':
        d_flat = d.view(d.shape[0], -1)
        d_flat.div_(d_flat.norm(dim=1, keepdim=True) + NORM_EPS)
    elif norm == 'dlayer':
        d.div_(d.norm() + NORM_EPS)
    elif norm is not None:
        raise ValueError(f'unknown norm {norm!r}; expected one of {NORMS}')


def normalize_entry(d, w, norm=None, ignore=None):
    """One entry's direction ``d`` made what the conventions above say for weights ``w`` (in place)."""
    if not w.is_floating_point():
        d.zero_()                      # integer buffers never move
    elif d.dim() <= 1:
        if ignore == 'biasbn':
            d.zero_()
        else:
            d.copy_(w)
    else:
        normalize_direction(d, w, norm)
    return d


def normalize_directions(direction, base, norm=None, ignore=None):
    """Apply ``norm`` to every dim > 1 tensor and the biasbn rule to the rest (in place)."""
    for d, w in zip(direction, base):
        normalize_entry(d, w, norm, ignore)
    return direction


def make_random_direction(base, generator, norm=None, ignore=None):
    d = random_direction(base, generator)
    return normalize_directions(d, [w.cpu() for w in base], norm, ignore)


def target_entry(w, other):
    """other - w for one entry: the straight line from one model to another (x = 0 and x = 1)."""
    return (other.cpu().double() - w.cpu().double()).float()


def target_direction(base, other_base):
    """other - base for every entry."""
    return [target_entry(b, o) for b, o in zip(base, other_base)]


def check_direction_fits(direction, base, dir_file, axis):
    """Raise UsageError when a stored direction (its tensors, or their shapes as tuples) does not
    fit the model's tensors."""
    if len(direction) != len(base):
        raise UsageError(f'direction file {dir_file!r} does not fit the model: its {axis} direction has '
                         f'{len(direction)} tensors, the model has {len(base)} '
                         '(a direction file for another model, or another --dir_type?)')
    for i, (d, w) in enumerate(zip(direction, base)):
        shape = tuple(d) if isinstance(d, tuple) else tuple(d.shape)   # a tensor, or just its shape
        if shape != tuple(w.shape):
            raise UsageError(f'direction file {dir_file!r} does not fit the model: {axis} tensor {i} has '
                             f'shape {shape}, the model needs {tuple(w.shape)}')
