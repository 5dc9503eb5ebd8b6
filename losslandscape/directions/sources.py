"""Where a run's directions live while it moves the model (--dir_mode).

  resident  both directions held on the evaluation device (the suite's way until now: the fastest
            for a model that fits, and what --points_per_call > 1 needs); entries outside a
            parameter subset are not held at all
  stream    each tensor of each direction read from the direction file at every point, moved to
            its device, used and dropped: a run holds the model and its centre, not the directions
  seed      each tensor regenerated on its device from a seed-form file's recipe at every point
            (directions.seeded): no file to read, nothing held
  auto      resident while both directions fit RESIDENT_BUDGET of the memory free on the
            evaluation device when the run starts (the GPU's free memory, the host's available
            memory: batch_sources.free_memory_bytes, as --data_mode auto); else stream, or seed for
            a seed-form file

For a model of B bytes (float32) the memory a 2D surface holds beside one batch's activations is
about B (the model) + B (its centre) + 2B (the directions, resident only); benchmarks/
bench_memory.py measures it.

A source gives ``block(axis, i, b, rows)``: block b (the rows ``rows``, row_blocks) of entry i's
direction on ``axis`` ('x' or 'y') as a float32 tensor on the device of the model's tensor i, or
None where the entry is zero (outside the subset). A streamed or regenerated block lives in a
buffer of at most BLOCK_ELEMENTS per axis that the next call reuses, so moving the model holds
no direction whole and allocates nothing per point: use it before asking for the next one
(directions.moving does). ``entry(axis, i)`` is the whole entry (new memory: setup, hashing).
"""
import math

import numpy as np
import torch

from losslandscape.data import batch_sources
from losslandscape.directions import normalization, seeded
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout

DIR_MODES = ('auto', 'resident', 'stream', 'seed')
# auto: resident while both directions take at most this share of the free memory (as --data_mode auto)
RESIDENT_BUDGET = batch_sources.RESIDENT_MEMORY_SHARE
AXIS_KEYS = {'x': hdf5_layout.XDIRECTION, 'y': hdf5_layout.YDIRECTION}


BLOCK_ELEMENTS = 1 << 22  # a streamed or regenerated entry is handled in blocks of rows of at most 16 MB


def row_blocks(shape, limit=None):
    """The blocks an entry of ``shape`` is moved in: slices of its rows (dim 0) of at most
    ``limit`` elements (BLOCK_ELEMENTS by default; one row at least), or [Ellipsis] for a 0-d
    entry."""
    limit = BLOCK_ELEMENTS if limit is None else limit
    if len(shape) == 0:
        return [Ellipsis]
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, limit // per_row)
    return [slice(r, min(r + step, shape[0])) for r in range(0, shape[0], step)]


def block_shape(shape, rows):
    return tuple(shape) if rows is Ellipsis else (rows.stop - rows.start, *shape[1:])


class ResidentDirections:
    """Directions held in memory: ``x`` and ``y`` lists of tensors (None: a zero entry)."""
    mode = 'resident'

    def __init__(self, x, y=None):
        self.lists = {'x': x, 'y': y}

    @property
    def is_2d(self):
        return self.lists['y'] is not None

    def entry(self, axis, i):
        direction = self.lists[axis]
        return None if direction is None else direction[i]

    def row_blocks(self, shape):
        return [Ellipsis]   # held whole: one block

    def block(self, axis, i, b, rows):
        d = self.entry(axis, i)
        return None if d is None else d[rows]

    def full(self, axis, centre):
        """The direction as a list with explicit zeros (for the batched evaluator)."""
        direction = self.lists[axis]
        if direction is None:
            return None
        return [torch.zeros_like(w, dtype=torch.float32) if d is None else d for d, w in zip(direction, centre)]

    def close(self):
        pass


class StreamedDirections:
    """Directions read from the direction file at every point, a block of rows at a time into a
    reused host buffer per axis (the file was checked for inf and NaN when the run hashed it)."""
    mode = 'stream'

    def __init__(self, reader, centre, is_2d):
        self.reader, self.centre, self.is_2d = reader, centre, is_2d
        self.stored = {axis: [reader.is_stored(AXIS_KEYS[axis], i) for i in range(len(centre))]
                       for axis in ('x', 'y')[:1 + is_2d]}
        # Looked up once: a point reads them without walking the file's groups again.
        self.datasets = {axis: [reader.dataset(AXIS_KEYS[axis], i) if kept else None for i, kept in enumerate(stored)]
                         for axis, stored in self.stored.items()}
        largest = max((math.prod(block_shape(w.shape, rows)) for w in centre for rows in row_blocks(w.shape)),
                      default=0)
        self.buffers = {axis: np.empty(largest, dtype=np.float32) for axis in self.stored}

    def row_blocks(self, shape):
        return row_blocks(shape)

    def entry(self, axis, i):
        """Entry i whole, a new tensor on its device (None where it is zero)."""
        if axis not in self.stored or not self.stored[axis][i]:
            return None
        array = self.reader.read(AXIS_KEYS[axis], i).astype(np.float32, copy=False)
        return torch.from_numpy(array).to(self.centre[i].device)

    def block(self, axis, i, b, rows):
        if axis not in self.stored or not self.stored[axis][i]:
            return None
        dataset = self.datasets[axis][i]
        shape = block_shape(dataset.shape, rows)
        if dataset.dtype != np.float32:   # a file written by other code, in another dtype
            return self.entry(axis, i)[rows]
        array = self.buffers[axis][:math.prod(shape)].reshape(shape)
        dataset.read_direct(array, source_sel=None if rows is Ellipsis else np.s_[rows])
        return torch.from_numpy(array).to(self.centre[i].device)

    def close(self):
        self.reader.close()


class RegeneratedDirections:
    """Directions regenerated from a seed-form file's recipe at every point, block by block."""
    mode = 'seed'

    def __init__(self, seeded_directions, is_2d):
        self.seeded, self.is_2d = seeded_directions, is_2d

    def row_blocks(self, shape):
        return self.seeded.row_blocks(shape)

    def entry(self, axis, i):
        return self.seeded.entry(axis, i)

    def block(self, axis, i, b, rows):
        return self.seeded.block(axis, i, b, rows)

    def close(self):
        pass


def direction_bytes(reader, centre, is_2d):
    """What both directions take when held (float32, the subset's entries only)."""
    total = 0
    for axis in ('x', 'y')[:1 + is_2d]:
        for i, w in enumerate(centre):
            stored = reader.form == hdf5_layout.SEED_FORM or reader.is_stored(AXIS_KEYS[axis], i)
            total += 4 * w.numel() if stored and w.is_floating_point() else 0
    return total


def choose_mode(mode, reader, centre, is_2d, device):
    """The mode a run uses: ``mode`` itself, or what auto picks (see the module docstring);
    UsageError for a mode the file cannot serve."""
    seed_form = reader.form == hdf5_layout.SEED_FORM
    if mode == 'stream' and seed_form:
        raise UsageError(f'--dir_mode stream: direction file {reader.path!r} is in seed form (no tensors to read); '
                         'use --dir_mode seed or resident')
    if mode == 'seed' and not seed_form:
        raise UsageError(f'--dir_mode seed: direction file {reader.path!r} holds tensors, not a recipe (it was made '
                         'with another --dir_mode); use --dir_mode stream or resident, or a new --dir_file')
    if mode != 'auto':
        return mode
    if direction_bytes(reader, centre, is_2d) > RESIDENT_BUDGET * batch_sources.free_memory_bytes(device):
        return 'seed' if seed_form else 'stream'
    return 'resident'


def open_directions(dir_file, mode, net, centre, is_2d, device):
    """The directions of ``dir_file`` for the model ``net`` at ``centre`` (its tensors on the
    evaluation device), checked against the model and served as ``mode`` says."""
    reader = hdf5_layout.open_direction_file(dir_file)
    try:
        axes = ('x', 'y')[:1 + is_2d]
        if is_2d and not reader.has(hdf5_layout.YDIRECTION):
            raise UsageError(f'direction file {dir_file!r} has no y direction, which a 2D grid (--y) needs')
        chosen = choose_mode(mode, reader, centre, is_2d, device)
        if reader.form == hdf5_layout.SEED_FORM:
            regenerated = seeded.check_regenerates(reader, net, centre, device, is_2d)
            reader.close()
            if chosen == 'resident':
                return ResidentDirections(*[[regenerated.entry(a, i) for i in range(len(centre))] for a in axes])
            return RegeneratedDirections(regenerated, is_2d)
        for axis in axes:
            shapes = [reader.shape(AXIS_KEYS[axis], i) for i in range(reader.count(AXIS_KEYS[axis]))]
            normalization.check_direction_fits(shapes, centre, dir_file, axis)
        if chosen == 'stream':
            return StreamedDirections(reader, centre, is_2d)
        streamed = StreamedDirections(reader, centre, is_2d)
        held = [[streamed.entry(a, i) for i in range(len(centre))] for a in axes]
        reader.close()
        return ResidentDirections(*held)
    except BaseException:
        reader.close()
        raise


def read_whole(dir_file, net, base, is_2d):
    """(x, y or None) of ``dir_file`` in either form, as lists of float32 CPU tensors with explicit
    zeros, for the model ``net`` at ``base`` (a seed-form file regenerated on its own device
    type, when this machine has one): for what needs the directions whole (trajectory projection)."""
    with hdf5_layout.open_direction_file(dir_file) as reader:
        device = torch.device(reader.recipe['device_type']) if reader.form == hdf5_layout.SEED_FORM else 'cpu'
        has_y = reader.has(hdf5_layout.YDIRECTION)
    if is_2d and not has_y:
        raise UsageError(f'direction file {dir_file!r} has only an x direction; two are needed')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f'direction file {dir_file!r} is in seed form made on cuda: it regenerates only there')
    centre = [w.to(device) for w in base]
    held = open_directions(dir_file, 'resident', net, centre, is_2d, device)
    cpu = lambda d: None if d is None else [t.float().cpu() for t in d]   # noqa: E731
    return cpu(held.full('x', centre)), cpu(held.full('y', centre))
