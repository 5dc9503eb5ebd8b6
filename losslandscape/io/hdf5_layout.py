"""The HDF5 contract between the compute step and the plot step: every name, shape and sentinel.

Every script reads and writes these files through this module; no other module spells a key.

Direction file (written by directions.direction_files / plot_trajectory, read by everything):
    xdirection/0 .. xdirection/N-1   one float32 dataset per tensor, in net.parameters() order
                                     ('weights') or state_dict() order ('states'), same shapes
    ydirection/0 .. ydirection/N-1   present for 2D surfaces. An entry outside a parameter subset
                                     (--include_params) is a dataset of its shape with no bytes
                                     written (ImpliedZeros): HDF5 reads it as zeros, so the file
                                     holds only the subset's tensors and old readers see no change
    explained_variance_ratio_, singular_values_, explained_variance_
                                     PCA directions only (plot_trajectory), length 2 each
    attrs                            how the directions were made (JSON strings; absent in old files).
                                     Every surface records the DIRECTION_ID of the directions it was
                                     computed along: a hash of their values (direction_content_id),
                                     so a file recreated under the same name with other values (PCA
                                     of new checkpoints, a retrained --model_file3) is never mixed
                                     with old surface values, while an identical one is accepted
    Seed form (--dir_mode seed): attrs direction_form = "seed", recipe (seed, normalisation,
    ignore rules, subset, block size, the generator's device type and torch version) and content_ids (the
    DIRECTION_ID of the regenerated values, checked at every regeneration); an empty xdirection
    group and no tensors, so the file stays a few kB whatever the model (directions.seeded)

Surface file (written by plot_surface / plot_hessian_eigen, read by the plot scripts):
    dir_file       string: the direction file the surface was computed along
    xcoordinates   float64 (nx,)
    ycoordinates   float64 (ny,), 2D only
    train_loss, train_acc, test_loss, test_acc, max_eig, min_eig, trace, hvp_count, eig_solve
                   float64 arrays of shape (ny, nx) for 2D with Z[i, j] = f(x[j], y[i]), or (nx,)
                   for 1D. Accuracies are percentages. NaN where not computed yet; a computed value
                   may itself be NaN or inf (a diverged point). eig_solve: how the point's
                   eigenvalues were solved, 0 cold, 1 warm, 2 warm then cold (EIG_SOLVE_PATHS);
                   absent in files written before it, like hvp_count in the original code's.
    train_loss_stderr, train_acc_stderr, test_loss_stderr, ... (stderr_name(name))
                   the standard error of each stored mean (loss, accuracy, perplexity, an objective's
                   own values) as an estimate of the mean over the distribution the evaluated samples
                   were drawn from (objectives/standard_errors.py says how); attrs[STDERR_METHODS_ATTR]
                   says how each was estimated: per-sample or per-sequence values, or the spread of the
                   batch sums (an objective that gives no per-sample values)
    train_loss_rise, train_loss_rise_stderr, test_loss_rise, test_loss_rise_stderr (rise_name(name))
                   the mean over the same samples of loss(point) - loss(centre), the centre being
                   x = y = 0, and its standard error from the paired differences. Standard errors and
                   rises are by-products: files written before them lack them, and a resumed run never
                   computes a point again only to add them (absent where a point was computed earlier)
    done/<name>    bool array beside each value array: which points hold a result. This, not the
                   value, decides what a resumed run recomputes, so 0, negative, NaN and inf are all
                   results. Files from the original code have no done/ group: there a value of -1
                   (its fill value) means "not computed".
    attrs          'args' and 'versions' (JSON) and the identity fields of IDENTITY_FIELDS, so a run
                   pointed at a file made for another model, data or grid refuses instead of mixing.
                   Among them SAMPLES, SAMPLE_SEED and TARGET_STDERR: every point's values are means over
                   the same SAMPLES training samples (None: all), a seeded random subset (SAMPLE_SEED;
                   data.datasets.sample_indices), chosen at the centre for TARGET_STDERR when that is
                   set; the test split's subset has min(SAMPLES, its size) samples. Files written before
                   these fields are full-data files (IDENTITY_DEFAULTS).

Projection file (plot_trajectory): proj_xcoord, proj_ycoord (one entry per checkpoint), plus the
checkpoints' own train_loss / train_acc when evaluated.

Every file written here (direction, surface, projection, spectrum, curve and sharpness files)
records in attrs['losslandscape_version'] the version of the suite that wrote it whole last (a
surface file's points added in place later do not change it); files of the original code have none.

Files are always created under a temporary name in the same folder and renamed into place
(file_safety.atomic_path), so no reader ever sees half of one. A surface file is created whole,
with every value array and done mask allocated at its full size in one contiguous block
(write_surface_file), so that its writer (surface_store.SurfaceWriter) can then store points in
place (open_surface_in_place): writing a point changes that point's bytes and nothing else, and the
file never grows. Readers read each done mask before its values, the reverse of the writer's order,
so a file read while it is written never shows a value as done before it is there.
"""
import contextlib
import dataclasses
import hashlib
import json
import os

import h5py
import numpy as np

from losslandscape import __version__
from losslandscape._memory import ReleaseCounter
from losslandscape.errors import UsageError

# The atomic replace and the lock live in file_safety; hdf5_layout.TMP_SUFFIX, .FileLock and
# .remove_stale_temporaries stay importable from here for the code that uses them.
from losslandscape.io.file_safety import TMP_SUFFIX, FileLock, atomic_path, remove_stale_temporaries  # noqa: F401

# Direction file keys.
XDIRECTION = 'xdirection'
YDIRECTION = 'ydirection'
EXPLAINED_VARIANCE_RATIO = 'explained_variance_ratio_'
SINGULAR_VALUES = 'singular_values_'
EXPLAINED_VARIANCE = 'explained_variance_'
PCA_KEYS = (EXPLAINED_VARIANCE_RATIO, SINGULAR_VALUES, EXPLAINED_VARIANCE)
DIRECTION_FORM_ATTR = 'direction_form'   # TENSOR_FORM (also when absent: every older file) or SEED_FORM
TENSOR_FORM, SEED_FORM = 'tensors', 'seed'
DIRECTION_FORMS = (TENSOR_FORM, SEED_FORM)
SEED_RECIPE_ATTR = 'recipe'              # seed form: how the directions are regenerated (directions.seeded)
CONTENT_IDS_ATTR = 'content_ids'         # seed form: {'x': DIRECTION_ID of x, 'xy': of x and y}

# Surface file keys.
DIR_FILE = 'dir_file'
XCOORDINATES = 'xcoordinates'
YCOORDINATES = 'ycoordinates'
TRAIN_LOSS, TRAIN_ACC = 'train_loss', 'train_acc'
TEST_LOSS, TEST_ACC = 'test_loss', 'test_acc'
MAX_EIG, MIN_EIG, TRACE, HVP_COUNT = 'max_eig', 'min_eig', 'trace', 'hvp_count'
EIG_SOLVE = 'eig_solve'   # how a point's eigenvalues were solved: the index of its way in EIG_SOLVE_PATHS
EIG_SOLVE_PATHS = ('cold', 'warm', 'fallback')   # 0, 1, 2 (curvature.hessian.SOLVE_PATHS says what each is)
SURFACE_NAMES = (TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC, MAX_EIG, MIN_EIG, TRACE, HVP_COUNT, EIG_SOLVE)
STDERR_SUFFIX, RISE_SUFFIX = '_stderr', '_rise'


def stderr_name(name):
    """The key of the standard error of the mean stored as ``name`` (train_loss -> train_loss_stderr)."""
    return name + STDERR_SUFFIX


def rise_name(name):
    """The key of the paired rise of ``name`` above the centre (train_loss -> train_loss_rise)."""
    return name + RISE_SUFFIX


TRAIN_LOSS_STDERR, TEST_LOSS_STDERR = stderr_name(TRAIN_LOSS), stderr_name(TEST_LOSS)
TRAIN_LOSS_RISE, TEST_LOSS_RISE = rise_name(TRAIN_LOSS), rise_name(TEST_LOSS)
TRAIN_LOSS_RISE_STDERR, TEST_LOSS_RISE_STDERR = stderr_name(TRAIN_LOSS_RISE), stderr_name(TEST_LOSS_RISE)
DONE_GROUP = 'done'
LEGACY_MISSING = -1.0   # the original code's fill value for "not computed yet"

# Projection file keys.
PROJ_XCOORD, PROJ_YCOORD = 'proj_xcoord', 'proj_ycoord'

# Attributes.
ARGS_ATTR, VERSIONS_ATTR = 'args', 'versions'
SUITE_VERSION_ATTR = 'losslandscape_version'   # every file this module writes: the suite's version that wrote it
COMPUTE_ATTR = 'compute'   # JSON {kind: compute configuration} (compute/choosing.py): reused on resume, never checked
DIRECTION_ID = 'direction_id'
# The fields that say what a surface was computed for; a resumed run must agree on each one.
STDERR_METHODS_ATTR = 'stderr_methods'   # JSON {stderr name: how it was estimated} (standard_errors.py)
SAMPLES, SAMPLE_SEED, TARGET_STDERR = 'samples', 'sample_seed', 'target_stderr'
IDENTITY_FIELDS = ('model', 'model_file', 'model_file2', 'model_file3', 'dir_type', 'dataset',
                   'raw_data', 'data_split', 'split_idx', 'loss_name', 'train_labels', TARGET_STDERR, SAMPLES,
                   SAMPLE_SEED, DIRECTION_ID)
# What a file written before an identity field existed stands for: there, its absence is this value
# (a full-data file is refused for a run on a sample, however old it is).
IDENTITY_DEFAULTS = {TARGET_STDERR: None, SAMPLES: None, SAMPLE_SEED: None}


# ----------------------------------------------------------------------------- file primitives

@contextlib.contextmanager
def atomic_h5(path):
    """Yield a new h5py.File to fill, under a temporary name beside ``path``; rename it over
    ``path`` only when the block finishes without error (file_safety.atomic_path)."""
    with atomic_path(path) as tmp:
        # The oldest format that holds the content: superblock version 0, which records no "open
        # for writing" flag (open_surface_in_place writes in place only to such files).
        with h5py.File(tmp, 'w', libver=('earliest', 'latest')) as f:
            yield f
            f.attrs[SUITE_VERSION_ATTR] = json.dumps(__version__)


# HDF5's own file locks stay off, for readers and the writer alike. Nothing here relies on them
# (whole files are replaced by a rename; a surface file's one writer holds file_safety.FileLock
# and writes in place in an order readers tolerate), and with them no reader could open a surface
# file while its writer holds it open: a plot of a run in progress, a second run checking the file
# before it is refused, or -- HDF5 refuses mixed lock settings on one file -- the writer's own process.
HDF5_LOCKING = False


def open_h5(path, what='file'):
    """Open an existing HDF5 file read-only, or raise UsageError saying why it cannot be read."""
    if not os.path.exists(path):
        raise UsageError(f'{what} {path!r} does not exist')
    try:
        return h5py.File(path, 'r', locking=HDF5_LOCKING)
    except OSError as err:
        raise UsageError(f'{what} {path!r} is not a readable HDF5 file ({_first_line(err)})') from None


def refuse_non_finite(arrays, what, path):
    """Raise UsageError when a floating array of ``arrays`` ({dataset path: array}) holds inf or
    NaN: a direction, a projection or a curve is a place in weight space, and a NaN in it would
    make every point it touches NaN (or, worse, a number computed from one)."""
    for name, array in arrays.items():
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise UsageError(f'{what} {path!r}: {name} holds inf or NaN; it must be finite')


def _first_line(err):
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _as_str(value):
    if isinstance(value, np.ndarray):
        value = value[()]
    return value.decode() if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------- directions

@dataclasses.dataclass(frozen=True)
class ImpliedZeros:
    """A direction entry outside a parameter subset: stored as a dataset of its shape whose bytes
    were never written. HDF5 allocates no storage for it and reads it as zeros, so every reader of
    the old layout still sees the full direction, while the file holds only the subset's bytes."""
    shape: tuple


class DirectionWriter:
    """Tensor-by-tensor writing of a direction file (``direction_writer``): ``add(axis, array)``
    appends the next entry of XDIRECTION or YDIRECTION (an array, or ImpliedZeros), and
    ``copy(axis, i, j)`` makes entry i a copy of entry j (tied tensors)."""

    def __init__(self, f):
        self.f = f

    def add(self, axis, array):
        group = self.f.require_group(axis)
        name = str(len(group))
        if isinstance(array, ImpliedZeros):
            group.create_dataset(name, shape=tuple(array.shape), dtype=np.float32)
        else:
            group.create_dataset(name, data=np.asarray(array))

    def copy(self, axis, i, j):
        group = self.f[axis]
        del group[str(i)]
        group.create_dataset(str(i), data=group[str(j)][()])


@contextlib.contextmanager
def direction_writer(path, extras=None, attrs=None):
    """A DirectionWriter filling a new direction file, renamed into place when the block ends
    without error (atomic_h5): the directions need never be held whole."""
    with atomic_h5(path) as f:
        writer = DirectionWriter(f)
        yield writer
        f.require_group(XDIRECTION)
        for key, value in (extras or {}).items():
            f[key] = np.asarray(value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(value)


def write_direction_file(path, xdirection, ydirection=None, extras=None, attrs=None):
    """Write a direction file atomically. ``extras``: extra datasets (e.g. the PCA arrays).
    An entry may be ImpliedZeros (an entry outside a parameter subset)."""
    with direction_writer(path, extras, attrs) as writer:
        for axis, direction in ((XDIRECTION, xdirection), (YDIRECTION, ydirection)):
            for array in direction if direction is not None else ():
                writer.add(axis, array)


def write_seed_direction_file(path, recipe, content_ids, attrs=None):
    """A direction file in seed form: the recipe (SEED_RECIPE_ATTR, JSON) that regenerates the
    directions and their CONTENT_IDS_ATTR ({'x': id of x, 'xy': id of x and y}), no tensors."""
    with atomic_h5(path) as f:
        f.create_group(XDIRECTION)
        f.attrs[DIRECTION_FORM_ATTR] = json.dumps(SEED_FORM)
        f.attrs[SEED_RECIPE_ATTR] = json.dumps(recipe)
        f.attrs[CONTENT_IDS_ATTR] = json.dumps(content_ids)
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(value)


HASH_BLOCK_ELEMENTS = 1 << 22   # a direction entry is hashed (and checked) in blocks of rows of 16 MB at most


class ContentDigest:
    """The DIRECTION_ID hash, fed one axis and one tensor at a time: the same id for the same
    values whether they come from a file, a regeneration or implied zeros."""
    ZERO_CHUNK = 1 << 20   # float32 zeros hashed a chunk at a time: an implied zero is never allocated whole

    def __init__(self):
        self.digest = hashlib.sha256()

    def axis(self, name):
        self.digest.update(name.encode())

    def tensor(self, array):
        array = np.ascontiguousarray(array, dtype=np.float32)
        self.shape(array.shape)
        self.bytes(array)

    def shape(self, shape):
        """A tensor of ``shape`` begins; its values follow in row-major order (``bytes``, in parts)."""
        self.digest.update(repr(tuple(shape)).encode())

    def bytes(self, array):
        self.digest.update(memoryview(np.ascontiguousarray(array, dtype=np.float32)).cast('B'))   # no copy

    def zeros(self, shape):
        self.digest.update(repr(tuple(shape)).encode())
        left = int(np.prod(shape, dtype=np.int64))
        chunk = np.zeros(min(left, self.ZERO_CHUNK), dtype=np.float32)
        while left > 0:
            n = min(left, chunk.size)
            self.digest.update(chunk[:n].tobytes())
            left -= n

    def hexdigest(self):
        return self.digest.hexdigest()[:32]


class DirectionReader:
    """A direction file opened for reading one tensor at a time (``open_direction_file``): what
    --dir_mode stream reads at every point, and what everything else reads the file through.
    ``form`` is TENSOR_FORM or SEED_FORM; a seed-form file has a ``recipe`` and no tensors."""

    def __init__(self, path, what='direction file'):
        self.path, self.what = path, what
        self.f = open_h5(path, what)
        try:
            if XDIRECTION not in self.f or not isinstance(self.f[XDIRECTION], h5py.Group):
                raise UsageError(f'{path!r} is not a direction file (it has no {XDIRECTION!r} group)')
            attrs = decoded_attrs(self.f.attrs)
            self.attrs = attrs
            self.form = attrs.get(DIRECTION_FORM_ATTR, TENSOR_FORM)
            self.recipe = attrs.get(SEED_RECIPE_ATTR) if self.form == SEED_FORM else None
            if self.form not in DIRECTION_FORMS or (self.form == SEED_FORM and not isinstance(self.recipe, dict)):
                raise UsageError(f'{what} {path!r} has an unknown form ({self.form!r}) or no recipe')
            self._names = {axis: sorted(self.f[axis].keys(), key=int) for axis in (XDIRECTION, YDIRECTION)
                           if axis in self.f}
        except (OSError, ValueError, KeyError) as err:
            self.f.close()
            raise UsageError(f'{what} {path!r} is damaged ({_first_line(err)})') from None
        except UsageError:
            self.f.close()
            raise

    def has(self, axis):
        if self.form == SEED_FORM:
            return axis == XDIRECTION or bool(self.recipe.get('is_2d'))
        return axis in self._names

    def count(self, axis):
        return len(self._names.get(axis, ()))

    def dataset(self, axis, i):
        """The h5py dataset of entry ``i`` of ``axis`` (for reading parts of it)."""
        return self.f[axis][self._names[axis][i]]

    def shape(self, axis, i):
        return tuple(self.dataset(axis, i).shape)

    def is_stored(self, axis, i):
        """False for an ImpliedZeros entry (nothing was written: it reads as zeros)."""
        return self.dataset(axis, i).id.get_storage_size() > 0

    def read(self, axis, i):
        """Entry ``i`` of ``axis`` as a numpy array (UsageError when damaged or not finite)."""
        try:
            array = np.asarray(self.dataset(axis, i)[()])   # a 0-d entry too
        except (OSError, ValueError) as err:
            raise UsageError(f'{self.what} {self.path!r} is damaged ({_first_line(err)})') from None
        refuse_non_finite({f'{axis}/{i}': array}, self.what, self.path)
        return array

    def read_all(self, axis):
        return [self.read(axis, i) for i in range(self.count(axis))] if self.has(axis) else None

    def refuse_seed_form(self):
        if self.form == SEED_FORM:
            raise UsageError(f'{self.what} {self.path!r} is in seed form (its directions are regenerated from a '
                             'recipe for the model, on demand): use it where a model is given (plot_surface.py, '
                             'plot_hessian_eigen.py, plot_trajectory.py --dir_file)')

    def content_id(self, with_y):
        """The DIRECTION_ID of the x direction (and the y one, ``with_y``): direction_content_id."""
        if self.form == SEED_FORM:
            ids = self.attrs.get(CONTENT_IDS_ATTR) or {}
            return ids.get('xy' if with_y else 'x')
        digest, released = ContentDigest(), ReleaseCounter()
        for axis, label in ((XDIRECTION, 'x'), (YDIRECTION, 'y')):
            if axis == YDIRECTION and not (with_y and self.has(axis)):
                continue
            digest.axis(label)
            for i in range(self.count(axis)):
                if not self.is_stored(axis, i):
                    digest.zeros(self.shape(axis, i))
                    continue
                digest.shape(self.shape(axis, i))
                for block in self.read_blocks(axis, i):   # a large entry is never read whole
                    digest.bytes(block)
                    released.freed(block.nbytes)
        return digest.hexdigest()

    def read_blocks(self, axis, i, limit=HASH_BLOCK_ELEMENTS):
        """Entry ``i`` of ``axis`` as float32 blocks of its rows (each checked for inf and NaN), in
        one reused buffer: valid until the next block is read."""
        dataset = self.dataset(axis, i)
        if dataset.ndim == 0 or dataset.dtype != np.float32:
            yield self.read(axis, i).astype(np.float32, copy=False)
            return
        per_row = max(1, int(np.prod(dataset.shape[1:], dtype=np.int64)))
        step = max(1, limit // per_row)
        buffer = np.empty(min(dataset.shape[0], step) * per_row, dtype=np.float32)
        for start in range(0, dataset.shape[0], step):
            stop = min(start + step, dataset.shape[0])
            block = buffer[:(stop - start) * per_row].reshape((stop - start, *dataset.shape[1:]))
            try:
                dataset.read_direct(block, source_sel=np.s_[start:stop])
            except (OSError, ValueError) as err:
                raise UsageError(f'{self.what} {self.path!r} is damaged ({_first_line(err)})') from None
            refuse_non_finite({f'{axis}/{i}': block}, self.what, self.path)
            yield block

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_direction_file(path, what='direction file'):
    return DirectionReader(path, what)


def direction_content_id(path, with_y):
    """The DIRECTION_ID a surface along ``path`` records: a hash of the x direction's values (and
    the y direction's, for a 2D surface). A 1D surface keeps its id when a y direction is added to
    its file later; the same values written again give the same id, in either form (a seed-form
    file records the id of the values it regenerates). Read one tensor at a time."""
    with open_direction_file(path) as reader:
        return reader.content_id(with_y)


def read_creation_tag(path):
    """The random DIRECTION_ID that direction files of this suite's first versions were given at
    creation (None for every other file): surfaces made then recorded it instead of the hash."""
    with open_h5(path, 'direction file') as f:
        return json.loads(f.attrs[DIRECTION_ID]) if DIRECTION_ID in f.attrs else None


def read_direction_file(path):
    """Return (xdirection, ydirection or None, extras dict) as lists of numpy arrays: the whole
    file in memory (a seed-form file is refused: it has no tensors to read)."""
    with open_direction_file(path) as reader:
        reader.refuse_seed_form()
        xdirection, ydirection = reader.read_all(XDIRECTION), reader.read_all(YDIRECTION)
        extras = {k: reader.f[k][()] for k in PCA_KEYS if k in reader.f}
    return xdirection, ydirection, extras


def read_direction_facts(path, what='direction file'):
    """(explained_variance_ratio_ as a flat float64 array, empty where the file has none; its
    attributes, decoded_attrs) of a direction file: what its axis labels are made of, without
    reading the directions themselves. ``what`` names the file (or flag) in errors."""
    with open_h5(path, what) as f:
        if XDIRECTION not in f:
            raise UsageError(f'{what} {path!r} is not a direction file (it has no {XDIRECTION!r})')
        try:
            ratio = np.asarray(f[EXPLAINED_VARIANCE_RATIO][()], dtype=np.float64).ravel() \
                if EXPLAINED_VARIANCE_RATIO in f else np.empty(0)
            attrs = decoded_attrs(f.attrs)
        except (OSError, ValueError) as err:
            raise UsageError(f'{what} {path!r} is damaged ({_first_line(err)})') from None
    return ratio, attrs


def decoded_attrs(attrs):
    """The JSON-valued attributes (this suite's records) of a file's ``attrs`` mapping, decoded;
    values that are not JSON (written by someone else) are left out."""
    decoded = {}
    for key, value in attrs.items():
        try:
            decoded[key] = json.loads(value)
        except (TypeError, ValueError):
            continue
    return decoded


# ----------------------------------------------------------------------------- surfaces

class Surface:
    """A surface file read into memory: coordinates, value arrays and their done masks."""

    def __init__(self, path, dir_file, xcoordinates, ycoordinates, values, done, attrs):
        self.path, self.dir_file = path, dir_file
        self.xcoordinates, self.ycoordinates = xcoordinates, ycoordinates
        self.values, self.done, self.attrs = values, done, attrs

    @property
    def shape(self):
        return self.xcoordinates.shape if self.ycoordinates is None else \
            (len(self.ycoordinates), len(self.xcoordinates))

    def args(self):
        return json.loads(self.attrs[ARGS_ATTR]) if ARGS_ATTR in self.attrs else {}


def read_surface(path):
    """Read a surface file (ours or the original code's) or raise UsageError saying what is wrong."""
    with open_h5(path, 'surface file') as f:
        if XCOORDINATES not in f:
            raise UsageError(f'{path!r} is not a surface file (it has no {XCOORDINATES!r})')
        try:
            x = np.asarray(f[XCOORDINATES][()], dtype=np.float64).ravel()
            y = np.asarray(f[YCOORDINATES][()], dtype=np.float64).ravel() if YCOORDINATES in f else None
            shape = x.shape if y is None else (len(y), len(x))
            dir_file = _as_str(f[DIR_FILE][()]) if DIR_FILE in f else ''
            values, done = {}, {}
            for name in f:
                node = f[name]
                if name in (XCOORDINATES, YCOORDINATES, DIR_FILE) or not isinstance(node, h5py.Dataset):
                    continue
                # The mask before the values it vouches for: the writer stores them the other way round.
                stored_done = np.asarray(f[DONE_GROUP][name][()], dtype=bool) \
                    if DONE_GROUP in f and name in f[DONE_GROUP] else None
                array = np.asarray(node[()])
                legacy = DONE_GROUP not in f
                if legacy and y is not None and array.shape == (len(x), len(y)) != shape:
                    # The original code stored non-square grids as (nx, ny) arrays filled in
                    # (ny, nx) row-major order; the flat data is right, only the shape is not.
                    array = array.reshape(shape)
                if array.shape != shape:
                    continue  # not a per-point array (e.g. a scalar someone added)
                values[name] = array.astype(np.float64)
                if stored_done is not None:
                    done[name] = stored_done
                else:
                    done[name] = values[name] != LEGACY_MISSING
            attrs = {k: _as_str(v) for k, v in f.attrs.items()}
        except (OSError, ValueError, KeyError) as err:
            raise UsageError(f'surface file {path!r} is damaged ({_first_line(err)})') from None
    return Surface(path, dir_file, x, y, values, done, attrs)


def write_surface_file(path, dir_file, xcoordinates, ycoordinates, values, done, attrs):
    """Write a whole surface file atomically: ``values`` and ``done`` ({name: array}) as this
    module lays them out for writing in place (see open_surface_in_place), and ``attrs``
    ({key: JSON-able value}) over any the file had.

    If ``path`` exists, the new file replaces it and keeps every dataset, group and attribute of it
    that ``values`` does not replace (another script's arrays, a dataset someone added, the identity
    fields), its dir_file and coordinates included; they are copied, not rewritten from memory. The
    new file is written from scratch, so the space the old one had freed is not carried over."""
    with atomic_h5(path) as f:
        if os.path.exists(path):
            with open_h5(path, 'surface file') as old:
                _copy_all_but(old, f, values)
        if DIR_FILE not in f:
            f[DIR_FILE] = dir_file
        if XCOORDINATES not in f:
            f[XCOORDINATES] = np.asarray(xcoordinates, dtype=np.float64)
        if ycoordinates is not None and YCOORDINATES not in f:
            f[YCOORDINATES] = np.asarray(ycoordinates, dtype=np.float64)
        done_group = f.require_group(DONE_GROUP)
        for name, array in values.items():
            _preallocated(f, name, np.asarray(array, dtype=np.float64))
            _preallocated(done_group, name, np.asarray(done[name], dtype=bool))
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value)


def _copy_all_but(old, new, replaced):
    """Copy every node and attribute of the open file ``old`` into the empty file ``new``, except
    the value arrays and done masks of the names in ``replaced``."""
    for key, value in old.attrs.items():
        new.attrs[key] = value
    for name in old:
        if name in replaced:
            continue
        if name == DONE_GROUP and isinstance(old[name], h5py.Group):
            group = new.create_group(DONE_GROUP)
            for key, value in old[name].attrs.items():
                group.attrs[key] = value
            for mask in old[name]:
                if mask not in replaced:
                    old.copy(old[name][mask], group, name=mask)
            continue
        old.copy(old[name], new, name=name)


def _preallocated(group, name, array):
    # Written at creation, so HDF5 allocates the whole contiguous block now: a later write of
    # some points changes their bytes only (no allocation, no metadata).
    group.create_dataset(name, data=array, chunks=None)


def open_surface_in_place(path, names, shape, attrs):
    """Open the surface file ``path`` for writing points in place: (the open h5py.File,
    {name: (values dataset, done dataset)}), or None when it cannot be, and must first be
    rewritten whole (write_surface_file): one of ``names`` is missing or laid out otherwise (not
    full-size float64 values and bool done masks in contiguous, allocated blocks: a legacy file,
    or one with an array added by another script), or the stored ``attrs`` differ (attributes are
    never rewritten in place: HDF5 would not reuse the space they held).

    Files whose superblock (version 2 and later) records "open for writing" are never written in
    place: killed while open, they could not be opened again without h5clear."""
    f = h5py.File(path, 'r+', locking=HDF5_LOCKING)
    try:
        arrays = _arrays_in_place(f, names, shape) if _attrs_equal(f, attrs) else None
    except BaseException:
        f.close()
        raise
    if arrays is None:
        f.close()
        return None
    return f, arrays


def _attrs_equal(f, attrs):
    return all(key in f.attrs and _as_str(f.attrs[key]) == json.dumps(value) for key, value in attrs.items())


def _arrays_in_place(f, names, shape):
    superblock_version = f.id.get_create_plist().get_version()[0]
    if superblock_version >= 2 or DONE_GROUP not in f or not isinstance(f[DONE_GROUP], h5py.Group):
        return None
    arrays = {}
    for name in names:
        value_node, done_node = f.get(name), f[DONE_GROUP].get(name)
        if not (_is_block(value_node, shape, np.float64) and _is_block(done_node, shape, np.bool_)):
            return None
        arrays[name] = (value_node, done_node)
    return arrays


def _is_block(node, shape, dtype):
    """Whether ``node`` is a dataset of ``shape`` and ``dtype`` stored as one allocated contiguous block."""
    if not isinstance(node, h5py.Dataset) or node.shape != tuple(shape) or node.dtype != dtype:
        return False
    return node.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS \
        and node.id.get_storage_size() == node.size * node.dtype.itemsize


# A model given from Python is recorded as 'python:<module>.<class> arch:<hash of its state_dict layout>'
# (run_setup.describe); files of earlier versions have the class alone.
ARCHITECTURE_TAG = 'arch:'


def same_python_model(stored, wanted):
    """Whether two recorded models given from Python are the same: the same state_dict layout when
    both record one (the class may have moved, from a notebook's __main__ into a module), else the
    same class."""
    if not (isinstance(stored, str) and isinstance(wanted, str) and stored.startswith('python:')
            and wanted.startswith('python:')):
        return False
    stored_class, _, stored_arch = stored.partition(' ' + ARCHITECTURE_TAG)
    wanted_class, _, wanted_arch = wanted.partition(' ' + ARCHITECTURE_TAG)
    return stored_arch == wanted_arch if stored_arch and wanted_arch else stored_class == wanted_class


def check_surface_matches(surface, grid, dir_file, identity):
    """Raise UsageError if an existing surface file was made for another grid, direction file
    or model/data (identity fields stored in its attributes; files without them are not checked)."""
    path = surface.path
    if (surface.ycoordinates is None) != (not grid.is_2d):
        kind = '2D' if surface.ycoordinates is not None else '1D'
        raise UsageError(f'surface file {path!r} holds a {kind} grid; pass its own --x/--y or another --surf_file')
    for flag, stored, wanted in (('--x', surface.xcoordinates, grid.xcoordinates),
                                 ('--y', surface.ycoordinates, grid.ycoordinates)):
        if wanted is not None and (stored.shape != wanted.shape or not np.allclose(stored, wanted, rtol=0, atol=1e-12)):
            raise UsageError(f'surface file {path!r} was made for another grid ({flag} '
                             f'{stored[0]:g}:{stored[-1]:g}:{len(stored)}); pass the same {flag} or another --surf_file')
    if surface.dir_file and dir_file and os.path.abspath(surface.dir_file) != os.path.abspath(dir_file) \
            and os.path.basename(surface.dir_file) != os.path.basename(dir_file):
        raise UsageError(f'surface file {path!r} was made along direction file {surface.dir_file!r}, '
                         f'not {dir_file!r}; pass another --surf_file')
    for key, wanted in identity.items():
        if key in surface.attrs or key in IDENTITY_DEFAULTS:
            stored = json.loads(surface.attrs[key]) if key in surface.attrs else IDENTITY_DEFAULTS[key]
            if key == DIRECTION_ID:
                if stored != wanted and stored != read_creation_tag(dir_file):
                    raise UsageError(f'surface file {path!r} was computed along other directions than those now '
                                     f'in direction file {dir_file!r} (recreated since with other values); '
                                     'pass another --surf_file')
            elif stored != wanted and not (key == 'model' and same_python_model(stored, wanted)):
                raise UsageError(f'surface file {path!r} was made with {key}={stored!r}, not {wanted!r}; '
                                 'pass another --surf_file')


def write_projection_file(path, proj_xcoord, proj_ycoord, extras=None, attrs=None):
    """Write a trajectory projection file atomically (see the module docstring)."""
    with atomic_h5(path) as f:
        f[PROJ_XCOORD] = np.asarray(proj_xcoord, dtype=np.float64)
        f[PROJ_YCOORD] = np.asarray(proj_ycoord, dtype=np.float64)
        for key, value in (extras or {}).items():
            f[key] = np.asarray(value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(value)


CURVE_FILE_ATTR = 'curve_file'   # a projection of a curve (plot_surface.py --model_file3 CURVE) names it


def read_projection_attrs(path):
    """The decoded attributes of a projection file (how its path was made)."""
    with open_h5(path, 'projection file') as f:
        return decoded_attrs(f.attrs)


def read_projection_file(path):
    """Return a dict of the projection file's datasets (proj_xcoord, proj_ycoord, ...)."""
    with open_h5(path, 'projection file') as f:
        if PROJ_XCOORD not in f or PROJ_YCOORD not in f:
            raise UsageError(f'{path!r} is not a projection file (it has no {PROJ_XCOORD!r}/{PROJ_YCOORD!r})')
        datasets = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
    refuse_non_finite({key: datasets[key] for key in (PROJ_XCOORD, PROJ_YCOORD)}, 'projection file', path)
    return datasets


# ----------------------------------------------------------------------------- spectrum files
#
# Spectrum file (written by hessian_spectrum.py, read by it on a rerun and by the plots):
#     eigenvalues      float64 (k,)   the k largest Hessian eigenvalues, descending
#     residuals        float64 (k,)   ||H v - lambda v|| of each unit eigenvector
#     eigenvectors     float32 (k, n) the unit eigenvectors over the Hessian's parameters (flat, in
#                                     net.parameters() order), so --save_directions needs no solve
#     trace, trace_stderr   float64 scalars: the trace estimate (spectrum.krylov_trace) and its standard error
#     density_grid, density float64 (m,): the smoothed spectral density (integral 1)
#     slq_nodes, slq_weights float64 (starts, nodes): the quadrature each random start gave
#     hvp_count        float64 scalar: Hessian-vector products of everything stored
#     attrs            the run's identity (JSON, as a surface's) and, per part, the settings it was
#                      computed with (EIG_SETTINGS, TRACE_SETTINGS, DENSITY_SETTINGS): a rerun
#                      reuses a part whose settings agree and computes the others
EIGENVALUES, RESIDUALS, EIGENVECTORS = 'eigenvalues', 'residuals', 'eigenvectors'
TRACE_STDERR, DENSITY_GRID, DENSITY = 'trace_stderr', 'density_grid', 'density'
SLQ_NODES, SLQ_WEIGHTS = 'slq_nodes', 'slq_weights'
EIG_SETTINGS, TRACE_SETTINGS, DENSITY_SETTINGS = 'eig_settings', 'trace_settings', 'density_settings'
SPECTRUM_PARTS = {EIG_SETTINGS: (EIGENVALUES, RESIDUALS, EIGENVECTORS), TRACE_SETTINGS: (TRACE, TRACE_STDERR),
                  DENSITY_SETTINGS: (DENSITY_GRID, DENSITY, SLQ_NODES, SLQ_WEIGHTS)}


def read_spectrum_file(path):
    """(datasets dict, decoded attributes) of a spectrum file, or UsageError saying what is wrong."""
    with open_h5(path, 'spectrum file') as f:
        if not any(key in f for keys in SPECTRUM_PARTS.values() for key in keys):
            raise UsageError(f'{path!r} is not a spectrum file (it has none of '
                             f'{", ".join(k for keys in SPECTRUM_PARTS.values() for k in keys)})')
        try:
            data = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
        except (OSError, ValueError) as err:
            raise UsageError(f'spectrum file {path!r} is damaged ({_first_line(err)})') from None
        return data, decoded_attrs(f.attrs)


def write_spectrum_file(path, data, attrs):
    """Write a whole spectrum file atomically (it is small: written once per part computed)."""
    with atomic_h5(path) as f:
        for key, value in data.items():
            f[key] = np.asarray(value)
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value)


# ----------------------------------------------------------------------------- curve files
#
# Curve file (written by train_curve.py, read by it on a rerun, by plot_surface.py --curve_file and
# by --model_file3 when given one): a trained curve between two models in weight space (mode
# connectivity, Garipov et al. 2018; connecting_curves.py). Its control points are the two end checkpoints,
# held by reference, and the bends between them, held here:
#     bends/<i>/<name>       float32, one dataset per parameter of bend i (0 .. num_bends - 3),
#                            named as in the model's state_dict: the parameters only, since
#                            BatchNorm statistics are recomputed at every t, never stored
#     momentum/<i>/<name>    float32: SGD's momentum buffer of each bend tensor, for resuming
#                            (absent without momentum, or before the first step)
#     history/epoch          float64 (epochs done,): the epochs finished, 1, 2, ...
#     history/lr             float64: each epoch's learning rate
#     history/train_loss     float64: each epoch's mean training loss over its mini-batches, each
#                            batch at its own random t
#     attrs (JSON)   curve_type ('bezier' or 'polychain'), num_bends (control points, the ends
#                    included: 3 is one bend), model (the --model name), model_file and model_file2
#                    (absolute paths of the t = 0 and t = 1 checkpoints) with model_file_hash and
#                    model_file2_hash (curves.state_content_hash of their state_dicts: a checkpoint
#                    replaced since is refused), training (the settings a rerun must share to
#                    resume), epochs_done, and once training has ended end_values (the end models'
#                    values with their stored and with recomputed BatchNorm statistics, and the
#                    midpoints of the curve and of the straight line)
# The file is rewritten whole (atomically) at the end of every epoch, so it always holds the last
# finished epoch: a killed run resumes from there.
CURVE_BENDS, CURVE_MOMENTUM, CURVE_HISTORY = 'bends', 'momentum', 'history'
HISTORY_EPOCH, HISTORY_LR, HISTORY_TRAIN_LOSS = 'epoch', 'lr', 'train_loss'
HISTORY_KEYS = (HISTORY_EPOCH, HISTORY_LR, HISTORY_TRAIN_LOSS)
CURVE_TYPE, NUM_BENDS, CURVE_MODEL = 'curve_type', 'num_bends', 'model'
CURVE_START_FILE, CURVE_END_FILE = 'model_file', 'model_file2'
CURVE_START_HASH, CURVE_END_HASH = 'model_file_hash', 'model_file2_hash'
CURVE_TRAINING, CURVE_EPOCHS_DONE, CURVE_END_VALUES = 'training', 'epochs_done', 'end_values'
CURVE_REQUIRED_ATTRS = (CURVE_TYPE, NUM_BENDS, CURVE_MODEL, CURVE_START_FILE, CURVE_END_FILE,
                        CURVE_START_HASH, CURVE_END_HASH)


class CurveRecord:
    """A curve file read into memory: ``bends`` and ``momentum`` (None when absent) are lists of
    {name: float32 array}, ``history`` {key: float64 array}, ``attrs`` the decoded attributes."""

    def __init__(self, path, bends, momentum, history, attrs):
        self.path, self.bends, self.momentum, self.history, self.attrs = path, bends, momentum, history, attrs

    @property
    def curve_type(self):
        return self.attrs[CURVE_TYPE]

    @property
    def num_bends(self):
        return self.attrs[NUM_BENDS]

    @property
    def epochs_done(self):
        return self.attrs.get(CURVE_EPOCHS_DONE, 0)


def _read_named_list(group):
    # Groups are named "0".."N-1", each holding one dataset per state_dict name.
    return [{name: group[k][name][()] for name in group[k]} for k in sorted(group.keys(), key=int)]


def read_curve_file(path, what='curve file'):
    """Read a curve file or raise UsageError saying what is wrong (``what`` names the flag)."""
    with open_h5(path, what) as f:
        attrs = decoded_attrs(f.attrs)
        missing = [key for key in CURVE_REQUIRED_ATTRS if key not in attrs]
        if CURVE_BENDS not in f or missing:
            raise UsageError(f'{what} {path!r} is not a curve file (written by train_curve.py): it has no '
                             f'{(missing or [CURVE_BENDS])[0]!r}')
        try:
            bends = _read_named_list(f[CURVE_BENDS])
            momentum = _read_named_list(f[CURVE_MOMENTUM]) if CURVE_MOMENTUM in f else None
            history = {key: np.asarray(f[CURVE_HISTORY][key][()], dtype=np.float64)
                       for key in HISTORY_KEYS if CURVE_HISTORY in f and key in f[CURVE_HISTORY]}
        except (OSError, ValueError, KeyError) as err:
            raise UsageError(f'{what} {path!r} is damaged ({_first_line(err)})') from None
    for i, bend in enumerate(bends):
        refuse_non_finite({f'{CURVE_BENDS}/{i}/{name}': array for name, array in bend.items()}, what, path)
    if not isinstance(attrs[NUM_BENDS], int) or len(bends) != attrs[NUM_BENDS] - 2:
        raise UsageError(f'{what} {path!r} is damaged: num_bends {attrs[NUM_BENDS]} but {len(bends)} bends')
    return CurveRecord(path, bends, momentum, history, attrs)


def write_curve_file(path, bends, momentum, history, attrs):
    """Write a whole curve file atomically (see the layout above). ``bends`` and ``momentum``
    (or None): lists of {name: array}; ``history``: {key: sequence}; ``attrs``: JSON-able values."""
    with atomic_h5(path) as f:
        for key, named_list in ((CURVE_BENDS, bends), (CURVE_MOMENTUM, momentum)):
            if named_list is None:
                continue
            group = f.create_group(key)
            for i, tensors in enumerate(named_list):
                bend = group.create_group(str(i))
                for name, array in tensors.items():
                    bend.create_dataset(name, data=np.asarray(array, dtype=np.float32))
        group = f.create_group(CURVE_HISTORY)
        for key in HISTORY_KEYS:
            group.create_dataset(key, data=np.asarray(history.get(key, []), dtype=np.float64))
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value)


def curve_content_id(path):
    """What a surface along a curve records as its DIRECTION_ID: a hash of what fixes the curve's
    points (its type, the ends' content hashes, the bends' values), so a surface is never resumed
    along a curve trained again, or between other end models."""
    record = read_curve_file(path)
    digest = hashlib.sha256()
    for key in (CURVE_TYPE, NUM_BENDS, CURVE_START_HASH, CURVE_END_HASH):
        digest.update(json.dumps(record.attrs[key]).encode())
    for bend in record.bends:
        for name in sorted(bend):
            array = np.ascontiguousarray(bend[name], dtype=np.float32)
            digest.update(name.encode() + repr(array.shape).encode())
            digest.update(array.tobytes())
    return 'curve:' + digest.hexdigest()[:32]


def is_curve_file(path):
    """Whether ``path`` is a curve file (an HDF5 file with a curve's attributes; a checkpoint is not)."""
    if not os.path.isfile(path) or not h5py.is_hdf5(path):
        return False
    try:
        with open_h5(path, 'curve file') as f:
            return CURVE_TYPE in f.attrs and CURVE_BENDS in f
    except UsageError:
        return False   # unreadable: whoever reads it next says why, in the words of its flag


# ----------------------------------------------------------------------------- sharpness files
#
# Sharpness file (written by sharpness.py): one entry per --rho, in the order given.
#     rho, worst_case, sam_one_step, adaptive, average, average_stderr   float64 (len(rho),)
#     loss             float64 scalar: the mean objective at the point itself
#     attrs            the run's identity (JSON, as a spectrum file's), eta, ascent steps, restarts,
#                      samples and seed
SHARPNESS_NAMES = ('rho', 'worst_case', 'sam_one_step', 'adaptive', 'average', 'average_stderr')


def write_sharpness_file(path, values, attrs):
    """Write a sharpness file atomically: ``values`` {SHARPNESS_NAMES and 'loss': numbers}."""
    with atomic_h5(path) as f:
        for key, value in values.items():
            f[key] = np.asarray(value, dtype=np.float64)
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value)


def read_sharpness_file(path):
    with open_h5(path, 'sharpness file') as f:
        if not all(name in f for name in SHARPNESS_NAMES):
            raise UsageError(f'{path!r} is not a sharpness file (it lacks {", ".join(SHARPNESS_NAMES)})')
        return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}, decoded_attrs(f.attrs)

