"""Directions in weight space: making them, normalising them, naming their files, moving a model.

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
tensors (a block, the attention layers, adapter weights): every other entry's direction is zero.

Models stored in bfloat16 or float16 keep a float32 copy of the centre (get_base), and a point's
tensors are computed in float32 and rounded once, so moving along a direction never accumulates
low-precision rounding.
"""
import dataclasses
import fnmatch
import os
from os.path import commonprefix

import torch

from errors import UsageError
import hdf5_layout

DIR_TYPES = ('weights', 'states')
NORMS = ('filter', 'layer', 'weight', 'dfilter', 'dlayer')
IGNORES = ('biasbn',)
NORM_EPS = 1e-10
BASE_SEED = 0   # direction seed = BASE_SEED + --idx, so --idx gives independent directions


# ----------------------------------------------------------------------------- base points

LOW_PRECISION = (torch.bfloat16, torch.float16)


def _centre_copy(t):
    """A copy of ``t`` to move from: float32 for low-precision tensors (see the module docstring)."""
    t = t.detach().clone()
    return t.float() if t.dtype in LOW_PRECISION else t


def get_weights(net):
    """Copies of the parameters, in net.parameters() order."""
    return [_centre_copy(p) for p in net.parameters()]


def get_states(net):
    """Copies of every state_dict() entry, in order (buffers included)."""
    return [_centre_copy(t) for t in net.state_dict().values()]


def entry_names(net, dir_type):
    """The names of the tensors a direction has, in its order."""
    return [n for n, _ in net.named_parameters()] if dir_type == 'weights' else list(net.state_dict())


def split_patterns(patterns):
    return [p.strip() for p in (patterns or '').split(',') if p.strip()]


def selected_entries(names, include='', exclude='', dir_type='weights'):
    """[bool per name]: the entries --include_params/--exclude_params keep (all by default).
    UsageError for a pattern that matches no name, or a selection that keeps nothing."""
    keep = [True] * len(names)
    what = 'parameter' if dir_type == 'weights' else 'state_dict entry'
    for flag, patterns in (('--include_params', split_patterns(include)), ('--exclude_params', split_patterns(exclude))):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                example = ', '.join(names[:3]) + (', ...' if len(names) > 3 else '')
                raise UsageError(f'{flag} pattern {pattern!r} matches no {what} name of the model ({example})')
        if patterns:
            hits = [any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in names]
            keep = [k and h for k, h in zip(keep, hits)] if flag == '--include_params' else \
                [k and not h for k, h in zip(keep, hits)]
    if not any(keep):
        raise UsageError('--include_params/--exclude_params leave no tensor for the directions to move')
    return keep


def tied_entries(net):
    """Groups of state_dict() positions holding one tensor (tied weights: a language model's input
    and output embeddings, say), each group in state_dict order; named_parameters() lists such a
    tensor once, state_dict() under every name."""
    positions = {}
    for i, tensor in enumerate(net.state_dict(keep_vars=True).values()):
        positions.setdefault(id(tensor), []).append(i)
    return [group for group in positions.values() if len(group) > 1]


def tie_state_directions(net, keep, *directions):
    """'states' directions of a model with tied weights: set_states writes a shared tensor once per
    name, so the last name's entry is the one that moves it; the earlier names' entries get a copy
    of it (in place), so the direction file says how the tensor moves. A parameter subset that keeps
    some names of a tied tensor but not the others would leave it where the last name says: refused."""
    names = list(net.state_dict())
    for group in tied_entries(net):
        if len({keep[i] for i in group}) > 1:
            raise UsageError('--include_params/--exclude_params: ' + ', '.join(repr(names[i]) for i in group)
                             + ' are one tensor (tied weights) under --dir_type states: keep all of them or none')
        for direction in directions:
            if direction is not None:
                for i in group[:-1]:
                    direction[i].copy_(direction[group[-1]])


def restrict(direction, keep):
    """Zero the direction of every entry not kept (in place)."""
    for d, kept in zip(direction, keep):
        if not kept:
            d.zero_()
    return direction


def has_statistics(net):
    """True when the model has floating buffers (BatchNorm running statistics) that 'weights'
    directions leave where they are."""
    return any(b.is_floating_point() for b in net.buffers())


def get_base(net, dir_type):
    return get_weights(net) if dir_type == 'weights' else get_states(net)


# ----------------------------------------------------------------------------- directions

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


def normalize_directions(direction, base, norm=None, ignore=None):
    """Apply ``norm`` to every dim > 1 tensor and the biasbn rule to the rest (in place)."""
    for d, w in zip(direction, base):
        if not w.is_floating_point():
            d.zero_()                      # integer buffers never move
        elif d.dim() <= 1:
            if ignore == 'biasbn':
                d.zero_()
            else:
                d.copy_(w)
        else:
            normalize_direction(d, w, norm)
    return direction


def make_random_direction(base, generator, norm=None, ignore=None):
    d = random_direction(base, generator)
    return normalize_directions(d, [w.cpu() for w in base], norm, ignore)


def target_direction(base, other_base):
    """other - base: the straight line from one model to another (x = 0 and x = 1)."""
    return [(o.cpu().double() - b.cpu().double()).float() for b, o in zip(base, other_base)]


def check_direction_fits(direction, base, dir_file, axis):
    """Raise UsageError when a stored direction does not fit the model's tensors."""
    if len(direction) != len(base):
        raise UsageError(f'direction file {dir_file!r} does not fit the model: its {axis} direction has '
                         f'{len(direction)} tensors, the model has {len(base)} '
                         '(a direction file for another model, or another --dir_type?)')
    for i, (d, w) in enumerate(zip(direction, base)):
        if tuple(d.shape) != tuple(w.shape):
            raise UsageError(f'direction file {dir_file!r} does not fit the model: {axis} tensor {i} has '
                             f'shape {tuple(d.shape)}, the model needs {tuple(w.shape)}')


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


# ----------------------------------------------------------------------------- file names

def _flattened(folder):
    """A folder path as one file-name part ('runs/b' -> 'runs_b'), so a name built from several
    checkpoints' paths always lands in an existing folder. The original code kept the separators,
    which only worked when the checkpoints sat in the working folder."""
    return folder.strip(os.sep).replace(os.sep, '_')


def _pair_name(file1, file2):
    """How the original names a direction between two checkpoints."""
    folder1, folder2 = os.path.dirname(file1), os.path.dirname(file2)
    if folder1 == folder2:
        return file1 + '_' + os.path.basename(file2)
    shared = os.path.dirname(commonprefix([file1, file2]) + 'x')  # the shared folder ('' or '/' when none)
    sub2 = os.path.relpath(folder2, shared) if shared else folder2
    return folder1 + '_' + os.path.basename(file1) + '_' + _flattened(sub2) + '_' + os.path.basename(file2)


def _third_name(file1, file3):
    """What the original appends for the y direction towards a third checkpoint."""
    if os.path.dirname(file1) == os.path.dirname(file3):
        return os.path.basename(file3)
    return _flattened(os.path.dirname(file3)) + '_' + os.path.basename(file3)


@dataclasses.dataclass(frozen=True)
class DirectionSpec:
    """How a run's directions are made, named and recorded: the direction flags of the grid
    scripts, and the checkpoints the default file names are built from."""
    model_file: str = ''
    model_file2: str = ''
    model_file3: str = ''
    dir_file: str = ''
    dir_type: str = 'weights'
    xnorm: str = None
    xignore: str = None
    ynorm: str = None
    yignore: str = None
    same_dir: bool = False
    idx: int = 0
    is_2d: bool = False
    include_params: str = ''
    exclude_params: str = ''
    model: str = ''
    name_root: str = ''   # what default file names start from, when not --model_file (landscape.py)

    @classmethod
    def from_args(cls, args):
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**{**fields, 'is_2d': bool(getattr(args, 'y', None))})

    @property
    def seed(self):
        return BASE_SEED + self.idx


def name_direction_file(spec):
    """Default direction file name, the original's scheme: model_file (or the pair of models),
    dir_type, then the x and y normalisation options, then idx (and the parameter subset). It
    lies in the folder of --model_file (or of its folder, for models in different folders)."""
    if spec.dir_file:
        return spec.dir_file
    root = spec.name_root or spec.model_file
    name = _pair_name(root, spec.model_file2) if spec.model_file2 else root
    name += '_' + spec.dir_type
    if spec.xignore:
        name += '_xignore=' + spec.xignore
    if spec.xnorm:
        name += '_xnorm=' + spec.xnorm
    if spec.is_2d:
        if spec.model_file3:
            name += _third_name(spec.model_file, spec.model_file3)
        else:
            if spec.yignore:
                name += '_yignore=' + spec.yignore
            if spec.ynorm:
                name += '_ynorm=' + spec.ynorm
            if spec.same_dir:
                name += '_same_dir'
    if spec.idx > 0:
        name += '_idx=' + str(spec.idx)
    return name + subset_suffix(spec.include_params, spec.exclude_params) + '.h5'


def subset_suffix(include_params, exclude_params):
    """The '_include=...' / '_exclude=...' part of a default file name (empty for all parameters)."""
    name = ''
    for label, patterns in (('include', include_params), ('exclude', exclude_params)):
        if patterns:
            name += f'_{label}=' + ','.join(split_patterns(patterns)).replace(os.sep, '_')
    return name


def name_surface_file(dir_file, grid, raw_data=False, data_split=1, split_idx=0):
    """Default surface file name: dir_file + _[xmin,xmax,nx]x[ymin,ymax,ny] + data options."""
    name = dir_file + grid.label()
    if raw_data:
        name += '_rawdata'
    if data_split > 1:
        name += f'_datasplit={data_split}_splitidx={split_idx}'
    return name + '.h5'


# ----------------------------------------------------------------------------- direction files

def build_directions(spec, net, base, load_model):
    """The (x, y) directions ``spec`` asks for. ``load_model(path, flag)`` loads another
    checkpoint into a fresh copy of the model (for --model_file2/3)."""
    generator = torch.Generator().manual_seed(spec.seed)
    keep = selected_entries(entry_names(net, spec.dir_type), spec.include_params, spec.exclude_params, spec.dir_type)
    if spec.model_file2:
        xdirection = target_direction(base, get_base(load_model(spec.model_file2, '--model_file2'), spec.dir_type))
    else:
        xdirection = make_random_direction(base, generator, spec.xnorm, spec.xignore)
    ydirection = None
    if spec.is_2d:
        if spec.model_file3:
            ydirection = target_direction(base, get_base(load_model(spec.model_file3, '--model_file3'), spec.dir_type))
        elif spec.same_dir:
            ydirection = [d.clone() for d in xdirection]
        else:
            ydirection = make_random_direction(base, generator, spec.ynorm, spec.yignore)
    if spec.dir_type == 'states':
        tie_state_directions(net, keep, xdirection, ydirection)
    return restrict(xdirection, keep), ydirection if ydirection is None else restrict(ydirection, keep)


DIRECTION_ATTR_FIELDS = ('model', 'model_file', 'model_file2', 'model_file3', 'dir_type', 'xnorm', 'ynorm',
                         'xignore', 'yignore', 'same_dir', 'idx', 'include_params', 'exclude_params')


def direction_attrs(spec):
    attrs = {k: getattr(spec, k) for k in DIRECTION_ATTR_FIELDS}
    attrs['seed'] = spec.seed
    return attrs


def setup_direction_file(spec, dir_file, net, base, load_model):
    """Make sure ``dir_file`` holds the directions the run needs; create it if absent.

    An existing file is reused as it is (its tensors are checked against the model when loaded).
    A file made for 1D that now needs a y direction gets one, provided its x direction is the one
    these options produce (so the 1D surfaces that point at it stay valid)."""
    if os.path.exists(dir_file):
        xdirection, ydirection, _ = hdf5_layout.read_direction_file(dir_file)
        if ydirection is not None or not spec.is_2d:
            return
        if spec.dir_file:
            raise UsageError(f'--dir_file {dir_file!r} has no y direction, which a 2D grid (--y) needs')
        new_x, new_y = build_directions(spec, net, base, load_model)
        if not all(torch.equal(torch.as_tensor(a), b) for a, b in zip(xdirection, new_x)):
            raise UsageError(f'direction file {dir_file!r} has no y direction and its x direction is not '
                             'the one these options make; remove it or pass --dir_file')
        attrs = direction_attrs(spec)
        creation_tag = hdf5_layout.read_creation_tag(dir_file)
        if creation_tag is not None:   # keeps 1D surfaces of the suite's first versions valid
            attrs[hdf5_layout.DIRECTION_ID] = creation_tag
        hdf5_layout.write_direction_file(dir_file, new_x, new_y, attrs=attrs)
        return
    if spec.dir_file:
        raise UsageError(f'--dir_file {dir_file!r} does not exist')
    xdirection, ydirection = build_directions(spec, net, base, load_model)
    hdf5_layout.write_direction_file(dir_file, xdirection, ydirection, attrs=direction_attrs(spec))


def load_directions(dir_file, base, need_y, device):
    """Read, check and place on ``device`` the directions of ``dir_file``."""
    xdirection, ydirection, _ = hdf5_layout.read_direction_file(dir_file)
    check_direction_fits(xdirection, base, dir_file, 'x')
    as_tensors = lambda d: [torch.as_tensor(a, dtype=torch.float32).to(device) for a in d]
    if not need_y:
        return as_tensors(xdirection), None
    if ydirection is None:
        raise UsageError(f'direction file {dir_file!r} has no y direction, which a 2D grid (--y) needs')
    check_direction_fits(ydirection, base, dir_file, 'y')
    return as_tensors(xdirection), as_tensors(ydirection)
