"""Direction files: their names (the original code's), what they record, making or reusing one
for a run, and loading its directions for a model."""
import dataclasses
import os
from os.path import commonprefix

import torch

from losslandscape._memory import ReleaseCounter
from losslandscape.directions import normalization, seeded, subsets
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout
from losslandscape.models import checkpoints

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
    seed_form: bool = False   # --dir_mode seed: random directions of the seed-form recipe (directions.seeded)

    @classmethod
    def from_args(cls, args):
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**{**fields, 'is_2d': bool(getattr(args, 'y', None)),
                      'seed_form': getattr(args, 'dir_mode', None) == 'seed'})

    @property
    def seed(self):
        return normalization.BASE_SEED + self.idx


def name_direction_file(spec):
    """Default direction file name, the original's scheme: model_file (or the pair of models),
    dir_type, then the x and y normalisation options, then idx ('_seedform' for --dir_mode seed,
    and the parameter subset). It lies in the folder of --model_file (or of its folder, for models
    in different folders)."""
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
    if spec.seed_form:   # other values than the tensor form's: never the same file
        name += '_seedform'
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

def _other_model(path, flag, net, dir_type, load_model):
    """entry(i) -> the tensor of entry i of the checkpoint ``path``, read one at a time where the
    checkpoint's names are the model's (no second model in memory); else the checkpoint loaded
    into a copy of the model by ``load_model`` (which also says what does not fit)."""
    names = subsets.entry_names(net, dir_type)
    tied = {i: group for group in (subsets.tied_entries(net) if dir_type == 'states' else []) for i in group}
    try:
        checkpoint = checkpoints.open_checkpoint(path, flag)
    except UsageError:
        checkpoint = None
    if checkpoint is not None:
        stored = set(checkpoint.names())
        sources = []
        for i, name in enumerate(names):
            # A tied tensor may be stored under one of its names only (Hugging Face folders keep one).
            found = next((names[j] for j in tied.get(i, [i]) if names[j] in stored), None)
            sources.append(found)
        shapes = dict(zip(names, (tuple(t.shape) for t in subsets.entry_tensors(net, dir_type))))
        if all(found is not None and checkpoint.shape(found) == shapes[found] for found in sources):
            return checkpoint, lambda i: checkpoint.tensor(sources[i])
        checkpoint.close()
    other = subsets.get_base(load_model(path, flag), dir_type)
    return None, lambda i: other[i]


def write_stored_directions(path, spec, net, base, load_model, attrs):
    """Make the direction file ``path`` of ``spec`` tensor by tensor: each entry is made, written
    and dropped, so the directions are never held whole (a 7B model's pair is 56 GB). The values
    are those the suite always made: one CPU generator seeded by --idx drawn through every entry
    in order (x, then y), normalised entry by entry; entries outside --include_params are written
    as implied zeros (the file holds only the subset's bytes)."""
    generator = torch.Generator().manual_seed(spec.seed)
    keep = subsets.selected_entries(subsets.entry_names(net, spec.dir_type), spec.include_params,
                                    spec.exclude_params, spec.dir_type)
    groups = subsets.tied_entries(net) if spec.dir_type == 'states' else []
    if groups:
        subsets.refuse_split_ties(net, keep)
    opened, released = [], ReleaseCounter()
    try:
        with hdf5_layout.direction_writer(path, attrs=attrs) as writer:
            axes = [(hdf5_layout.XDIRECTION, spec.model_file2, '--model_file2', spec.xnorm, spec.xignore)]
            if spec.is_2d:
                axes.append((hdf5_layout.YDIRECTION, spec.model_file3, '--model_file3', spec.ynorm, spec.yignore))
            for axis, other_file, flag, norm, ignore in axes:
                other = None
                if other_file:
                    checkpoint, other = _other_model(other_file, flag, net, spec.dir_type, load_model)
                    opened.append(checkpoint)
                for i, w in enumerate(base):
                    if axis == hdf5_layout.YDIRECTION and spec.same_dir and not other_file:
                        writer.add(axis, writer.f[hdf5_layout.XDIRECTION][str(i)][()])
                        continue
                    if other is not None:
                        d = normalization.target_entry(w, other(i))
                    else:   # drawn for every entry, kept or not: the same values as ever
                        d = torch.randn(tuple(w.shape), generator=generator, dtype=torch.float32)
                        normalization.normalize_entry(d, w.cpu(), norm, ignore)
                    writer.add(axis, d.numpy() if keep[i] else hdf5_layout.ImpliedZeros(tuple(w.shape)))
                    released.freed(4 * d.numel())   # what writing it left in the heap goes back
                for group in groups:   # the names of a tied tensor move it as its last name does
                    for i in group[:-1]:
                        if keep[i]:
                            writer.copy(axis, i, group[-1])
    finally:
        for checkpoint in opened:
            if checkpoint is not None:
                checkpoint.close()


DIRECTION_ATTR_FIELDS = ('model', 'model_file', 'model_file2', 'model_file3', 'dir_type', 'xnorm', 'ynorm',
                         'xignore', 'yignore', 'same_dir', 'idx', 'include_params', 'exclude_params')


def direction_attrs(spec):
    attrs = {k: getattr(spec, k) for k in DIRECTION_ATTR_FIELDS}
    attrs['seed'] = spec.seed
    return attrs


def setup_direction_file(spec, dir_file, net, base, load_model, seed_form=False, device='cpu'):
    """Make sure ``dir_file`` holds the directions the run needs; create it if absent (in seed
    form with ``seed_form``: a recipe regenerated on ``device``'s type, directions.seeded).

    An existing file is reused as it is (its tensors are checked against the model when loaded).
    A file made for 1D that now needs a y direction gets one, provided its x direction is the one
    these options produce (so the 1D surfaces that point at it stay valid)."""
    if os.path.exists(dir_file):
        with hdf5_layout.open_direction_file(dir_file) as reader:
            if reader.has(hdf5_layout.YDIRECTION) or not spec.is_2d:
                return
            form, old_x_id = reader.form, reader.content_id(with_y=False)
        if spec.dir_file:
            raise UsageError(f'--dir_file {dir_file!r} has no y direction, which a 2D grid (--y) needs')
        attrs = direction_attrs(spec)
        creation_tag = hdf5_layout.read_creation_tag(dir_file)
        if creation_tag is not None:   # keeps 1D surfaces of the suite's first versions valid
            attrs[hdf5_layout.DIRECTION_ID] = creation_tag
        made = _make_file(spec, dir_file + '.2d' + hdf5_layout.TMP_SUFFIX, net, base, load_model,
                          form == hdf5_layout.SEED_FORM, device, attrs)
        if hdf5_layout.direction_content_id(made, with_y=False) != old_x_id:
            os.remove(made)
            raise UsageError(f'direction file {dir_file!r} has no y direction and its x direction is not '
                             'the one these options make; remove it or pass --dir_file')
        os.replace(made, dir_file)
        return
    if spec.dir_file:
        raise UsageError(f'--dir_file {dir_file!r} does not exist')
    _make_file(spec, dir_file, net, base, load_model, seed_form, device, direction_attrs(spec))


def _make_file(spec, path, net, base, load_model, seed_form, device, attrs):
    if seed_form:
        seeded.write_seed_file(path, spec, net, base, device, attrs)
    else:
        write_stored_directions(path, spec, net, base, load_model, attrs)
    return path
