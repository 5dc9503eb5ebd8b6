"""Directions in seed form: a recipe instead of tensors, regenerated one tensor at a time on the
evaluation device (--dir_mode seed).

A random direction's entry i is drawn from a generator of its own, seeded by (seed, axis, i), so
any entry can be made without the ones before it: at every point, each tensor's direction is
drawn, normalised against the centre's tensor (directions.normalization's rules) and used, and
no direction is ever held whole. The values differ from those of a direction file made with
--dir_mode resident or stream (one generator drawn through every tensor in order, the original
code's values), so a seed-form file is its own kind of direction, recorded as such.

The recipe names the generator's device type (a CUDA generator draws other numbers than the
CPU's) and the torch version, and the file records the DIRECTION_ID of the values made (the same
hash a file of those tensors would get). A regeneration that gives other values -- another
device type, another PyTorch whose generator changed, another centre the normalisation reads --
is refused in one line instead of drawing a surface along other directions.
"""
import hashlib

import torch

from losslandscape.directions import normalization, subsets
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout

RECIPE_VERSION = 1
AXES = ('x', 'y')


def entry_seed(seed, axis, i):
    """The generator seed of entry ``i`` of ``axis``: independent streams per entry."""
    digest = hashlib.sha256(f'losslandscape-direction:{seed}:{axis}:{i}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def make_recipe(spec, device):
    """The recipe of the random directions DirectionSpec ``spec`` asks for, drawn on ``device``."""
    if spec.model_file2 or spec.model_file3:
        raise UsageError('--dir_mode seed makes random directions only: a direction towards --model_file2 or '
                         '--model_file3 is made from their tensors (use --dir_mode stream for large models)')
    return {'version': RECIPE_VERSION, 'seed': spec.seed, 'dir_type': spec.dir_type, 'is_2d': spec.is_2d,
            'xnorm': spec.xnorm, 'xignore': spec.xignore, 'ynorm': spec.ynorm, 'yignore': spec.yignore,
            'same_dir': spec.same_dir, 'include_params': spec.include_params or '',
            'exclude_params': spec.exclude_params or '', 'device_type': torch.device(device).type,
            'torch': torch.__version__}


class SeededDirections:
    """The directions of ``recipe`` for the model ``net`` whose centre is ``centre`` (its tensors,
    on the evaluation device): ``entry(axis, i)`` is entry i's direction (float32, on the centre
    tensor's device), or None where it is zero (ignored, outside the subset, an integer buffer)."""

    def __init__(self, recipe, net, centre, what='direction file'):
        if recipe.get('version') != RECIPE_VERSION:
            raise UsageError(f'{what}: seed-form recipe version {recipe.get("version")!r} is not one this '
                             f'version of the suite makes ({RECIPE_VERSION})')
        self.recipe, self.centre = recipe, centre
        names = subsets.entry_names(net, recipe['dir_type'])
        if len(names) != len(centre):
            raise UsageError(f'{what} does not fit the model ({len(names)} entries, centre {len(centre)})')
        self.keep = subsets.selected_entries(names, recipe['include_params'], recipe['exclude_params'],
                                             recipe['dir_type'])
        # 'states' of a model with tied weights: every name of a tied tensor moves it the same way.
        self.alias = {}
        if recipe['dir_type'] == 'states':
            for group in subsets.tied_entries(net):
                if len({self.keep[i] for i in group}) > 1:
                    subsets.tie_state_directions(net, self.keep)   # raises the usual message
                self.alias.update({i: group[-1] for i in group[:-1]})

    def check_device(self, device, what):
        made_on, here = self.recipe['device_type'], torch.device(device).type
        if made_on != here:
            raise UsageError(f'{what} was made on {made_on} and this run evaluates on {here}: its random '
                             f'directions regenerate only on {made_on} (run there, or make a new file here)')

    def entry(self, axis, i):
        if axis == 'y' and self.recipe['same_dir']:
            axis = 'x'
        i = self.alias.get(i, i)
        w = self.centre[i]
        if not self.keep[i] or not w.is_floating_point():
            return None
        norm, ignore = self.recipe[axis + 'norm'], self.recipe[axis + 'ignore']
        if w.dim() <= 1:
            return None if ignore == 'biasbn' else w.detach().float()
        generator = torch.Generator(device=w.device).manual_seed(entry_seed(self.recipe['seed'], axis, i))
        d = torch.randn(tuple(w.shape), generator=generator, device=w.device, dtype=torch.float32)
        normalization.normalize_direction(d, w, norm)
        return d

    def axes(self):
        return AXES if self.recipe['is_2d'] else AXES[:1]

    def content_ids(self):
        """{'x': id of x, 'xy': id of x and y} of the values regenerated here (one tensor at a time)."""
        digest, ids = hdf5_layout.ContentDigest(), {}
        for axis in AXES:
            if axis not in self.axes():
                break
            digest.axis(axis)
            for i, w in enumerate(self.centre):
                d = self.entry(axis, i)
                if d is None:
                    digest.zeros(tuple(w.shape))
                else:
                    digest.tensor(d.cpu().numpy())
            ids['x' if axis == 'x' else 'xy'] = digest.hexdigest()
        return ids


def write_seed_file(path, spec, net, centre, device, attrs):
    """Make the seed-form direction file ``path`` of ``spec`` for the model at ``centre``."""
    seeded = SeededDirections(make_recipe(spec, device), net, centre)
    hdf5_layout.write_seed_direction_file(path, seeded.recipe, seeded.content_ids(), attrs)


def check_regenerates(reader, net, centre, device, with_y):
    """The SeededDirections of seed-form file ``reader`` (hdf5_layout.DirectionReader), refused in
    one line when this run cannot make the values the file records."""
    what = f'direction file {reader.path!r}'
    seeded = SeededDirections(reader.recipe, net, centre, what)
    seeded.check_device(device, what)
    stored = reader.content_id(with_y)
    made = seeded.content_ids().get('xy' if with_y else 'x')
    if made != stored:
        raise UsageError(f'{what}: its directions regenerate to other values here (torch {torch.__version__}, '
                         f'recipe made with torch {reader.recipe.get("torch")} on {reader.recipe["device_type"]}; '
                         'or another model): refused rather than drawing along other directions')
    return seeded
