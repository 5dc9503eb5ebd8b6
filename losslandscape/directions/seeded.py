"""Directions in seed form: a recipe instead of tensors, regenerated one tensor at a time on the
evaluation device (--dir_mode seed).

A random direction's entry i is drawn a block of rows at a time (directions.sources.row_blocks,
at most 16 MB each), each block from a generator of its own seeded by (seed, axis, i, block), so
any block can be made without the ones before it: at every point each block is drawn,
normalised against the centre's rows (directions.normalization's rules; the whole-tensor norms
of 'layer' and 'dlayer' computed once from the blocks) and used, and no direction is ever held
whole, nor even one of its tensors. The values differ from those of a direction file made with
--dir_mode resident or stream (one generator drawn through every tensor in order, the original
code's values), so a seed-form file is its own kind of direction, recorded as such.

The recipe names the generator's device type (a CUDA generator draws other numbers than the
CPU's) and the torch version, and the file records the DIRECTION_ID of the values made (the same
hash a file of those tensors would get). A regeneration that gives other values -- another
device type, another PyTorch whose generator changed, another centre the normalisation reads --
is refused in one line instead of drawing a surface along other directions.
"""
import hashlib
import math

import torch

from losslandscape.directions import normalization, sources, subsets
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout

RECIPE_VERSION = 1
AXES = ('x', 'y')


def entry_seed(seed, axis, i, block):
    """The generator seed of block ``block`` of entry ``i`` of ``axis``: independent streams per
    block, so any block of any entry is drawn without the others."""
    digest = hashlib.sha256(f'losslandscape-direction:{seed}:{axis}:{i}:{block}'.encode()).digest()
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
            'block_elements': sources.BLOCK_ELEMENTS, 'torch': torch.__version__}


class SeededDirections:
    """The directions of ``recipe`` for the model ``net`` whose centre is ``centre`` (its tensors,
    on the evaluation device): ``entry(axis, i)`` is entry i's direction (float32, on the centre
    tensor's device, in a buffer the next call reuses), or None where it is zero (ignored, outside
    the subset, an integer buffer)."""

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
        self.buffers = {}   # (axis, device) -> the reused buffer of the largest block there
        self.norms = {}     # (axis, i) -> the whole entry's norms, for 'layer' and 'dlayer'
        self.alias = {}
        if recipe['dir_type'] == 'states':
            subsets.refuse_split_ties(net, self.keep)
            for group in subsets.tied_entries(net):
                self.alias.update({i: group[-1] for i in group[:-1]})

    def check_device(self, device, what):
        made_on, here = self.recipe['device_type'], torch.device(device).type
        if made_on != here:
            raise UsageError(f'{what} was made on {made_on} and this run evaluates on {here}: its random '
                             f'directions regenerate only on {made_on} (run there, or make a new file here)')

    def row_blocks(self, shape):
        """The recipe's blocks (their seeds depend on them, so they are the recipe's, not today's)."""
        return sources.row_blocks(shape, self.recipe['block_elements'])

    def _resolve(self, axis, i):
        """(axis, i) whose values entry i of ``axis`` takes: the x direction for --same_dir, the
        last name of a tied tensor."""
        return ('x' if axis == 'y' and self.recipe['same_dir'] else axis), self.alias.get(i, i)

    def is_zero(self, axis, i):
        axis, i = self._resolve(axis, i)
        w = self.centre[i]
        return not self.keep[i] or not w.is_floating_point() or \
            (w.dim() <= 1 and self.recipe[axis + 'ignore'] == 'biasbn')

    def block(self, axis, i, b, rows):
        """Block b (rows ``rows`` of sources.row_blocks) of entry i: drawn from a generator of its
        own, seeded by (seed, axis, i, b), into the axis's reused buffer, then normalised
        (directions.normalization's rules; 'layer' and 'dlayer' by the whole entry's norms)."""
        if self.is_zero(axis, i):
            return None
        buffer_axis = axis
        axis, i = self._resolve(axis, i)
        w = self.centre[i]
        if w.dim() <= 1:   # a direction equal to the weights themselves
            return w[rows].float()
        shape = sources.block_shape(w.shape, rows)
        d = self._buffer(buffer_axis, w.device)[:math.prod(shape)].view(shape)
        self._draw(d, axis, i, b)
        norm, part = self.recipe[axis + 'norm'], w[rows]
        if norm in ('layer', 'dlayer'):
            d_norm, w_norm = self._whole_norms(axis, i)
            d.mul_((w_norm if norm == 'layer' else 1.0) / (d_norm + normalization.NORM_EPS))
        else:
            normalization.normalize_direction(d, part, norm)
        return d

    def _draw(self, d, axis, i, b):
        generator = torch.Generator(device=d.device).manual_seed(entry_seed(self.recipe['seed'], axis, i, b))
        torch.randn(tuple(d.shape), generator=generator, dtype=torch.float32, out=d)

    def _whole_norms(self, axis, i):
        """(||d||, ||w||) of entry i, for the whole-tensor normalisations: the drawn blocks'
        sums of squares, once (cached)."""
        key = (axis, i)
        if key not in self.norms:
            w = self.centre[i]
            total = 0.0
            for b, rows in enumerate(self.row_blocks(tuple(w.shape))):
                shape = sources.block_shape(w.shape, rows)
                d = self._buffer('norms', w.device)[:math.prod(shape)].view(shape)
                self._draw(d, axis, i, b)
                total += float(d.double().square().sum())
            self.norms[key] = (math.sqrt(total), float(w.float().norm()))
        return self.norms[key]

    def _buffer(self, name, device):
        """A buffer of the largest block on ``device``, one per name (axis), reused."""
        key = (name, device)
        if key not in self.buffers:
            largest = max((math.prod(sources.block_shape(w.shape, rows)) for w in self.centre
                           if w.device == device for rows in self.row_blocks(tuple(w.shape))), default=0)
            self.buffers[key] = torch.empty(largest, dtype=torch.float32, device=device)
        return self.buffers[key]

    def entry(self, axis, i):
        """Entry i whole (new memory), or None where it is zero."""
        if self.is_zero(axis, i):
            return None
        w = self.centre[i]
        whole = torch.empty(tuple(w.shape), dtype=torch.float32, device=w.device)
        for b, rows in enumerate(self.row_blocks(tuple(w.shape))):
            whole[rows] = self.block(axis, i, b, rows)
        return whole

    def axes(self):
        return AXES if self.recipe['is_2d'] else AXES[:1]

    def content_ids(self):
        """{'x': id of x, 'xy': id of x and y} of the values regenerated here, hashed block by
        block (the same bytes in the same order as the whole tensors: hdf5_layout.ContentDigest)."""
        digest, ids = hdf5_layout.ContentDigest(), {}
        for axis in self.axes():
            digest.axis(axis)
            for i, w in enumerate(self.centre):
                if self.is_zero(axis, i):
                    digest.zeros(tuple(w.shape))
                    continue
                digest.shape(tuple(w.shape))
                for b, rows in enumerate(self.row_blocks(tuple(w.shape))):
                    digest.bytes(self.block(axis, i, b, rows).cpu().numpy())
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
