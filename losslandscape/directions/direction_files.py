"""Direction files: their names (the original code's), what they record, making or reusing one
for a run, and loading its directions for a model."""
import dataclasses
import os
from os.path import commonprefix

import torch

from losslandscape.directions import normalization, subsets
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout

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
    name_root: str = ''   # what default file names start from, when not --model_file (api.py)

    @classmethod
    def from_args(cls, args):
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**{**fields, 'is_2d': bool(getattr(args, 'y', None))})

    @property
    def seed(self):
        return normalization.BASE_SEED + self.idx


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
            name += f'_{label}=' + ','.join(subsets.split_patterns(patterns)).replace(os.sep, '_')
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
    keep = subsets.selected_entries(subsets.entry_names(net, spec.dir_type), spec.include_params, spec.exclude_params, spec.dir_type)
    if spec.model_file2:
        xdirection = normalization.target_direction(base, subsets.get_base(load_model(spec.model_file2, '--model_file2'), spec.dir_type))
    else:
        xdirection = normalization.make_random_direction(base, generator, spec.xnorm, spec.xignore)
    ydirection = None
    if spec.is_2d:
        if spec.model_file3:
            ydirection = normalization.target_direction(base, subsets.get_base(load_model(spec.model_file3, '--model_file3'), spec.dir_type))
        elif spec.same_dir:
            ydirection = [d.clone() for d in xdirection]
        else:
            ydirection = normalization.make_random_direction(base, generator, spec.ynorm, spec.yignore)
    if spec.dir_type == 'states':
        subsets.tie_state_directions(net, keep, xdirection, ydirection)
    return subsets.restrict(xdirection, keep), ydirection if ydirection is None else subsets.restrict(ydirection, keep)


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
    normalization.check_direction_fits(xdirection, base, dir_file, 'x')
    as_tensors = lambda d: [torch.as_tensor(a, dtype=torch.float32).to(device) for a in d]
    if not need_y:
        return as_tensors(xdirection), None
    if ydirection is None:
        raise UsageError(f'direction file {dir_file!r} has no y direction, which a 2D grid (--y) needs')
    normalization.check_direction_fits(ydirection, base, dir_file, 'y')
    return as_tensors(xdirection), as_tensors(ydirection)
